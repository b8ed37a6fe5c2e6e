"""get_peft_model: the usual entry point."""

from __future__ import annotations

import warnings

from torch import nn

from .config import PeftConfig
from .mapping import PEFT_TYPE_TO_PREFIX_MAPPING
from .mixed_model import PeftMixedModel
from .peft_model import MODEL_TYPE_TO_PEFT_MODEL_MAPPING, PeftModel
from .tuners.tuners_utils import BaseTunerLayer
from .utils.peft_types import TaskType
from .utils.warnings import PeftWarning


def get_peft_model(
    model: nn.Module,
    peft_config: PeftConfig,
    adapter_name: str = "default",
    mixed: bool = False,
    autocast_adapter_dtype: bool = True,
    revision: str | None = None,
    low_cpu_mem_usage: bool = False,
) -> PeftModel:
    """Wrap `model` with a new adapter described by `peft_config` (`mixed=True`: a PeftMixedModel).

    The returned class follows `peft_config.task_type` (PeftModelForCausalLM for CAUSAL_LM, ...); with no
    task type it is a plain PeftModel. Only the adapter's parameters (and `modules_to_save`) train.
    """
    if not isinstance(peft_config, PeftConfig):
        raise TypeError(
            f"peft_config must be a PeftConfig (e.g. LoraConfig), got {type(peft_config).__name__}."
        )
    existing = _existing_adapters(model)
    if existing:
        # Mostly notebooks re-running a cell: the new config would silently sit beside the old adapters.
        warnings.warn(
            "You are trying to modify a model with PEFT for a second time: it already carries adapter(s) "
            f"{existing}. If you want to reload the model with a different config, make sure to call `.unload()` "
            "before (or add the new adapter with `add_adapter` on the PeftModel).",
            PeftWarning,
        )
    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(peft_config.peft_type)
    if prefix and adapter_name in prefix:
        warnings.warn(
            f"Adapter name '{adapter_name}' should not be contained in the prefix '{prefix}': loading would "
            "mistake the adapter's name for part of its parameter names. Choose another adapter name.",
            PeftWarning,
        )
    base_config = getattr(model, "config", None)
    name_or_path = getattr(base_config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if name_or_path:
        peft_config.base_model_name_or_path = name_or_path
    if revision is not None:
        if peft_config.revision is not None and peft_config.revision != revision:
            warnings.warn(
                f"peft config has already set base model revision to {peft_config.revision}, overwriting with "
                f"revision {revision}",
                PeftWarning,
            )
        peft_config.revision = revision
    if mixed:  # adapters of several methods on one model
        return PeftMixedModel(model, peft_config, adapter_name=adapter_name)
    check_task_fits_model(peft_config.task_type, model)
    cls = (
        MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(peft_config.task_type, PeftModel)
        if isinstance(peft_config.task_type, TaskType)
        else PeftModel
    )
    return cls(
        model,
        peft_config,
        adapter_name=adapter_name,
        autocast_adapter_dtype=autocast_adapter_dtype,
        low_cpu_mem_usage=low_cpu_mem_usage,
    )


def _existing_adapters(model: nn.Module) -> list[str]:
    """The names of the adapters whose layers `model` already carries, sorted."""
    names: set[str] = set()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            names.update(module._all_available_adapter_names())
    return sorted(names)


def check_task_fits_model(task_type: TaskType | None, model: nn.Module) -> None:
    """Say at wrap time when a task class cannot work with the model (e.g. CAUSAL_LM without an LM head)."""
    if task_type in (TaskType.CAUSAL_LM, TaskType.SEQ_2_SEQ_LM):
        get_output = getattr(model, "get_output_embeddings", None)
        head = get_output() if callable(get_output) else None
        if head is None and hasattr(model, "config"):
            warnings.warn(
                f"task_type={task_type.value} but {type(model).__name__} has no language-modeling head "
                "(get_output_embeddings() is None): generate() and the LM loss will not work. Load the model "
                "with AutoModelForCausalLM / AutoModelForSeq2SeqLM, or use task_type='FEATURE_EXTRACTION'.",
                PeftWarning,
            )
