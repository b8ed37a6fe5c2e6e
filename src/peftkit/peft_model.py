"""PeftModel: a base model plus named adapters, and one subclass per task.

The module tree is PEFT's: `PeftModel.base_model` is the tuner (e.g. LoraModel) and
`PeftModel.base_model.model` the original model, so parameter names read
`base_model.model.<original path>...`. Attributes the wrapper does not have fall through to the tuner
and then to the original model (`model.config`, `model.generation_config`, ...).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .config import PeftConfig
from .mapping import PEFT_TYPE_TO_TUNER_MAPPING
from .persistence.distributed import gather_sharded_adapter_state_dict
from .persistence.folders import (
    load_adapter_into,
    load_peft_model,
    push_peft_model_to_hub,
    save_peft_model,
    write_model_card,
)
from .prompt_learning import (
    add_prompt_adapter,
    causal_lm_generate,
    delete_prompt_adapter,
    get_prompt,
    get_prompt_embedding_to_save,
    prompt_learning_forward,
    seq2seq_generate,
    set_prompt_adapter,
    setup_prompt_learning,
)
from .tuners._sample_routing import batch_size_of, route_samples
from .tuners._status import get_layer_status, get_model_status
from .tuners.tuners_utils import BASE_ADAPTER_NAME, BaseTuner
from .utils.cache_names import rename_cache_for
from .utils.peft_types import TaskType
from .utils.warnings import PeftWarning

__all__ = [
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "get_layer_status",
    "get_model_status",
]


def _validate_adapter_name(name: Any) -> None:
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"Adapter name must be a non-empty string without surrounding spaces, got {name!r}.")
    if name == BASE_ADAPTER_NAME:
        raise ValueError(f"'{BASE_ADAPTER_NAME}' is reserved (it means 'no adapter' in adapter_names=).")
    if "." in name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(
            f"Adapter name {name!r} may not contain '.', '/' or '\\': it is used in parameter names and as a "
            "sub-folder name when saving."
        )


def _output_requires_grad(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
    output.requires_grad_(True)


def _checkpointing_may_be_on(model: nn.Module) -> bool:
    """Whether `model` has activation checkpointing on (True for a model that cannot say, as PEFT assumes).
    transformers 5.25 renamed `is_gradient_checkpointing` to `is_activation_checkpointing` and warns on the
    old name, so the new one is read where the model's class has it."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return True


