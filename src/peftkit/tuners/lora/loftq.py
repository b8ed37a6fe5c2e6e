"""LoftQ (Li et al., 2023): LoRA initialised to undo the quantization error of the base weight.

Quantizing `W` to `Q` loses `W - Q`; LoftQ starts the adapter at the best rank-r approximation of that
loss, so that `Q + s B A` is closer to `W` than `Q` alone. Alternating T = `loftq_iter` times:

    Q_t = dequant(quant(W - s B_{t-1} A_{t-1}))          (B_0 A_0 = 0)
    U S V^T = SVD(W - Q_t);  B_t = U_r (S_r / s)^{1/2},  A_t = (S_r / s)^{1/2} V_r^T

Quantization is bitsandbytes' (NF4 with blocks of 64 for 4 bits, LLM.int8 row-wise for 8 bits), the
format the base is later loaded in, so the stored `Q` is exactly representable (re-quantizing it is
lossless).

* `init_lora_weights="loftq"` (with `loftq_config`) on an unquantized model replaces each targeted
  weight by `Q_T` (dequantized, in the weight's dtype) and sets A, B; save that base model and load it
  quantized for training.
* `replace_lora_weights_loftq(peft_model)` on a model already quantized with bitsandbytes reads the
  original weights `W` from the checkpoint's safetensors file and sets A, B from `W - Q` (one step, the
  quantized base is kept).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from .._bnb import is_bnb_layer
from .inits import register_init_scheme
from .layer import LoraLayer
from .sub_configs import LoftQConfig

_NF4_BLOCKSIZE = 64


def _bnb_functional() -> Any:
    try:
        import bitsandbytes.functional as functional
    except ImportError as err:
        raise ImportError(
            "LoftQ quantizes with bitsandbytes, which is not installed: pip install 'peftkit[quant]' "
            "(or pip install bitsandbytes)."
        ) from err
    return functional


def quantize_dequantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """`dequant(quant(weight))` in bitsandbytes' NF4 (4 bits) or LLM.int8 (8 bits) format, float32."""
    functional = _bnb_functional()
    if bits == 4:
        if weight.numel() % _NF4_BLOCKSIZE:
            raise ValueError(f"4-bit LoftQ needs the weight size to be a multiple of {_NF4_BLOCKSIZE}.")
        packed, state = functional.quantize_4bit(
            weight.float().contiguous(), blocksize=_NF4_BLOCKSIZE, quant_type="nf4"
        )
        return functional.dequantize_4bit(packed, state).float()
    if bits == 8:
        codes, scales, _ = functional.int8_vectorwise_quant(weight.half().contiguous())
        return functional.int8_vectorwise_dequant(codes, scales).float()
    raise ValueError(f"Only nf4 and int8 quantization is supported: loftq_bits must be 4 or 8, got {bits}.")


def low_rank_factors(residual: torch.Tensor, r: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with `s B A` the best rank-r approximation of `residual` (out, in)."""
    U, S, Vh = torch.linalg.svd(residual.float(), full_matrices=False)
    root = (S[:r] / scaling).sqrt()
    return root[:, None] * Vh[:r], U[:, :r] * root[None, :]


def loftq_factors(
    weight: torch.Tensor, r: int, scaling: float, bits: int, iterations: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dequantized Q, A, B) after `iterations` alternating steps (see the module doc)."""
    weight = weight.float()
    A = B = None
    for _ in range(max(iterations, 1)):
        target = weight if A is None else weight - scaling * (B @ A)
        quantized = quantize_dequantize(target, bits)
        A, B = low_rank_factors(weight - quantized, r, scaling)
    return quantized, A, B


def _as_config(config: Any) -> LoftQConfig:
    if isinstance(config, LoftQConfig):
        return config
    return LoftQConfig(**(config or {}))


def _set_factors(layer: Any, adapter_name: str, A: torch.Tensor, B: torch.Tensor) -> None:
    for factor, value in ((layer.lora_A[adapter_name], A), (layer.lora_B[adapter_name], B)):
        if not factor.weight.is_meta:
            factor.weight.data = value.to(device=factor.weight.device, dtype=factor.weight.dtype).contiguous()


def init_loftq(layer: Any, adapter_name: str) -> None:
    """`init_lora_weights="loftq"`: quantize the layer's weight and set A, B (see the module doc)."""
    config = _as_config(layer.kwargs.get("loftq_config"))  # LoraModel passes it for init "loftq"
    base = layer.get_base_layer()
    weight = base.weight
    if not weight.dtype.is_floating_point or weight.is_meta:
        raise ValueError(
            "init_lora_weights='loftq' quantizes the full-precision weights itself: create the adapter on the "
            "unquantized model. For a model already quantized with bitsandbytes, use init_lora_weights=True and "
            "then replace_lora_weights_loftq(peft_model)."
        )
    r, scaling = layer.r[adapter_name], layer.scaling[adapter_name]
    with torch.no_grad():
        out_in = layer._weight_out_in(weight.detach())
        quantized, A, B = loftq_factors(out_in, r, scaling, config.loftq_bits, config.loftq_iter)
        weight.data = layer._weight_out_in(quantized.to(weight.device)).to(weight.dtype).contiguous()
    _set_factors(layer, adapter_name, A, B)


# ----- replace_lora_weights_loftq: a model already quantized with bitsandbytes -----
def _checkpoint_files(model_path: str) -> list[str]:
    """The safetensors file(s) of a checkpoint folder, a file path, or a Hub id already in the cache."""
    if os.path.isfile(model_path):
        return [model_path]
    folder = model_path
    if not os.path.isdir(folder):
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(
                model_path, allow_patterns=["*.safetensors", "*.json"], local_files_only=True
            )
        except Exception as err:
            raise ValueError(
                f"Could not find the safetensors checkpoint of {model_path!r} locally; pass model_path= pointing "
                "to the folder (or file) holding the unquantized weights."
            ) from err
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(folder, shard) for shard in shards]
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    raise ValueError(
        f"No model.safetensors in {folder!r}: replace_lora_weights_loftq reads the unquantized weights lazily from "
        "safetensors files (pickled checkpoints are not supported)."
    )


