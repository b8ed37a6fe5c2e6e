"""AutoPeftModel classes: load the base model an adapter names, and the adapter, in one call.

    model = AutoPeftModelForCausalLM.from_pretrained("org/my-lora")

Safety: nothing in an adapter's files can make this run code. `trust_remote_code` reaches the base
model's loader only when the caller passes it, and the `auto_mapping` of adapter_config.json is never
imported: it may only name a model class that `transformers` itself exports.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from torch import nn

from .config import PeftConfig
from .peft_model import (
    MODEL_TYPE_TO_PEFT_MODEL_MAPPING,
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
)
from .utils.constants import TOKENIZER_CONFIG_NAME
from .utils.hub import AdapterNotCachedError, resolve_adapter_file
from .utils.warnings import PeftWarning

__all__ = [
    "AutoPeftModel",
    "AutoPeftModelForCausalLM",
    "AutoPeftModelForFeatureExtraction",
    "AutoPeftModelForQuestionAnswering",
    "AutoPeftModelForSeq2SeqLM",
    "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification",
]

# where the adapter files are (not forwarded to the base model's loader)
_ADAPTER_LOCATION = ("subfolder",)
# hub settings that apply to both the adapter and the base model
_SHARED_HUB = ("cache_dir", "token", "local_files_only", "force_download")
# PeftModel.from_pretrained options (not forwarded to the base model's loader)
_PEFT_LOAD_OPTIONS = (
    "autocast_adapter_dtype",
    "ephemeral_gpu_offload",
    "low_cpu_mem_usage",
    "key_mapping",
    "torch_device",
)


def _transformers_model_class(auto_mapping: Any) -> type:
    """The base class `auto_mapping` names, if it is a model class exported by `transformers`.

    Nothing is imported by name: the class is looked up on the `transformers` package (whose own lazy
    loader resolves it), and anything else is refused.
    """
    import transformers

    name = auto_mapping.get("base_model_class") if isinstance(auto_mapping, dict) else None
    library = auto_mapping.get("parent_library") if isinstance(auto_mapping, dict) else None
    fix = "Load the base model yourself and call PeftModel.from_pretrained(base_model, adapter_id)."
    if not isinstance(name, str) or not isinstance(library, str):
        raise ValueError(f"adapter_config.json has a malformed auto_mapping {auto_mapping!r}. {fix}")
    if not (library == "transformers" or library.startswith("transformers.")) or not name.isidentifier():
        raise ValueError(
            f"adapter_config.json asks for base class {library}.{name}; peftkit only loads model classes that "
            f"transformers exports and never imports modules named in adapter files. {fix}"
        )
    try:
        found = getattr(transformers, name)
    except (AttributeError, ImportError, RuntimeError):
        found = None
    if not (isinstance(found, type) and issubclass(found, transformers.PreTrainedModel)):
        raise ValueError(
            f"adapter_config.json names base class {name!r}, which transformers does not export. {fix}"
        )
    return found


def _split(kwargs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: kwargs.pop(k) for k in names if k in kwargs}


class _BaseAutoPeftModel:
    """Shared `from_pretrained` of the AutoPeftModel classes."""

    _target_class: str | None = None  # the transformers Auto class (by name) that loads the base
    _target_peft_class: type[PeftModel] = PeftModel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise OSError(
            f"{type(self).__name__} is designed to be instantiated using "
            f"`{type(self).__name__}.from_pretrained(pretrained_model_name_or_path)`"
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: PeftConfig | None = None,
        revision: str | None = None,
        import_allowlist: list[str] | None = None,
        **kwargs: Any,
    ) -> PeftModel:
        """Load the base model named by the adapter's config, then the adapter onto it.

        Args:
            pretrained_model_name_or_path: the adapter (local folder or Hub repo id).
            adapter_name: the name the adapter gets.
            is_trainable: keep the adapter trainable (else it is frozen and the model in eval mode).
            config: an adapter config to use instead of the one in the folder.
            revision: the adapter repo's revision (the base model's comes from the config's `revision`).
            import_allowlist: accepted for PEFT compatibility; peftkit never imports modules named in
                adapter files, so it cannot widen that (see `auto_mapping` in the module docstring).
            kwargs: `subfolder`, `cache_dir`, `token`, `local_files_only` (adapter, and base where it
                applies), PeftModel.from_pretrained options (`low_cpu_mem_usage`, `torch_device`, ...), and
                everything else for the base model's `from_pretrained` (`dtype`, `device_map`,
                `trust_remote_code` - only when passed here).
        """
        adapter_id = os.fspath(pretrained_model_name_or_path)
        location = _split(kwargs, _ADAPTER_LOCATION)
        shared = _split(kwargs, _SHARED_HUB)
        peft_options = _split(kwargs, _PEFT_LOAD_OPTIONS)
        adapter_hub = {**location, **shared, "revision": revision}
        if import_allowlist:
            warnings.warn(
                "import_allowlist is ignored: peftkit never imports modules named in adapter_config.json.",
                PeftWarning,
                stacklevel=2,
            )
        if config is None:
            config_hub = {k: v for k, v in adapter_hub.items() if k != "force_download"}
            config = PeftConfig.from_pretrained(adapter_id, **config_hub)
        base_path = config.base_model_name_or_path
        if not base_path:
            raise ValueError(
                f"The adapter config of '{adapter_id}' has no base_model_name_or_path, so the base model is "
                "unknown. Load the base model yourself and call PeftModel.from_pretrained(base_model, adapter_id)."
            )
        base_cls = cls._base_class(config)
        base_model = base_cls.from_pretrained(base_path, revision=config.revision, **shared, **kwargs)
        cls._grow_embeddings_for_tokenizer(
            base_model, adapter_id, adapter_hub, kwargs.get("trust_remote_code")
        )
        return cls._target_peft_class.from_pretrained(
            base_model,
            adapter_id,
            adapter_name=adapter_name,
            is_trainable=is_trainable,
            config=config,
            **{k: v for k, v in adapter_hub.items() if v is not None},
            **peft_options,
        )

    @classmethod
    def _base_class(cls, config: PeftConfig) -> type:
        import transformers

        task_type = config.task_type
        if cls._target_class is None:
            if task_type is not None:
                raise ValueError(
                    "Cannot use `AutoPeftModel` with a task type, please use a specific class for your task type. "
                    "(e.g. `AutoPeftModelForCausalLM` for `task_type='CAUSAL_LM'`)"
                )
            if getattr(config, "auto_mapping", None) is None:
                raise ValueError(
                    "Cannot infer the base model class: the adapter config has neither a task_type nor an "
                    "auto_mapping. Use the AutoPeftModelFor<Task> class for the task."
                )
            return _transformers_model_class(config.auto_mapping)
        expected = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(task_type) if task_type is not None else None
        if expected is not None and expected is not cls._target_peft_class:
            raise ValueError(
                f"Expected target PEFT class: {expected.__name__}, but you have asked for: "
                f"{cls._target_peft_class.__name__} make sure that you are loading the correct model for your "
                "task type."
            )
        return getattr(transformers, cls._target_class)

    @staticmethod
    def _grow_embeddings_for_tokenizer(
        base_model: nn.Module, adapter_id: str, adapter_hub: dict[str, Any], trust_remote_code: bool | None
    ) -> None:
        """An adapter folder with a tokenizer may have added tokens: grow the base embeddings to fit it
        (never shrink them: vocabularies are often padded beyond the tokenizer)."""
        hub = {k: v for k, v in adapter_hub.items() if v is not None}
        try:
            found = resolve_adapter_file(adapter_id, TOKENIZER_CONFIG_NAME, **hub)
        except AdapterNotCachedError:
            found = None
        get_embeddings = getattr(base_model, "get_input_embeddings", None)
        if found is None or get_embeddings is None:
            return
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            adapter_id, trust_remote_code=bool(trust_remote_code), **hub
        )
        if len(tokenizer) > get_embeddings().weight.shape[0]:
            base_model.resize_token_embeddings(len(tokenizer))


class AutoPeftModel(_BaseAutoPeftModel):
    """Base class from the adapter's `auto_mapping` (adapters saved without a task type)."""

    _target_class = None
    _target_peft_class = PeftModel