class PeftModel(nn.Module):
    """A base model with adapters.

    Args:
        model: the base model (e.g. a transformers `PreTrainedModel`).
        peft_config: the first adapter's config.
        adapter_name: its name ("default").
        autocast_adapter_dtype: keep adapter weights in fp32 on an fp16/bf16 base.
        low_cpu_mem_usage: create the adapter weights on the meta device (to be filled from a file).
    """

    # the task whose prompt-learning forward this class runs (set by each task class)
    _prompt_task: TaskType | None = None
    # Where adapters named in `adapter_names=` but not loaded come from (an `AdapterStore`, which sets
    # itself here): anything with `prepare(names)` that loads those names before the call. None: no source.
    adapter_source: Any = None

    def __init__(
        self,
        model: nn.Module,
        peft_config: PeftConfig,
        adapter_name: str = "default",
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
    ) -> None:
        super().__init__()
        _validate_adapter_name(adapter_name)
        self.modules_to_save: set[str] | None = None
        self.special_peft_forward_args = {"adapter_names"}
        self.peft_type = peft_config.peft_type
        if peft_config.is_prompt_learning:  # no tuner: base_model is the model itself (see prompt_learning)
            setup_prompt_learning(self, model, peft_config, adapter_name)
            self._track_modules_to_save(peft_config)
            if _checkpointing_may_be_on(model):
                self.prepare_model_for_gradient_checkpointing(model)
            self._hf_peft_config_loaded = True
            return
        tuner_cls = self._tuner_class(peft_config)
        self.base_model = tuner_cls(
            model,
            {adapter_name: peft_config},
            adapter_name,
            low_cpu_mem_usage=low_cpu_mem_usage,
            autocast_adapter_dtype=autocast_adapter_dtype,
        )
        self._track_modules_to_save(peft_config)
        if _checkpointing_may_be_on(model):  # as peft: checkpointing already on
            self.prepare_model_for_gradient_checkpointing(model)
        if hasattr(self.base_model, "config") and hasattr(self.base_model.config, "pretraining_tp"):
            self.base_model.config.pretraining_tp = 1
        # transformers' Trainer and quantized-training guards look for this flag
        self._hf_peft_config_loaded = True

    def _tuner_class(self, peft_config: PeftConfig) -> type:
        """The tuner that implements `peft_config`'s method (PeftMixedModel: one for every method)."""
        if peft_config.peft_type not in PEFT_TYPE_TO_TUNER_MAPPING:
            raise ValueError(f"peftkit does not support peft_type {peft_config.peft_type!r} yet.")
        return PEFT_TYPE_TO_TUNER_MAPPING[peft_config.peft_type]

    # ----- configuration and state -----
    _prompt_learning = None  # a PromptLearningState for prompt-learning methods

    @property
    def _is_prompt_learning(self) -> bool:
        return self._prompt_learning is not None

    @property
    def peft_config(self) -> dict[str, PeftConfig]:
        if self._is_prompt_learning:
            return self._prompt_learning.peft_config
        return self.base_model.peft_config

    @peft_config.setter
    def peft_config(self, value: dict[str, PeftConfig]) -> None:
        if self._is_prompt_learning:
            self._prompt_learning.peft_config = value
        else:
            self.base_model.peft_config = value

    @property
    def active_adapter(self) -> str | list[str]:
        if self._is_prompt_learning:
            return self._prompt_learning.active_adapter
        return self.base_model.active_adapter

    @property
    def active_adapters(self) -> list[str]:
        if self._is_prompt_learning:
            return [self._prompt_learning.active_adapter]
        return self.base_model.active_adapters

    @property
    def active_peft_config(self) -> PeftConfig:
        return self.peft_config[self.active_adapters[0]]

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def get_base_model(self) -> nn.Module:
        """The original model (with adapter layers still inside it)."""
        return self.base_model if self._is_prompt_learning else self.base_model.model

    def _track_modules_to_save(self, config: PeftConfig) -> None:
        names = getattr(config, "modules_to_save", None)
        if names:
            self.modules_to_save = (self.modules_to_save or set()) | set(names)

    # ----- adapters -----
    def add_adapter(
        self,
        adapter_name: str,
        peft_config: PeftConfig,
        low_cpu_mem_usage: bool = False,
        autocast_adapter_dtype: bool = True,
    ) -> None:
        """Add another adapter (it does not become active; use `set_adapter`)."""
        _validate_adapter_name(adapter_name)
        if adapter_name in self.peft_config:
            raise ValueError(
                f"An adapter named '{adapter_name}' already exists; delete it first or choose another name."
            )
        self._check_adapter_type(peft_config)
        self._prepare_config_for_task(peft_config)
        if self._is_prompt_learning:
            add_prompt_adapter(self, adapter_name, peft_config)
            self._track_modules_to_save(peft_config)
            return
        self.peft_config[adapter_name] = peft_config
        try:
            self.base_model.inject_adapter(
                self.base_model.model,
                adapter_name,
                autocast_adapter_dtype=autocast_adapter_dtype,
                low_cpu_mem_usage=low_cpu_mem_usage,
            )
        except Exception:
            if adapter_name in self.peft_config:
                del self.peft_config[adapter_name]
            raise
        self._track_modules_to_save(peft_config)

    def _check_adapter_type(self, peft_config: PeftConfig) -> None:
        """A PeftModel holds adapters of one method (PeftMixedModel relaxes this)."""
        if peft_config.peft_type != self.peft_type:
            raise ValueError(
                f"Cannot combine adapters with different peft types ({self.peft_type.value} and "
                f"{peft_config.peft_type.value}) in one PeftModel; use get_peft_model(..., mixed=True)."
            )

    def _prepare_config_for_task(self, peft_config: PeftConfig) -> None:
        """Task classes amend a config before injection (e.g. add the classifier to modules_to_save)."""

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Make `adapter_name` the active adapter (only it is trainable, unless `inference_mode`)."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        missing = [n for n in names if n not in self.peft_config]
        if missing:
            raise ValueError(
                f"Adapter {missing[0]} not found; available adapters: {sorted(self.peft_config)}."
            )
        if self._is_prompt_learning:
            if len(names) != 1:
                raise ValueError(f"A prompt-learning model has one active adapter at a time, got {names}.")
            set_prompt_adapter(self, names[0])
            return
        frozen = inference_mode or any(self.peft_config[n].inference_mode for n in names)
        self.base_model.set_adapter(adapter_name, inference_mode=frozen)

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete an adapter; if it was active, another one becomes active."""
        if self._is_prompt_learning:
            delete_prompt_adapter(self, adapter_name)
            return
        self.base_model.delete_adapter(adapter_name)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Context manager in which the model computes the base model's outputs."""
        if self._is_prompt_learning:
            self._prompt_learning.disabled = True
            try:
                yield
            finally:
                self._prompt_learning.disabled = False
            return
        # Leave the layers as the block found them: all disabled stays disabled. A mix of enabled and
        # disabled layers is most likely a mistake; as in PEFT, it warns and every layer is enabled after.
        states = self._layers_disabled_states()
        if states == {True, False}:
            warnings.warn(
                "The model contains some adapter layers that are enabled and others that are disabled. This is "
                "most likely unintentional. After exiting the disable_adapter context, all adapters will be "
                "enabled.",
                PeftWarning,
            )
        self.base_model.disable_adapter_layers()
        try:
            yield
        finally:
            if states != {True}:
                self.base_model.enable_adapter_layers()

    def _layers_disabled_states(self) -> set[bool]:
        """The set of `disable_adapters` flags over the adapter layers ({True, False} when they differ)."""
        tuner = self.base_model
        if not isinstance(tuner, BaseTuner):  # adaption prompt swaps its modules in and out as a whole
            return {not tuner._enabled}
        return {layer.disable_adapters for layer in tuner._tuner_layers(tuner.model)}

    def _refuse_for_prompt_learning(self, method: str) -> None:
        if self._is_prompt_learning:
            raise ValueError(
                f"{method}() does not apply to prompt-learning adapters ({self.peft_type.value}): they add virtual "
                "tokens and change no weight. Use get_base_model() for the model without them."
            )

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        self._refuse_for_prompt_learning("merge_adapter")
        self.base_model.merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        self._refuse_for_prompt_learning("unmerge_adapter")
        self.base_model.unmerge_adapter()

    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names: list[str] | None = None
    ) -> nn.Module:
        """Merge the adapters into the base weights and return the base model without adapter layers."""
        self._refuse_for_prompt_learning("merge_and_unload")
        return self.base_model.merge_and_unload(
            progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )

    def unload(self) -> nn.Module:
        """Return the base model without adapter layers, nothing merged."""
        self._refuse_for_prompt_learning("unload")
        return self.base_model.unload()

    # ----- prompt learning -----
    def get_prompt(
        self, batch_size: int, task_ids: torch.Tensor | None = None, max_cache_len: int | None = None
    ) -> Any:
        """The active prompt-learning adapter's virtual tokens for a batch (prefix tuning: a `Cache`)."""
        if max_cache_len is not None:
            raise NotImplementedError("max_cache_len (static-cache prefixes) is not implemented in peftkit.")
        return get_prompt(self, batch_size, task_ids=task_ids)

    def get_prompt_embedding_to_save(self, adapter_name: str) -> torch.Tensor:
        """What is saved as `prompt_embeddings` for prompt-learning adapter `adapter_name`."""
        return get_prompt_embedding_to_save(self, adapter_name)

    # ----- parameters -----
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts; 4-bit packed parameters count as their unpacked size."""
        trainable = total = 0
        for _, param in self.named_parameters():
            count = param.numel()
            if count == 0 and hasattr(param, "ds_numel"):
                count = param.ds_numel
            if param.__class__.__name__ == "Params4bit":  # two 4-bit values per byte of storage
                count *= 2 * param.element_size()
            total += count
            if param.requires_grad:
                trainable += count
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )

    def set_requires_grad(self, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
        """Turn gradients on or off for the tensors of `adapter_names` (in the adapter layers and their
        `modules_to_save` copies), leaving which adapters are active alone. Not for prompt learning."""
        if self._is_prompt_learning:
            raise TypeError(
                "Setting `requires_grad` is not supported for prompt learning methods like "
                f"{self.active_peft_config.peft_type.value}."
            )
        self.base_model.set_requires_grad(adapter_names=adapter_names, requires_grad=requires_grad)

    @property
    def has_active_enabled_adapter(self) -> bool:
        """Whether any adapter acts right now: one is active and adapters are not disabled
        (`disable_adapter()`)."""
        if self._is_prompt_learning:
            return not self._prompt_learning.disabled
        return bool(self.active_adapters) and self._layers_disabled_states() != {True}

    @property
    def base_model_torch_dtype(self) -> torch.dtype | None:
        """The dtype the base model reports (`model.dtype` of a transformers model), or None."""
        return getattr(self.base_model, "dtype", None)

    def prepare_model_for_gradient_checkpointing(self, model: nn.Module) -> nn.Module:
        """Make the input embeddings' output require grad, so that checkpointed blocks over a frozen base
        still pass gradients to the adapters (skipped for quantized models, which
        `prepare_model_for_kbit_training` prepares). Returns `model`."""
        quantized = any(
            getattr(model, flag, False) for flag in ("is_loaded_in_8bit", "is_loaded_in_4bit", "is_quantized")
        )
        if quantized:
            return model
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        elif hasattr(model, "get_input_embeddings"):
            model.get_input_embeddings().register_forward_hook(_output_requires_grad)
        return model

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        """Whether `convert_to_lora` can turn adapter `adapter_name` into a LoRA adapter (see
        `peftkit.tuners.lora.conversion`)."""
        if self._is_prompt_learning or self.peft_config[adapter_name].is_prompt_learning:
            return False
        return self.base_model.supports_lora_conversion(adapter_name)

    def get_layer_status(self):
        return get_layer_status(self)

    def get_model_status(self):
        return get_model_status(self)

    # ----- forward -----
    def _call_routed(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """`call(*args, **kwargs)` with `adapter_names=` (if given) routing each sample through its adapter,
        and a cache (`cache=` or `past_key_values=`) under the name the base model takes."""
        adapter_names = kwargs.pop("adapter_names", None)
        rename_cache_for(kwargs, self.get_base_model())
        batch = batch_size_of(*args, kwargs.get("input_ids"), kwargs.get("inputs_embeds"))
        with route_samples(self, adapter_names, batch):
            return call(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # a tuner that routes by task (Poly) is called itself, so that it receives `task_ids`
        takes_task_ids = getattr(self.base_model, "takes_task_ids", False)
        return self._call_routed(
            self.base_model if takes_task_ids else self.get_base_model(), *args, **kwargs
        )

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's `generate` (through the tuner, which may add its own steps, e.g. Poly's
        `task_ids`); `adapter_names=[...]` gives each sample its own adapter."""
        return self._call_routed(self.base_model.generate, *args, **kwargs)

    def _forward_task(self, **kwargs: Any) -> Any:
        """Call the base model with the task's named inputs, dropping the ones left as None (and
        `task_ids`, unless the tuner routes by task: `BaseTuner.takes_task_ids`)."""
        if self._is_prompt_learning:
            return prompt_learning_forward(self, **kwargs)
        if not getattr(self.base_model, "takes_task_ids", False):
            kwargs.pop("task_ids", None)
        return self._call_routed(self.base_model, **{k: v for k, v in kwargs.items() if v is not None})

    # ----- persistence (see peftkit.persistence.folders) -----
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        selected_adapters: list[str] | None = None,
        save_embedding_layers: str | bool = "auto",
        is_main_process: bool = True,
        path_initial_model_for_weight_conversion: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Write each adapter's config and weights (non-default adapters in a sub-folder of their name).

        Under FSDP2 call it on every rank: the sharded adapter tensors are gathered (a collective), then
        only the process with `is_main_process` writes.
        """
        if kwargs.get("state_dict") is None:
            gathered = gather_sharded_adapter_state_dict(self, selected_adapters, save_embedding_layers)
            if gathered is not None:
                kwargs["state_dict"] = gathered
        save_peft_model(
            self,
            save_directory,
            safe_serialization=safe_serialization,
            selected_adapters=selected_adapters,
            save_embedding_layers=save_embedding_layers,
            is_main_process=is_main_process,
            path_initial_model_for_weight_conversion=path_initial_model_for_weight_conversion,
            **kwargs,
        )

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike,
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: PeftConfig | None = None,
        autocast_adapter_dtype: bool = True,
        ephemeral_gpu_offload: bool = False,
        low_cpu_mem_usage: bool = False,
        key_mapping: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> PeftModel:
        """Load an adapter (folder or Hub id) onto `model`; the task class follows the config's task_type."""
        return load_peft_model(
            cls._class_for_config,
            model,
            model_id,
            adapter_name=adapter_name,
            is_trainable=is_trainable,
            config=config,
            autocast_adapter_dtype=autocast_adapter_dtype,
            ephemeral_gpu_offload=ephemeral_gpu_offload,
            low_cpu_mem_usage=low_cpu_mem_usage,
            key_mapping=key_mapping,
            **kwargs,
        )

    @classmethod
    def _class_for_config(cls, config: PeftConfig) -> type[PeftModel]:
        """The class `from_pretrained` builds: PeftModel itself picks the task class of `config.task_type`."""
        if cls is PeftModel:
            return MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(config.task_type, cls)
        return cls

    def load_adapter(
        self,
        model_id: str | os.PathLike,
        adapter_name: str,
        is_trainable: bool = False,
        torch_device: str | None = None,
        autocast_adapter_dtype: bool = True,
        ephemeral_gpu_offload: bool = False,
        low_cpu_mem_usage: bool = False,
        key_mapping: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Load a further adapter from a folder or Hub id; returns the missing/unexpected keys."""
        return load_adapter_into(
            self,
            model_id,
            adapter_name,
            is_trainable=is_trainable,
            torch_device=torch_device,
            autocast_adapter_dtype=autocast_adapter_dtype,
            low_cpu_mem_usage=low_cpu_mem_usage,
            key_mapping=key_mapping,
            **kwargs,
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
        **save_kwargs: Any,
    ) -> str:
        """Save the adapters to a temporary folder and upload it to the Hub repo `repo_id`.

        Returns the commit URL. `save_kwargs` (e.g. `selected_adapters`, `safe_serialization`) go to
        `save_pretrained`; `tags` are added to the model card.
        """
        return push_peft_model_to_hub(
            self,
            repo_id,
            commit_message=commit_message,
            commit_description=commit_description,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
            max_shard_size=max_shard_size,
            tags=tags,
            **save_kwargs,
        )

    def create_or_update_model_card(self, output_dir: str) -> None:
        write_model_card(self, output_dir)


class PeftModelForCausalLM(PeftModel):
    """A causal language model with adapters; `generate` honours `adapter_names=` per sample."""

    _prompt_task = TaskType.CAUSAL_LM

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        task_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        return self._forward_task(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            labels=labels,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            task_ids=task_ids,
            **kwargs,
        )

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        if self._is_prompt_learning:
            generate = seq2seq_generate if isinstance(self, PeftModelForSeq2SeqLM) else causal_lm_generate
            return generate(self, *args, **kwargs)
        return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> Any:
        return self.get_base_model().prepare_inputs_for_generation(*args, **kwargs)

    @property
    def base_model_prepare_inputs_for_generation(self) -> Any:
        """The base model's own `prepare_inputs_for_generation` (peft keeps it under this name)."""
        return self.get_base_model().prepare_inputs_for_generation


class PeftModelForSeq2SeqLM(PeftModelForCausalLM):
    """An encoder-decoder model with adapters."""

    _prompt_task = TaskType.SEQ_2_SEQ_LM

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        task_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        return self._forward_task(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            decoder_inputs_embeds=decoder_inputs_embeds,
            labels=labels,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            task_ids=task_ids,
            **kwargs,
        )


class _WithTrainedHead(PeftModel):
    """Task classes whose new head (classifier, QA outputs) is trained and saved with the adapter."""

    head_module_names: tuple[str, ...] = ()

    def __init__(
        self, model: nn.Module, peft_config: PeftConfig, adapter_name: str = "default", **kwargs: Any
    ) -> None:
        self._amend_modules_to_save(peft_config)
        super().__init__(model, peft_config, adapter_name, **kwargs)

    def _amend_modules_to_save(self, peft_config: PeftConfig) -> None:
        if not hasattr(peft_config, "modules_to_save"):
            return
        if peft_config.modules_to_save is None:
            peft_config.modules_to_save = list(self.head_module_names)
        else:
            peft_config.modules_to_save = list(peft_config.modules_to_save) + [
                n for n in self.head_module_names if n not in peft_config.modules_to_save
            ]

    def _prepare_config_for_task(self, peft_config: PeftConfig) -> None:
        self._amend_modules_to_save(peft_config)


class PeftModelForSequenceClassification(_WithTrainedHead):
    """A sequence classifier with adapters; the classifier head (`classifier`/`score`) trains too."""

    _prompt_task = TaskType.SEQ_CLS

    head_module_names = ("classifier", "score")

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        task_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        return self._forward_task(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            labels=labels,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            task_ids=task_ids,
            **kwargs,
        )


class PeftModelForTokenClassification(PeftModelForSequenceClassification):
    """A token classifier with adapters; the classifier head trains too."""

    _prompt_task = TaskType.TOKEN_CLS


class PeftModelForQuestionAnswering(_WithTrainedHead):
    """An extractive QA model with adapters; `qa_outputs` trains too."""

    _prompt_task = TaskType.QUESTION_ANS

    head_module_names = ("qa_outputs",)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        task_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        return self._forward_task(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            start_positions=start_positions,
            end_positions=end_positions,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            task_ids=task_ids,
            **kwargs,
        )


class PeftModelForFeatureExtraction(PeftModel):
    """An encoder used for embeddings, with adapters."""

    _prompt_task = TaskType.FEATURE_EXTRACTION

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        task_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        return self._forward_task(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            task_ids=task_ids,
            **kwargs,
        )


MODEL_TYPE_TO_PEFT_MODEL_MAPPING: dict[TaskType, type[PeftModel]] = {
    TaskType.SEQ_CLS: PeftModelForSequenceClassification,
    TaskType.SEQ_2_SEQ_LM: PeftModelForSeq2SeqLM,
    TaskType.CAUSAL_LM: PeftModelForCausalLM,
    TaskType.TOKEN_CLS: PeftModelForTokenClassification,
    TaskType.QUESTION_ANS: PeftModelForQuestionAnswering,
    TaskType.FEATURE_EXTRACTION: PeftModelForFeatureExtraction,
}