class _LazyWeights:
    """Tensor lookup across safetensors shards, tolerant of a leading `model.`-style prefix difference."""

    def __init__(self, files: list[str]) -> None:
        self._handles = [safe_open(path, framework="pt", device="cpu") for path in files]
        self._where = {key: handle for handle in self._handles for key in handle.keys()}  # noqa: SIM118

    def get(self, name: str) -> torch.Tensor | None:
        candidates = [name]
        parts = name.split(".")
        candidates += [
            ".".join(parts[i:]) for i in range(1, len(parts))
        ]  # checkpoint without a wrapper prefix
        for key in candidates:
            if key in self._where:
                return self._where[key].get_tensor(key)
        return None


@torch.no_grad()
def replace_lora_weights_loftq(
    peft_model: nn.Module,
    model_path: str | None = None,
    adapter_name: str = "default",
    callback: Callable[[nn.Module, str], bool] | None = None,
) -> None:
    """Set the LoRA weights of a bitsandbytes-quantized PeftModel by LoftQ (one step, base kept).

    Args:
        peft_model: a PeftModel whose LoRA layers wrap bitsandbytes `Linear4bit`/`Linear8bitLt` layers.
        model_path: the unquantized checkpoint (folder with `model.safetensors` or its shards, or a file);
            default: the model's `config._name_or_path` (a local folder or a Hub id in the local cache).
        adapter_name: the adapter to set.
        callback: `callback(model, module_name) -> bool` after each layer; False rolls that layer back
            (e.g. keep the change only if the logits got closer to the unquantized model's).
    """
    if model_path is None:
        config = getattr(peft_model, "config", None)
        model_path = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
        if not model_path:
            raise ValueError("replace_lora_weights_loftq needs model_path (the model has no _name_or_path).")
    weights = _LazyWeights(_checkpoint_files(model_path))
    replaced = 0
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or adapter_name not in module.lora_A:
            continue
        if not is_bnb_layer(module.get_base_layer()):
            continue
        key = name.removeprefix("base_model.model.") + ".weight"
        original = weights.get(key)
        if original is None:
            raise ValueError(f"The checkpoint at {model_path!r} has no tensor {key!r} for layer {name}.")
        quantized = module._dense_base_weight().float()
        original = original.to(device=quantized.device, dtype=torch.float32)
        r, scaling = module.r[adapter_name], module.scaling[adapter_name]
        previous = (
            module.lora_A[adapter_name].weight.data.clone(),
            module.lora_B[adapter_name].weight.data.clone(),
        )
        A, B = low_rank_factors(original - quantized, r, scaling)
        _set_factors(module, adapter_name, A, B)
        if callback is not None and not callback(peft_model, name):
            _set_factors(module, adapter_name, *previous)
        replaced += 1
    if not replaced:
        raise ValueError(
            "replace_lora_weights_loftq found no LoRA layer on a bitsandbytes-quantized layer; load the base model "
            "quantized (BitsAndBytesConfig(load_in_4bit=True)) before adding the adapter."
        )


register_init_scheme("loftq", init_loftq)
