"""X-LoRA's experts: LoRA adapters read from folders (or the Hub) into one LoraModel, named "0", "1", ...

An expert's files are PEFT's LoRA format (`base_model.model.<module>.lora_A.weight`, ...). The copies
peft 0.21.2's X-LoRA save writes beside the classifier use another layout (`base_model.lora_model.model.`)
and miss the tensors of every layer whose index is another expert's name; they are passed over for the
next candidate (the expert's original folder).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ...config import PeftConfig
from ...utils.peft_types import PeftType
from ...utils.warnings import AdapterLoadError, PeftWarning
from ...utils.weights_io import read_adapter_weights
from ..lora import LoraConfig, LoraModel

_FILE_PREFIX = "base_model."
_PEFT_XLORA_COPY_PREFIX = "base_model.lora_model."

Candidate = tuple[str, "str | None", dict[str, Any]]


def _where(candidate: Candidate) -> str:
    model_id, subfolder, _ = candidate
    return f"{model_id}" + (f" (subfolder {subfolder})" if subfolder else "")


def read_expert(
    candidates: list[Candidate], device: torch.device
) -> tuple[LoraConfig, dict[str, torch.Tensor], str]:
    """(config, weights, where) of the first candidate holding a LoRA adapter in PEFT's file layout."""
    for number, candidate in enumerate(candidates):
        model_id, subfolder, hub = candidate
        try:
            config = PeftConfig.from_pretrained(model_id, subfolder=subfolder, **hub)
        except AdapterLoadError as err:  # e.g. a Hub id while offline: say it is an X-LoRA expert
            raise type(err)(f"Cannot load the X-LoRA expert at {_where(candidate)}: {err}") from err
        if config.peft_type != PeftType.LORA:
            raise ValueError(
                f"X-LoRA experts must be LoRA adapters, but {_where(candidate)} holds a "
                f"{getattr(config.peft_type, 'value', config.peft_type)} adapter."
            )
        weights = read_adapter_weights(model_id, device=device, subfolder=subfolder, **hub)
        if any(key.startswith(_PEFT_XLORA_COPY_PREFIX) for key in weights) and number + 1 < len(candidates):
            warnings.warn(
                f"The X-LoRA expert copy at {_where(candidate)} was written by peft's X-LoRA save, which leaves out "
                f"some of its tensors; loading the expert from {_where(candidates[number + 1])} instead.",
                PeftWarning,
            )
            continue
        return config, weights, _where(candidate)
    raise ValueError(f"No usable copy of this X-LoRA expert among {[_where(c) for c in candidates]}.")


def add_expert(
    lora_model: LoraModel | None, model: nn.Module, name: str, config: LoraConfig, **kwargs: Any
) -> LoraModel:
    """Create expert `name` (a LoRA adapter) on `model`: the LoraModel's first adapter, or one more."""
    config.inference_mode = False  # trainability is settled once all experts are in
    if lora_model is None:
        return LoraModel(model, {name: config}, name, **kwargs)
    lora_model.peft_config[name] = config
    lora_model.inject_adapter(model, name, **kwargs)
    return lora_model


def _file_key(model_key: str, name: str) -> str | None:
    """The file key of one of expert `name`'s tensors (its name taken out, as PEFT saves it), or None."""
    parts = model_key.split(".")
    for i in range(len(parts) - 1):
        if parts[i + 1] != name:
            continue
        if parts[i] == "modules_to_save":
            return ".".join(parts[:i] + parts[i + 2 :])
        if parts[i].startswith("lora_"):
            rest = parts[i + 2 :]
            if parts[i] == "lora_magnitude_vector" and rest == ["weight"]:
                rest = []
            return ".".join(parts[: i + 1] + rest)
    return None


def fill_expert(
    lora_model: LoraModel, name: str, weights: dict[str, torch.Tensor], where: str, assign: bool = False
) -> None:
    """Copy an expert's file tensors into adapter `name`: all of its own tensors must be there, and every
    other tensor of the file must be a tensor of the model (a trained bias)."""
    model_state = lora_model.state_dict()
    own = {_FILE_PREFIX + fk: key for key in model_state if (fk := _file_key(key, name)) is not None}
    to_load, unexpected, mismatched = {}, [], []
    for file_key, tensor in weights.items():
        key = own.get(file_key) or (
            file_key[len(_FILE_PREFIX) :] if file_key.startswith(_FILE_PREFIX) else None
        )
        if key not in model_state:
            unexpected.append(file_key)
        elif tensor.shape != model_state[key].shape:
            mismatched.append(
                f"{file_key}: the model expects {tuple(model_state[key].shape)}, the file holds {tuple(tensor.shape)}"
            )
        else:
            to_load[key] = tensor
    missing = sorted(file_key for file_key in own if file_key not in weights)
    if unexpected or missing or mismatched:
        raise ValueError(
            f"The X-LoRA expert at {where} does not fit this model: unexpected keys {sorted(unexpected)[:5]}, missing "
            f"{missing[:5]}, mismatched shapes {mismatched[:5]}. Each expert must be a LoRA adapter of this base model."
        )
    lora_model.load_state_dict(to_load, strict=False, assign=assign)
