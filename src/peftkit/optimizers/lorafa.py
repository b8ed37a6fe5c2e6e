"""LoRA-FA (Zhang et al., 2023; projected-gradient version of Wang et al., 2025): freeze A, train B only.

With A fixed, the best rank-r step of `W = W0 + s B A` towards the full fine-tuning gradient `G` is the
least-squares solution `min ||s dB A - G||`: since `g_B = s G A^T`, the projected gradient is

    g~_B = (1 / s^2) g_B (A A^T)^{-1}

which AdamW (decoupled weight decay, bias correction) then uses as B's gradient. As in PEFT, the
projection is computed in bfloat16 (`g_B` and `(A A^T)^{-1}` rounded to bf16, product and division in
bf16). Every other trainable tensor takes a plain AdamW step. A loses `requires_grad`, so it never changes.

State is keyed by name, as in PEFT: `<layer>.lora` holds B's moments (`exp_avg_B`, `exp_avg_sq_B`), other
tensors their own name (`exp_avg`, `exp_avg_sq`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..tuners._scaling import rank_scaling
from ..tuners.lora.layer import LoraLayer


class LoraFAOptimizer(torch.optim.Optimizer):
    """AdamW that updates `lora_B` with the LoRA-FA projected gradient and leaves `lora_A` alone.

    One parameter group holds every named parameter of the model with its `names` and `scaling_factors`
    (the LoRA scaling of the layer for LoRA factors, None otherwise).
    """

    def __init__(
        self,
        params: list[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr} - should be >= 0.0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid betas {betas}: each must be in [0, 1).")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps} - should be >= 0.0")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "correct_bias": correct_bias,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_name = dict(zip(group["names"], group["params"]))
            scalings = dict(zip(group["names"], group["scaling_factors"]))
            for name, param in by_name.items():
                if param.grad is None or "lora_A" in name:
                    continue
                if "lora_B" in name:
                    lora_A = by_name.get(name.replace("lora_B", "lora_A"))
                    if lora_A is None:
                        raise ValueError(f"LoRA-FA found {name} but not its lora_A; it needs both factors.")
                    grad = projected_grad(param.grad, lora_A, scalings[name] or group["scaling_factor"])
                    key, suffix = name.split("_B", 1)[0], "_B"
                else:
                    grad, key, suffix = param.grad, name, ""
                self._adamw_update(param, grad, self.state[key], group, suffix)
        return loss

    @staticmethod
    def _adamw_update(param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict, suffix: str) -> None:
        if not state:
            state["step"] = 0
            state["exp_avg" + suffix] = torch.zeros_like(param)
            state["exp_avg_sq" + suffix] = torch.zeros_like(param)
        exp_avg, exp_avg_sq = state["exp_avg" + suffix], state["exp_avg_sq" + suffix]
        beta1, beta2 = group["betas"]
        state["step"] += 1
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().add_(group["eps"])
        step_size = group["lr"]
        if group["correct_bias"]:
            step = state["step"]
            step_size = step_size * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
        param.addcdiv_(exp_avg, denom, value=-step_size)
        if group["weight_decay"] > 0.0:
            param.add_(param, alpha=-group["lr"] * group["weight_decay"])


def projected_grad(grad_B: torch.Tensor, lora_A: torch.Tensor, scaling: float) -> torch.Tensor:
    """`(1/s^2) g_B (A A^T)^{-1}`, computed in bfloat16 as PEFT does, returned in B's dtype."""
    A = lora_A.float()
    try:
        inverse = torch.linalg.inv(A @ A.T)
    except torch.linalg.LinAlgError as err:
        raise ValueError(
            "LoRA-FA needs a full-rank lora_A (A A^T is inverted), but A A^T is singular; initialise A randomly "
            "(init_lora_weights=True), not with zeros."
        ) from err
    projected = (grad_B.to(torch.bfloat16) @ inverse.to(torch.bfloat16)) / scaling**2
    return projected.to(grad_B.dtype)


def _lora_settings(model: nn.Module) -> dict[str, bool]:
    """`use_rslora` of each active adapter (from the model's configs)."""
    configs = getattr(model, "peft_config", {})
    active = getattr(model, "active_adapters", list(configs))
    return {name: bool(getattr(configs[name], "use_rslora", False)) for name in active if name in configs}


def create_lorafa_optimizer(
    model: nn.Module,
    r: int,
    lora_alpha: int,
    lr: float,
    weight_decay: float = 0.0,
    use_rslora: bool | None = None,
) -> torch.optim.Optimizer:
    """A `LoraFAOptimizer` over `model` (freezes every `lora_A`).

    Args:
        model: a PeftModel with LoRA adapters.
        r, lora_alpha: the adapter's rank and alpha; `lora_alpha / r` (or `/ sqrt(r)` with rsLoRA) is the
            scaling used where a layer does not record its own.
        lr, weight_decay: AdamW's learning rate and decoupled weight decay.
        use_rslora: deprecated; read from the model's LoRA config. Passing a value that differs from it
            raises.
    """
    settings = _lora_settings(model)
    if use_rslora is not None:
        differing = [name for name, value in settings.items() if value != use_rslora]
        if differing:
            raise ValueError(
                f"`use_rslora={use_rslora}` was passed to create_lorafa_optimizer, but the following active adapters "
                f"have `use_rslora` set differently in the model config: {differing}. Please configure rsLoRA via "
                "LoraConfig and remove the `use_rslora` argument from create_lorafa_optimizer as the parameter is "
                "deprecated."
            )
    else:
        use_rslora = any(settings.values())
    scaling = rank_scaling(lora_alpha, r, use_rslora)
    names, params, scalings = [], [], []
    layer_scaling = _layer_scalings(model)
    for name, param in model.named_parameters():
        names.append(name)
        params.append(param)
        scalings.append(layer_scaling.get(name))
        if "lora_A" in name:
            param.requires_grad_(False)
    group = {
        "params": params,
        "lr": lr,
        "names": names,
        "scaling_factors": scalings,
        "scaling_factor": scaling,
        "betas": (0.9, 0.999),
        "weight_decay": weight_decay,
    }
    return LoraFAOptimizer([group])


def _layer_scalings(model: nn.Module) -> dict[str, float]:
    """Parameter name -> the LoRA scaling of its layer, for every lora_A / lora_B weight."""
    found: dict[str, float] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for attr in ("lora_A", "lora_B"):
            for adapter in getattr(module, attr):
                if adapter in module.scaling:
                    found[f"{module_name}.{attr}.{adapter}.weight"] = module.scaling[adapter]
    return found
