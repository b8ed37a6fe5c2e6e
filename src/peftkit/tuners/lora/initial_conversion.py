"""Turn a trained PiSSA / OLoRA / CorDA adapter into a plain LoRA adapter for the original base model.

These initialisations move part of the base weight into the adapter: training runs on
`W_res = W - s B0 A0` with factors that start at `(A0, B0)`. After training, the model computes
`W_res + s B A = W + s (B A - B0 A0)`. That difference is a LoRA of twice the rank on the *original* `W`:

    A' = [A; A0]          (rank rows stacked)
    B' = [B, -B0]         (rank columns stacked)
    s B' A' = s (B A - B0 A0)

The scaling `s` must stay the same with rank 2r: `lora_alpha` doubles (`alpha / r`), or is multiplied by
sqrt(2) with rsLoRA (`alpha / sqrt(r)`); `rank_pattern` and `alpha_pattern` entries follow. DoRA
magnitudes, `lora_B` biases and `modules_to_save` tensors are unchanged (the residual absorbed
only `s B0 A0`, so the adapted weight and bias are the same).
The initial factors `(A0, B0)` are read from the adapter saved right after initialisation.
"""

from __future__ import annotations

import copy
import math
import os

import torch

from ...config import PeftConfig
from ...utils.weights_io import read_adapter_weights

_A_KEYS = (".lora_A.weight", ".lora_embedding_A")
_B_KEYS = (".lora_B.weight", ".lora_embedding_B")


def _read_initial(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isdir(path):
        raise ValueError(
            f"path_initial_model_for_weight_conversion={path!r} is not a folder. Pass the folder where the adapter "
            "was saved right after initialisation (before training)."
        )
    return read_adapter_weights(path, device="cpu")


def converted_config(config: PeftConfig) -> PeftConfig:
    """The config of the converted adapter: rank doubled, alpha rescaled to keep the scaling, plain init."""
    config = copy.deepcopy(config)
    factor = math.sqrt(2) if config.use_rslora else 2
    config.r = 2 * config.r
    config.lora_alpha = config.lora_alpha * factor
    config.rank_pattern = {key: 2 * rank for key, rank in config.rank_pattern.items()}
    config.alpha_pattern = {key: alpha * factor for key, alpha in config.alpha_pattern.items()}
    config.init_lora_weights = True
    return config


def convert_initialized_to_plain_lora(
    tensors: dict[str, torch.Tensor], config: PeftConfig, path_initial: str
) -> tuple[dict[str, torch.Tensor], PeftConfig]:
    """(file tensors, config) of the plain LoRA adapter equivalent to trained `tensors` on the original base.

    `tensors` are the trained adapter's file tensors; `path_initial` holds the same adapter saved at
    initialisation. Raises a `ValueError` naming the keys when the two do not belong together.
    """
    if getattr(config, "peft_type", None) is None or config.peft_type.value != "LORA":
        raise ValueError("path_initial_model_for_weight_conversion converts LoRA adapters only.")
    if getattr(config, "kasa_config", None) is not None:
        raise ValueError(
            "KaSA adapters cannot be converted to plain LoRA: their update carries lora_diag between B and A, and "
            "the base weight they were trained on was truncated."
        )
    if config.use_bdlora is not None:
        raise ValueError(
            "Block-diagonal LoRA adapters cannot be converted: the stacked factors are not block-diagonal."
        )
    initial = _read_initial(path_initial)
    factor_keys = [k for k in tensors if k.endswith(_A_KEYS + _B_KEYS)]
    missing = [k for k in factor_keys if k not in initial]
    if missing or not factor_keys:
        raise ValueError(
            f"The initial adapter at {path_initial!r} does not match the adapter being saved: it lacks "
            f"{missing[:5] or 'every LoRA factor'}. Pass the folder this very adapter was saved to right after "
            "initialisation."
        )
    converted: dict[str, torch.Tensor] = {}
    for key, trained in tensors.items():
        if key not in factor_keys:
            converted[key] = trained
            continue
        start = initial[key].to(device=trained.device, dtype=trained.dtype)
        if start.shape != trained.shape:
            raise ValueError(
                f"The initial adapter at {path_initial!r} has {key} of shape {tuple(start.shape)}, the trained one "
                f"{tuple(trained.shape)}: they are not the same adapter."
            )
        if key.endswith(_A_KEYS):
            converted[key] = torch.cat([trained, start], dim=0)
        else:
            converted[key] = torch.cat([trained, -start], dim=1)
    return converted, converted_config(config)
