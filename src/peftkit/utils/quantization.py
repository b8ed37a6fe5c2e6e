"""Training on quantized or half-precision bases: preparing a k-bit model, mixed-precision casting, and
merging adapters into a dequantized (plain floating-point) copy of a quantized base."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["cast_mixed_precision_params", "merge_and_unload_dequantized", "prepare_model_for_kbit_training"]

_HALF = (torch.float16, torch.bfloat16)
# quantization methods whose layers keep their own dtypes: their parameters are never upcast
_KEEP_DTYPES = ("gptq", "aqlm", "eetq", "torchao", "hqq")


def _quantization_method(model: nn.Module) -> str:
    method = getattr(model, "quantization_method", None)
    return str(getattr(method, "value", method) or "").lower()


def _is_loaded_in_kbit(model: nn.Module) -> bool:
    return (
        getattr(model, "is_loaded_in_8bit", False)
        or getattr(model, "is_loaded_in_4bit", False)
        or _quantization_method(model) in _KEEP_DTYPES
    )


def _enable_input_require_grads(model: nn.Module) -> None:
    """Make the embedding output require grad, so that reentrant checkpointing of a frozen base still
    propagates gradients to the adapters inside the checkpointed blocks."""
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
        return

    def make_inputs_require_grad(module: nn.Module, inputs, output: torch.Tensor) -> None:
        output.requires_grad_(True)

    model._require_grads_hook = model.get_input_embeddings().register_forward_hook(make_inputs_require_grad)


def _enable_checkpointing(model: nn.Module, kwargs: dict) -> None:
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ValueError(
            f"{type(model).__name__} has no gradient_checkpointing_enable(): pass use_gradient_checkpointing=False "
            "and checkpoint the model's blocks yourself (torch.utils.checkpoint)."
        )


def prepare_model_for_kbit_training(
    model: nn.Module,
    use_gradient_checkpointing: bool = True,
    gradient_checkpointing_kwargs: dict | None = None,
    auto_clear_cache: bool = True,
) -> nn.Module:
    """Prepare a quantized (k-bit) transformers model for adapter training, as PEFT does.

    - every parameter of the base is frozen;
    - fp16/bf16 parameters (layer norms, embeddings, the LM head...) are upcast to fp32 for stable training,
      except for backends that keep their own dtypes (GPTQ, AQLM, EETQ, torchao, HQQ); packed quantized
      weights are left alone;
    - for a model loaded in 4/8 bits with `use_gradient_checkpointing`, gradient checkpointing is enabled
      with `gradient_checkpointing_kwargs` (`use_reentrant` defaults to True, as in PEFT, and is passed
      explicitly), and with reentrant checkpointing the input embeddings' output requires grad.

    Returns the model (changed in place).
    """
    loaded_in_kbit = _is_loaded_in_kbit(model)
    for param in model.parameters():
        param.requires_grad = False
    if _quantization_method(model) not in _KEEP_DTYPES:
        for param in model.parameters():
            if param.dtype in _HALF and param.__class__.__name__ != "Params4bit":
                param.data = param.data.to(torch.float32)
        if auto_clear_cache and torch.cuda.is_available():
            torch.cuda.empty_cache()
    if loaded_in_kbit and use_gradient_checkpointing:
        kwargs = dict(gradient_checkpointing_kwargs or {})
        kwargs.setdefault("use_reentrant", True)
        if kwargs["use_reentrant"]:
            _enable_input_require_grads(model)
        _enable_checkpointing(model, kwargs)
    return model


def cast_mixed_precision_params(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast the frozen floating-point parameters to `dtype` (fp16/bf16) and the trainable ones to fp32.

    For mixed-precision training under autocast: the frozen base takes half the memory, the adapters
    keep full-precision weights (and optimizer states). Quantized (integer) parameters and buffers are
    left as they are.
    """
    for param in model.parameters():
        if not param.is_floating_point():
            continue
        target = torch.float32 if param.requires_grad else dtype
        if param.dtype != target:
            param.data = param.data.to(target)


def _float_dtype_of(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first unquantized floating-point parameter (fp32 if there is none)."""
    for param in model.parameters():
        if param.is_floating_point() and param.__class__.__name__ not in ("Params4bit", "Int8Params"):
            return param.dtype
    return torch.float32


def merge_and_unload_dequantized(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Merge the active adapters of a model over a bitsandbytes-quantized base into a dequantized copy
    of the base weights: returns the base model in plain floating point, every quantized linear layer
    (adapted or not) replaced by an `nn.Linear` of `dtype`.

    Unlike `merge_and_unload()` on a quantized base, nothing is requantized, so the merged model computes
    what the unmerged adapter model computed up to the base's dequantization (no 4-/8-bit rounding of the
    merged weight). `dtype` defaults to the dtype of the model's other floating-point parameters.

    Args:
        model: a `PeftModel` (or tuner) whose base holds bitsandbytes layers.
        dtype: the dtype of the dequantized linear layers.
    """
    from ..tuners.lora.bnb import dense_linear, is_bnb_layer
    from ..tuners.tuners_utils import BaseTuner, BaseTunerLayer
    from .other import get_submodules

    tuner = model.base_model if hasattr(model, "get_base_model") else model
    if not isinstance(tuner, BaseTuner):
        raise TypeError(f"Expected a PeftModel or tuner, got {type(model).__name__}.")
    dtype = dtype or _float_dtype_of(tuner.model)
    for module in tuner.model.modules():
        if isinstance(module, BaseTunerLayer) and is_bnb_layer(module.base_layer):
            if module.merged:
                module.unmerge()
            module.base_layer = dense_linear(module.base_layer, dtype)
    base = tuner.merge_and_unload()
    for key, module in list(base.named_modules()):
        if is_bnb_layer(module):
            parent, _, name = get_submodules(base, key)
            setattr(parent, name, dense_linear(module, dtype))
    _drop_quantization_marks(base)
    return base


def _drop_quantization_marks(model: nn.Module) -> None:
    """A dequantized transformers model no longer claims to be quantized (saving, Trainer checks)."""
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit", "quantization_method", "hf_quantizer"):
        if attr in model.__dict__:
            delattr(model, attr)
    if "is_quantized" in model.__dict__:
        model.is_quantized = False
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
