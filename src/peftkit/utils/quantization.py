"""Training on quantized or half-precision bases: preparing a k-bit model and mixed-precision casting.
(`merge_and_unload_dequantized` is the tuner framework's, in `tuners/_dequantized_merge.py`; importable
here too.)"""

from __future__ import annotations

import torch
from torch import nn

from .lazy_exports import lazy_exports

# merging into a dequantized base needs the tuner framework, a floor above this one: defined there
_HOMES = {"merge_and_unload_dequantized": "peftkit.tuners._dequantized_merge"}
__all__ = ["cast_mixed_precision_params", "prepare_model_for_kbit_training", *_HOMES]
__getattr__, __dir__ = lazy_exports(globals(), _HOMES)

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
