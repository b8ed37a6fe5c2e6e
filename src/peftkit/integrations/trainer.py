"""transformers' Trainer on peftkit models, without the `peft` alias.

The Trainer recognises adapter models only as instances of `peft.PeftModel`. For a peftkit model it would
therefore write full-model checkpoints (`model.safetensors`, which also fails on tied weights), resume
and load the best model from those, skip the label shift of label smoothing for causal LMs, and keep
only the dataset columns the wrapper's forward names. `PeftTrainerMixin` puts each of these right:

- checkpoints hold only the adapters (`adapter_config.json` + `adapter_model.safetensors`, PEFT's
  layout), gathered from a full state dict under FSDP/DeepSpeed and written by the main process only;
- resuming and `load_best_model_at_end` load the adapters back into the same parameters;
- label smoothing shifts the labels when the base model is a causal LM, as for the bare model;
- dataset columns are kept when the wrapper's or the base model's forward accepts them.

Mix it in ahead of any Trainer subclass (TRL's included): `class MyTrainer(PeftTrainerMixin, SFTTrainer)`.
It handles `PeftModel`s and transformers models carrying peftkit adapters (`model_adapters.add_adapter`);
TRL's trainers get the model inside the `PeftModel` (see `PeftTrainerMixin.train_inner_model`).
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_pt_utils import LabelSmoother

from ..peft_model import PeftModel
from ..tuners.tuners_utils import BaseTunerLayer
from ..utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from ..utils.warnings import PeftWarning
from . import model_adapters

__all__ = ["PeftTrainer", "PeftTrainerMixin"]

TRAINING_ARGS_NAME = "training_args.bin"  # transformers' name for the saved TrainingArguments


@dataclass
class _ShiftingLabelSmoother(LabelSmoother):
    """Label smoothing for a causal LM behind a wrapper: the labels are always shifted by one, as the
    Trainer does for a bare causal LM."""

    def __call__(self, model_output, labels, shift_labels=False, num_items_in_batch=None):
        return super().__call__(
            model_output, labels, shift_labels=True, num_items_in_batch=num_items_in_batch
        )


def _inner_model(model: nn.Module) -> nn.Module:
    """The model without DDP/DataParallel/torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def adapter_model(model: nn.Module) -> nn.Module | None:
    """The peftkit model inside `model` (a PeftModel, or a model carrying peftkit adapters), or None."""
    model = _inner_model(model)
    if isinstance(model, PeftModel) or model_adapters.has_adapters(model):
        return model
    return None


def _base_of(model: nn.Module) -> nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _is_causal_lm(model: nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(_base_of(model)).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def _has_adapter_files(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, CONFIG_NAME)) and any(
        os.path.isfile(os.path.join(folder, name)) for name in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME)
    )


def _active_adapters(model: nn.Module) -> list[str]:
    return (
        list(model.active_adapters) if isinstance(model, PeftModel) else model_adapters.active_adapters(model)
    )


def _load_adapter(model: nn.Module, folder: str, adapter_name: str, is_trainable: bool) -> None:
    if isinstance(model, PeftModel):
        model.load_adapter(folder, adapter_name, is_trainable=is_trainable)
    else:
        model_adapters.load_adapter(model, folder, adapter_name, is_trainable=is_trainable)


def _is_trainable(model: nn.Module, adapter_name: str) -> bool:
    return any(
        tensor.requires_grad
        for module in model.modules()
        if isinstance(module, BaseTunerLayer)
        for tensor in module._adapter_tensors(adapter_name)
    )