class AutoPeftModelForCausalLM(_BaseAutoPeftModel):
    """`AutoModelForCausalLM` base + adapter -> `PeftModelForCausalLM`."""

    _target_class = "AutoModelForCausalLM"
    _target_peft_class = PeftModelForCausalLM


class AutoPeftModelForSeq2SeqLM(_BaseAutoPeftModel):
    """`AutoModelForSeq2SeqLM` base + adapter -> `PeftModelForSeq2SeqLM`."""

    _target_class = "AutoModelForSeq2SeqLM"
    _target_peft_class = PeftModelForSeq2SeqLM


class AutoPeftModelForSequenceClassification(_BaseAutoPeftModel):
    """`AutoModelForSequenceClassification` base + adapter -> `PeftModelForSequenceClassification`."""

    _target_class = "AutoModelForSequenceClassification"
    _target_peft_class = PeftModelForSequenceClassification


class AutoPeftModelForTokenClassification(_BaseAutoPeftModel):
    """`AutoModelForTokenClassification` base + adapter -> `PeftModelForTokenClassification`."""

    _target_class = "AutoModelForTokenClassification"
    _target_peft_class = PeftModelForTokenClassification


class AutoPeftModelForQuestionAnswering(_BaseAutoPeftModel):
    """`AutoModelForQuestionAnswering` base + adapter -> `PeftModelForQuestionAnswering`."""

    _target_class = "AutoModelForQuestionAnswering"
    _target_peft_class = PeftModelForQuestionAnswering


class AutoPeftModelForFeatureExtraction(_BaseAutoPeftModel):
    """`AutoModel` base + adapter -> `PeftModelForFeatureExtraction`."""

    _target_class = "AutoModel"
    _target_peft_class = PeftModelForFeatureExtraction
