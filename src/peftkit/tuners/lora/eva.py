"""EVA (Paischer et al., 2024): data-driven LoRA initialisation by Explained Variance Adaptation.

For each targeted layer, the inputs `x` it sees on a few batches of the fine-tuning data are
collected and their principal components computed (PCA: eigenvectors of the centered covariance
`Cov = E[(x - mu)(x - mu)^T]`, eigenvalues `lambda_1 >= lambda_2 >= ...`). Then

* A's rows are the leading components (divided by sqrt(lambda_i) with `whiten`), B = 0, so the model
  starts as the base model while the adapter's input projection captures most of the activation
  variance;
* ranks are redistributed across layers: the budget `r * (number of layers)` goes to the components
  with the largest explained-variance ratios `lambda_i / sum(lambda)` over all layers, at most
  `rho * r` per layer (rho = 1: no redistribution); every layer keeps at least one component;
* with `adjust_scaling_factors`, `lora_alpha` follows the new rank so that the scaling stays `alpha / r`.

A layer stops collecting once its components are stable between batches (the |cosine| of each new
component with the previous one is at least `tau`); the data are read once. The new ranks and alphas
are recorded in the config's `rank_pattern` / `alpha_pattern`, so the saved adapter loads anywhere.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ...utils.other import get_pattern_key
from ...utils.warnings import PeftWarning
from .._targeting import is_targeted
from .inits import register_init_scheme
from .layer import LoraLayer
from .sub_configs import EvaConfig


def forward_fn_dict(model: nn.Module, inputs: dict) -> Any:
    """Default forward: `model(**inputs)`."""
    return model(**inputs)


def prepare_model_inputs_fn_language_modeling(model_input: dict, peft_config: Any) -> torch.Tensor:
    """(batch, position) indices of the tokens to use, shape (N, 2): attention mask, minus labels equal to
    `label_mask_value` when `use_label_mask` (as PEFT returns them, for custom layer functions)."""
    ids = model_input.get("input_ids")
    mask = model_input.get("attention_mask")
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    eva = _eva_config(peft_config)
    labels = model_input.get("labels")
    if eva.use_label_mask and labels is not None:
        mask = mask & (labels != eva.label_mask_value)
    return mask.nonzero()


def prepare_layer_inputs_fn_language_modeling(
    layer_input: Any, model_input: torch.Tensor, layer_name: str
) -> torch.Tensor:
    """The rows of the layer's input (a tuple of the forward's arguments, or a tensor) at the (batch,
    position) indices `model_input`, as a 2-d tensor (tokens, features)."""
    x = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
    if x.dim() == 3 and model_input is not None and model_input.dim() == 2 and model_input.shape[1] == 2:
        index = model_input.to(x.device)
        return x[index[:, 0], index[:, 1]]
    return x.reshape(-1, x.shape[-1])


def _eva_config(config: Any) -> EvaConfig:
    eva = getattr(config, "eva_config", None)
    if eva is None:
        return EvaConfig()
    return EvaConfig(**eva) if isinstance(eva, dict) else eva


class _Statistics:
    """Running mean and covariance of one layer's inputs, and its convergence."""

    def __init__(self, max_rank: int) -> None:
        self.max_rank = max_rank
        self.count = 0
        self.total: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None
        self.components: torch.Tensor | None = None
        self.converged = False

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        self.count += x.shape[0]
        self.total = x.sum(0) if self.total is None else self.total + x.sum(0)
        self.outer = x.T @ x if self.outer is None else self.outer + x.T @ x

    def pca(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(eigenvalues descending, components as rows) of the centered covariance."""
        mean = self.total / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / max(self.count - 1, 1)
        values, vectors = torch.linalg.eigh(cov)
        return values.flip(0).clamp_min(0), vectors.flip(1).T

    def update_convergence(self, tau: float) -> None:
        _, components = self.pca()
        current = components[: self.max_rank]
        if self.components is not None:
            cosines = (current * self.components).sum(1).abs()
            self.converged = bool((cosines >= tau).all())
        self.components = current


def _target_layers(model: nn.Module, peft_config: Any, adapter_name: str) -> dict[str, nn.Module]:
    from transformers.pytorch_utils import Conv1D

    lora_layers = {
        name: m for name, m in model.named_modules() if isinstance(m, LoraLayer) and adapter_name in m.lora_A
    }
    if lora_layers:
        return lora_layers
    return {
        name: m
        for name, m in model.named_modules()
        if name and isinstance(m, (nn.Linear, Conv1D)) and is_targeted(peft_config, name)
    }


def _budget(layers: dict[str, nn.Module], peft_config: Any) -> dict[str, int]:

    ranks = {}
    for name in layers:
        short = _short(name)
        key = get_pattern_key(peft_config.rank_pattern.keys(), short)
        ranks[name] = peft_config.rank_pattern.get(key, peft_config.r)
    return ranks


def _short(name: str) -> str:
    return name.removeprefix("base_model.model.")


@torch.no_grad()
def get_eva_state_dict(
    model: nn.Module,
    dataloader: Iterable,
    peft_config: Any | None = None,
    forward_fn: Callable | None = forward_fn_dict,
    prepare_model_inputs_fn: Callable | None = prepare_model_inputs_fn_language_modeling,
    prepare_layer_inputs_fn: Callable
    | dict[str, Callable]
    | None = prepare_layer_inputs_fn_language_modeling,
    adapter_name: str = "default",
    gather_distributed_inputs: bool = True,
    show_progress_bar: bool = True,
) -> dict:
    """The EVA components of every targeted layer: module name -> A (new rank, in_features).

    `model` is a PeftModel (its LoRA layers are observed, adapters disabled) or a plain model with
    `peft_config` naming the targets. See `initialize_lora_eva_weights` for the other arguments.
    """
    if peft_config is None:
        if not hasattr(model, "peft_config"):
            raise ValueError("get_eva_state_dict needs peft_config when the model is not a PeftModel.")
        peft_config = model.peft_config[adapter_name]
    eva = _eva_config(peft_config)
    layers = _target_layers(model, peft_config, adapter_name)
    if not layers:
        raise ValueError("get_eva_state_dict found no layer targeted by the LoRA config.")
    ranks = _budget(layers, peft_config)
    stats = {name: _Statistics(max(1, round(eva.rho * ranks[name]))) for name in layers}
    current_mask: list[Any] = [None]

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if stats[name].converged:
                return
            fn = prepare_layer_inputs_fn
            if isinstance(fn, dict):
                fn = fn.get(_short(name), fn.get(name, prepare_layer_inputs_fn_language_modeling))
            fn = fn or prepare_layer_inputs_fn_language_modeling
            stats[name].add(fn(args, current_mask[0], name))

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in layers.items()]
    disable = getattr(model, "disable_adapter", None)
    was_training = model.training
    model.eval()
    try:
        progress = _progress(dataloader, show_progress_bar)
        for inputs in progress:
            current_mask[0] = (
                prepare_model_inputs_fn(inputs, peft_config) if prepare_model_inputs_fn else None
            )
            if disable is not None:
                with disable():
                    (forward_fn or forward_fn_dict)(model, inputs)
            else:
                (forward_fn or forward_fn_dict)(model, inputs)
            for stat in stats.values():
                if not stat.converged and stat.count > 1:
                    stat.update_convergence(eva.tau)
            if all(s.converged for s in stats.values()):
                break
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if gather_distributed_inputs:
        _all_reduce(stats)
    empty = [name for name, s in stats.items() if s.count < 2]
    if empty:
        raise ValueError(f"EVA saw fewer than 2 input rows for {empty[:5]}; give it more (unmasked) data.")
    return _redistribute(stats, ranks, eva)


def _progress(dataloader: Iterable, show: bool) -> Iterable:
    if not show:
        return dataloader

    return tqdm(dataloader, desc="EVA")


def _all_reduce(stats: dict[str, _Statistics]) -> None:
    """Sum the statistics over processes (distributed data parallel)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for stat in stats.values():
        for tensor in (stat.total, stat.outer):
            torch.distributed.all_reduce(tensor)
        count = torch.tensor(float(stat.count), device=stat.total.device)
        torch.distributed.all_reduce(count)
        stat.count = int(count.item())


def _redistribute(stats: dict[str, _Statistics], ranks: dict[str, int], eva: EvaConfig) -> dict:
    """Allocate the rank budget by explained-variance ratio; return module name -> A rows."""
    decompositions = {name: stat.pca() for name, stat in stats.items()}
    candidates = []  # (ratio, name, index) beyond each layer's first component
    for name, (values, _) in decompositions.items():
        ratios = values / values.sum().clamp_min(1e-30)
        candidates += [(ratios[i].item(), name, i) for i in range(1, stats[name].max_rank)]
    budget = sum(ranks.values()) - len(ranks)
    new_ranks = dict.fromkeys(stats, 1)
    for _, name, _ in sorted(candidates, key=lambda c: -c[0])[: max(budget, 0)]:
        new_ranks[name] += 1
    state = {}
    for name, (values, vectors) in decompositions.items():
        rows = vectors[: new_ranks[name]]
        if eva.whiten:
            rows = rows / values[: new_ranks[name]].sqrt().clamp_min(1e-12)[:, None]
        state[name] = rows.float().contiguous()
    return state


def _lookup(state: dict, name: str) -> torch.Tensor | None:
    if name in state:
        return state[name]
    short = _short(name)
    return next((v for k, v in state.items() if _short(k) == short), None)


@torch.no_grad()
def initialize_lora_eva_weights(
    model: nn.Module,
    dataloader: Iterable | None = None,
    eva_state_dict: dict | None = None,
    forward_fn: Callable | None = forward_fn_dict,
    prepare_model_inputs_fn: Callable | None = prepare_model_inputs_fn_language_modeling,
    prepare_layer_inputs_fn: Callable
    | dict[str, Callable]
    | None = prepare_layer_inputs_fn_language_modeling,
    adapter_name: str = "default",
    gather_distributed_inputs: bool = True,
    show_progress_bar: bool = True,
) -> nn.Module:
    """Set the LoRA weights of `adapter_name` by EVA (A from the input components, B = 0).

    Args:
        model: the PeftModel (created with `init_lora_weights="eva"`).
        dataloader: batches (dicts of model inputs); needed unless `eva_state_dict` is given.
        eva_state_dict: the result of `get_eva_state_dict` (its entries are consumed).
        forward_fn: `forward_fn(model, inputs)` runs a batch (default `model(**inputs)`).
        prepare_model_inputs_fn: `(inputs, peft_config) -> mask` of the tokens to use (default: attention
            mask minus ignored labels).
        prepare_layer_inputs_fn: `(layer_input, mask, layer_name) -> 2-d rows`, or a dict of them per layer.
        adapter_name: the adapter to initialise.
        gather_distributed_inputs: sum the statistics over processes under torch.distributed.
        show_progress_bar: show a progress bar over the batches.
    """
    config = model.peft_config[adapter_name]
    if config.init_lora_weights != "eva":
        warnings.warn(
            "initialize_lora_eva_weights on an adapter whose init_lora_weights is not 'eva'.", PeftWarning
        )
    if eva_state_dict is None:
        if dataloader is None:
            raise ValueError("initialize_lora_eva_weights needs a dataloader or an eva_state_dict.")
        eva_state_dict = get_eva_state_dict(
            model, dataloader, None, forward_fn, prepare_model_inputs_fn, prepare_layer_inputs_fn,
            adapter_name, gather_distributed_inputs, show_progress_bar,
        )  # fmt: skip
    eva = _eva_config(config)
    rank_pattern, alpha_pattern = dict(config.rank_pattern), dict(config.alpha_pattern)
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter_name not in module.lora_A:
            continue
        rows = _lookup(eva_state_dict, name)
        if rows is None:
            continue
        eva_state_dict.pop(name, None)
        _set_eva_weights(module, adapter_name, rows, config, eva)
        short = _short(name)
        rank_pattern[short] = module.r[adapter_name]
        alpha_pattern[short] = module.lora_alpha[adapter_name]
    config.rank_pattern, config.alpha_pattern = rank_pattern, alpha_pattern
    return model


def _set_eva_weights(layer: Any, adapter_name: str, rows: torch.Tensor, config: Any, eva: EvaConfig) -> None:
    """Give the layer's adapter rank `len(rows)`, A = rows, B = 0 (alpha adjusted if asked)."""
    old_r, alpha = layer.r[adapter_name], layer.lora_alpha[adapter_name]
    new_r = rows.shape[0]
    if eva.adjust_scaling_factors:
        alpha = alpha * (math.sqrt(new_r / old_r) if config.use_rslora else new_r / old_r)
    if new_r != old_r or alpha != layer.lora_alpha[adapter_name]:
        layer.update_layer(
            adapter_name,
            new_r,
            lora_alpha=alpha,
            lora_dropout=getattr(layer.lora_dropout[adapter_name], "p", 0.0),
            init_lora_weights=True,
            use_rslora=config.use_rslora,
            use_dora=layer.use_dora[adapter_name],
            lora_bias=layer.lora_bias[adapter_name],
            inference_mode=config.inference_mode,
            lora_variant=layer.lora_variant.get(adapter_name),  # e.g. aLoRA's, attached after creation
        )
        layer.cast_adapter_dtype(adapter_name)  # fp32 factors on a half-precision base, as at creation
    A, B = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
    device = rows.device if A.is_meta else A.device  # low_cpu_mem_usage: factors still on meta
    values = (rows.to(device=device, dtype=A.dtype), torch.zeros(B.shape, device=device, dtype=B.dtype))
    for factor, old, value in zip((layer.lora_A, layer.lora_B), (A, B), values):
        factor[adapter_name].weight = nn.Parameter(value, requires_grad=old.requires_grad)


def init_eva_placeholder(layer: Any, adapter_name: str) -> None:
    """`init_lora_weights="eva"` at creation: the default factors (B = 0) until EVA sets A.

    `initialize_lora_eva_weights` (or loading a saved adapter) fills the real values.
    """


register_init_scheme("eva", init_eva_placeholder)