def load_adapter_checkpoint(model: nn.Module, checkpoint: str, is_trainable: bool | None = None) -> list[str]:
    """Load every adapter saved in a Trainer checkpoint folder back into `model` (a PeftModel or a model
    carrying peftkit adapters): "default" from the top of the folder, the others from sub-folders of
    their name. The active adapter is trainable (unless `is_trainable=False`) and stays active. Returns
    the names of the adapters loaded."""
    active = _active_adapters(model)
    candidates = {"default": checkpoint}
    for entry in sorted(os.listdir(checkpoint)):
        folder = os.path.join(checkpoint, entry)
        if os.path.isdir(folder) and entry in model.peft_config:
            candidates[entry] = folder
    loaded = []
    for name, folder in candidates.items():
        if name not in model.peft_config or not _has_adapter_files(folder):
            continue
        trainable = name in active if is_trainable is None else (is_trainable and name in active)
        _load_adapter(model, folder, name, is_trainable=trainable)
        loaded.append(name)
    if not loaded:
        raise ValueError(
            f"No adapter of the model ({sorted(model.peft_config)}) was found in {checkpoint}: expected "
            f"{CONFIG_NAME} and {SAFETENSORS_WEIGHTS_NAME} there (or in a sub-folder named after the adapter)."
        )
    if isinstance(model, PeftModel):
        model.set_adapter(active[0] if len(active) == 1 else active)
    else:
        model_adapters.set_adapter(model, active[0] if len(active) == 1 else active)
    return loaded


class PeftTrainerMixin:
    """Makes a transformers `Trainer` (or subclass, e.g. TRL's) handle peftkit models as it handles PEFT's:
    adapter-only checkpoints, resuming and best-model loading from them, label smoothing as for the base
    model class, dataset columns the base model accepts. See the module docstring.

    `train_inner_model`: give the Trainer the transformers model inside a `PeftModel` (its adapters in
    place; `peft_model` keeps the wrapper) rather than the wrapper. `None` (default) does so for TRL's
    trainers only: they patch the model's `forward` with a fused LM head and unwrap only PEFT's own
    wrapper. Checkpoints are the same either way.
    """

    train_inner_model: bool | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        model = kwargs["model"] if "model" in kwargs else (args[0] if args else None)
        self.peft_model = model if isinstance(model, PeftModel) else None
        if self.peft_model is not None and self._trains_inner_model():
            inner = self.peft_model.get_base_model()
            if "model" in kwargs:
                kwargs["model"] = inner
            else:
                args = (inner, *args[1:])
        super().__init__(*args, **kwargs)
        model = adapter_model(self.model)
        smoother = getattr(self, "label_smoother", None)
        if model is not None and smoother is not None and _is_causal_lm(model):
            self.label_smoother = _ShiftingLabelSmoother(
                epsilon=smoother.epsilon, ignore_index=smoother.ignore_index
            )

    def _trains_inner_model(self) -> bool:
        if self.train_inner_model is not None:
            return self.train_inner_model
        return any(cls.__module__.split(".")[0] == "trl" for cls in type(self).__mro__)

    def _set_signature_columns_if_needed(self) -> None:
        model = adapter_model(self.model)
        if model is None or self._signature_columns is not None:
            return super()._set_signature_columns_if_needed()
        columns = list(inspect.signature(model.forward).parameters)
        columns += [c for c in inspect.signature(_base_of(model).forward).parameters if c not in columns]
        self._signature_columns = columns + sorted({"label", "label_ids", *self.label_names} - set(columns))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = adapter_model(self.model)
        if model is None:
            return super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if isinstance(model, PeftModel):
            model.save_pretrained(output_dir, state_dict=state_dict, is_main_process=self.args.should_save)
        else:
            model_adapters.save_adapters(
                model, output_dir, state_dict=state_dict, is_main_process=self.args.should_save
            )
        if not self.args.should_save:
            return
        processor = self.processing_class
        if processor is None:
            processor = getattr(self.data_collator, "tokenizer", None)
        if processor is not None:
            processor.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        target = adapter_model(model if model is not None else self.model)
        if target is None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_adapter_checkpoint(target, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        model = adapter_model(self.model)
        if model is None:
            return super()._load_best_model()
        best = self.state.best_model_checkpoint
        active = _active_adapters(model)
        trainable = any(_is_trainable(model, name) for name in active)
        try:
            load_adapter_checkpoint(model, best, is_trainable=trainable)
        except ValueError as err:
            warnings.warn(f"The best model was not loaded: {err}", PeftWarning, stacklevel=2)


class PeftTrainer(PeftTrainerMixin, Trainer):
    """transformers' `Trainer` for peftkit models (see `PeftTrainerMixin`)."""
