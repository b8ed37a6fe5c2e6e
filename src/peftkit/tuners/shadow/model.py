"""ShadowModel: the ShadowPEFT tuner. It wraps decoder blocks in `ShadowLayer`s, owns each adapter's
shadow backbone, projection and head, and threads the shadow state through the decoder loop.

One forward pass: a pre-hook on the model runs the active adapter's shadow backbone on the inputs and
projects its output to the base width (`s0`); a pre-hook on the first wrapped block pairs the block input
with `s0` in a `ShadowCarrier`; each wrapped block injects and advances the state; a hook on the last one
hands the decoder loop its plain hidden states again. With a cache, the backbone's own cache travels
beside the base model's in a `ShadowCache`. With labels, `forward` adds the backbone's own task loss
(`auxiliary_loss_weight`), computed on `s0`, which is what `unload_shadow()` runs standalone.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn

from ...utils.peft_types import TaskType
from ..tuners_utils import BaseTuner
from .backbone import (
    build_mirror_backbone,
    check_not_diffusion,
    decoder_block_names,
    freeze_embeddings,
    hidden_size,
    load_backbone,
    remove_embed_tokens,
)
from .config import ShadowConfig
from .layers import ShadowLayer
from .standalone import (
    detached_shadow_model_class,
    pool_last_token,
    sequence_classification_loss,
    shifted_lm_loss,
)
from .trajectory import ShadowTrajectory

_TUNER_CONTAINERS = ("shadow_backbone", "shadow_projection", "shadow_head")
# every container keyed by adapter name; files hold their keys with the name "default", whatever it is
_ADAPTER_CONTAINERS = (*_TUNER_CONTAINERS, *ShadowLayer.adapter_layer_names)
_NOT_MERGEABLE = (
    "ShadowPEFT cannot be merged into the base model: the adaptation is an input-dependent, layer-space "
    "trajectory, not a static weight-space delta. Use `unload()` to recover the plain base model, or "
    "`unload_shadow()` for a standalone shadow model."
)


def check_consecutive(names: list[str]) -> None:
    """The wrapped blocks are consecutive entries of one block list (the shadow state rides the decoder
    loop from the first to the last); names that are not list entries are left to the user."""
    parts = [name.rpartition(".") for name in names]
    if not parts or not all(index.isdigit() for _, _, index in parts):
        return
    lists = sorted({parent for parent, _, _ in parts})
    indices = sorted(int(index) for _, _, index in parts)
    gaps = sorted(set(range(indices[0], indices[-1] + 1)) - set(indices))
    if len(lists) > 1 or gaps:
        raise ValueError(
            f"ShadowPEFT wraps consecutive decoder blocks of one block list, but target_modules selects {names}"
            + (f", which leaves out blocks {gaps}" if gaps else f" from several lists {lists}")
            + ". Target a consecutive run of blocks (or leave target_modules unset: every block)."
        )


class ShadowModel(ShadowTrajectory, BaseTuner):
    """ShadowPEFT: a small trainable shadow network beside a frozen decoder (see `ShadowConfig`).

    Not mergeable; `unload_shadow()` returns the shadow network as a standalone model. One adapter is
    active at a time.

    Example:
        >>> from peftkit import ShadowConfig, get_peft_model
        >>> model = get_peft_model(model, ShadowConfig(task_type="CAUSAL_LM", r=8))
    """

    prefix = "shadow_"
    tuner_layer_cls = ShadowLayer
    layer_classes = {nn.Module: ShadowLayer}  # whole decoder blocks, whatever their class

    # ----- setup -----
    def _ensure_shadow_state(self) -> None:
        """The tuner-level containers and per-forward bookkeeping (created with the first adapter)."""
        if "shadow_backbone" in self._modules:
            return
        for name in _TUNER_CONTAINERS:
            setattr(self, name, nn.ModuleDict({}))
        self._hook_handles: list[Any] = []
        self._boundary_layers: list[ShadowLayer] = []  # a plain list: they are registered under the model
        self._seed_shadow_state: torch.Tensor | None = None  # s0 of the last forward (the auxiliary loss)
        self._pending_seed: torch.Tensor | None = None  # s0 not yet handed to the first wrapped block
        self._shadow_past_out: Any = None
        self._should_pack_shadow_cache = False
        self._shadow_share_embeddings: dict[str, bool] = {}
        self._shadow_head_is_lm: dict[str, bool] = {}
        self.last_shadow_loss: torch.Tensor | None = None

    def _prepare_adapter_config(self, config: ShadowConfig, model_config: dict) -> ShadowConfig:
        check_not_diffusion(self.model)
        if config.target_modules is None:  # every decoder block: consecutive, as the carrier needs
            config.target_modules = decoder_block_names(self.model)
        return config

    def _check_new_adapter_config(self, config: ShadowConfig) -> None:
        super()._check_new_adapter_config(config)
        if len(self.peft_config) > 1 and any(
            c.task_type == TaskType.SEQ_CLS for c in self.peft_config.values()
        ):
            raise ValueError(
                "ShadowPEFT does not support multiple adapters when any adapter uses sequence classification because "
                "the sequence classification adapter requires both a classifier in `modules_to_save` and a separate "
                "`shadow_head`."
            )

    def _pre_injection_hook(
        self, model: nn.Module, config: ShadowConfig, adapter_name: str, matched: list[str]
    ) -> None:
        self._ensure_shadow_state()
        check_consecutive(sorted(matched))
        if adapter_name not in self.shadow_backbone:
            self._init_shadow_backbone(adapter_name, config)

    def _layer_kwargs(self, config: ShadowConfig, key: str) -> dict[str, Any]:
        return {"config": config, "hidden_size": hidden_size(self.model.config)}

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        self._sync_shadow_module_trainability()
        self._register_boundary_hooks()

    # ----- the shadow backbone, projection and head of an adapter -----
    def _init_shadow_backbone(self, adapter_name: str, config: ShadowConfig) -> None:
        mirror = config.shadow_model == "mirror"
        if mirror:
            backbone, projection = build_mirror_backbone(self.model, config), None
        else:
            backbone, projection = load_backbone(config.shadow_model)
        base_hidden, shadow_hidden = hidden_size(self.model.config), hidden_size(backbone.config)
        if projection is not None:
            if (projection.in_features, projection.out_features) != (shadow_hidden, base_hidden):
                raise ValueError(
                    f"The loaded shadow projection maps {projection.in_features}->{projection.out_features}, but "
                    f"the shadow/base hidden sizes are {shadow_hidden}/{base_hidden}."
                )
        elif shadow_hidden != base_hidden:
            projection = nn.Linear(shadow_hidden, base_hidden, bias=False)
        else:
            projection = nn.Identity()
        try:
            takes_embeds = "inputs_embeds" in inspect.signature(backbone.forward).parameters
        except (TypeError, ValueError):
            takes_embeds = False
        # the frozen base embeddings feed the backbone only where the widths agree (a full-width mirror)
        share = config.share_embeddings and mirror and takes_embeds and shadow_hidden == base_hidden
        if share:
            remove_embed_tokens(backbone)
        head, head_is_lm = self._build_shadow_head(config)
        self.shadow_backbone[adapter_name] = backbone
        self.shadow_projection[adapter_name] = projection
        if head is not None:
            self.shadow_head[adapter_name] = head
        self._shadow_share_embeddings[adapter_name] = share
        self._shadow_head_is_lm[adapter_name] = head_is_lm
        base_param = next(self.model.parameters(), None)
        if base_param is not None:  # the base model's device and dtype (often fp16/bf16)
            for module in (backbone, projection, head):
                if module is not None:
                    module.to(device=base_param.device, dtype=base_param.dtype)

    def _build_shadow_head(self, config: ShadowConfig) -> tuple[nn.Module | None, bool]:
        """(head, head_is_lm): a causal LM reuses the base model's output head at loss time; a sequence
        classifier gets a trained copy of its classifier; other tasks have no auxiliary loss."""
        if config.task_type == TaskType.CAUSAL_LM:
            return None, True
        if config.task_type == TaskType.SEQ_CLS:
            for name in ("score", "classifier"):
                candidate = getattr(self.model, name, None)
                if isinstance(candidate, nn.Module):
                    return copy.deepcopy(candidate), False
        return None, False

    def _resolve_shadow_head(self, adapter_name: str) -> nn.Module | None:
        if adapter_name in self.shadow_head:
            return self.shadow_head[adapter_name]
        if self._shadow_head_is_lm.get(adapter_name, False):
            return self.model.get_output_embeddings()
        return None

    # ----- trainability -----
    def _sync_shadow_module_trainability(self, inference_mode: bool = False) -> None:
        """The tuner-level modules train for the active adapter only (and never in inference mode): the
        framework's bookkeeping covers the layers inside the model, not these."""
        for container in (self.shadow_backbone, self.shadow_projection, self.shadow_head):
            for name, module in container.items():
                frozen = inference_mode or self.peft_config[name].inference_mode
                module.requires_grad_(name in self.active_adapters and not frozen)
        for name, backbone in self.shadow_backbone.items():
            if self.peft_config[name].shadow_model != "mirror":
                freeze_embeddings(backbone)  # a pretrained table is large: fine-tuning it is not efficient

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) != 1:
            raise ValueError(
                f"ShadowPEFT requires exactly one active adapter, but got {len(names)} adapters."
            )
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        self._sync_shadow_module_trainability(inference_mode=inference_mode)
        if "shadow_backbone" in self._modules:  # not before the first adapter exists
            self._register_boundary_hooks()

    # ----- forward and the auxiliary loss -----
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The model's output; with `labels`, its loss plus `auxiliary_loss_weight` times the shadow
        backbone's own loss (also kept, detached, as `output.shadow_loss` and `self.last_shadow_loss`)."""
        labels = kwargs.get("labels")
        output = self.model(*args, **kwargs)  # called, not .forward: the boundary hooks must run
        self.last_shadow_loss = None
        if labels is not None and getattr(output, "loss", None) is not None and self._shadow_path_active():
            shadow_loss = self.shadow_auxiliary_loss(labels, attention_mask=kwargs.get("attention_mask"))
            if shadow_loss is not None:
                self.last_shadow_loss = shadow_loss.detach()
                output.shadow_loss = self.last_shadow_loss
                weight = self.peft_config[self.active_adapters[0]].auxiliary_loss_weight
                if weight > 0:
                    output.loss = output.loss + weight * shadow_loss
        return output

    def shadow_auxiliary_loss(
        self, labels: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The shadow path's own task loss on s0 of the last forward (unweighted): next-token cross entropy
        through the LM head, or the classification loss of the copied classifier on the last token."""
        adapter_name = self.active_adapters[0]
        state, head = self._seed_shadow_state, self._resolve_shadow_head(adapter_name)
        if state is None or head is None:
            return None
        if self._shadow_head_is_lm.get(adapter_name, False):
            return shifted_lm_loss(head(state), labels)
        return sequence_classification_loss(head(pool_last_token(state, attention_mask)), labels)

    # ----- adapters, merging, unloading -----
    def _drop_shadow_modules(self, adapter_name: str) -> None:
        for name in _TUNER_CONTAINERS:
            container = self._modules.get(name)
            if container is not None and adapter_name in container:
                del container[adapter_name]
        for bookkeeping in ("_shadow_share_embeddings", "_shadow_head_is_lm"):
            getattr(self, bookkeeping, {}).pop(adapter_name, None)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._drop_shadow_modules(adapter_name)
        self._sync_shadow_module_trainability()
        self._register_boundary_hooks()  # the blocks it wrapped may be plain blocks again

    def _remove_partial_adapter(self, model: nn.Module, adapter_name: str) -> None:
        super()._remove_partial_adapter(model, adapter_name)
        if "shadow_backbone" in self._modules:
            self._drop_shadow_modules(adapter_name)
            self._register_boundary_hooks()

    def _tuner_state_keys(self, adapter_name: str) -> dict[str, str]:
        """Every key of the adapter's containers, with the adapter name written as "default" (peft's file
        format for ShadowPEFT, whatever the adapter is called)."""
        keys = {}
        for key in self.state_dict():
            for container in _ADAPTER_CONTAINERS:
                marker = f"{container}.{adapter_name}."
                if marker in key:
                    keys[key] = key.replace(marker, f"{container}.default.")
                    break
        return keys

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        raise NotImplementedError(_NOT_MERGEABLE)

    def _unload_and_optionally_merge(self, merge: bool, *args: Any, **kwargs: Any) -> nn.Module:
        if merge:
            raise NotImplementedError(_NOT_MERGEABLE)
        self._remove_boundary_hooks()
        return super()._unload_and_optionally_merge(merge, *args, **kwargs)

    def unload_shadow(self, adapter_name: str | None = None, copy: bool = False) -> nn.Module:
        """The shadow network of `adapter_name` (default: the active one) as a standalone model,
        `head(projection(backbone(x)))`, without the base model: a causal LM (with `generate()`) or a
        sequence classifier, as the adapter's task. `copy=False` shares the modules with this model;
        `copy=True` copies them (and attaches a private copy of shared base embeddings, so that
        `save_pretrained` writes a complete checkpoint)."""
        adapter_name = adapter_name or self.active_adapters[0]
        if adapter_name not in self.shadow_backbone:
            raise ValueError(f"No shadow backbone found for adapter '{adapter_name}'.")
        take = _copy_module if copy else (lambda module: module)
        backbone = take(self.shadow_backbone[adapter_name])
        projection = take(self.shadow_projection[adapter_name])
        head = self._resolve_shadow_head(adapter_name)
        head = take(head) if head is not None else None
        shared_embeddings = None
        if self._shadow_share_embeddings.get(adapter_name, False):
            if copy:
                backbone.embed_tokens = _copy_module(self.model.get_input_embeddings())
            else:
                shared_embeddings = self.model.get_input_embeddings()
        return detached_shadow_model_class()(
            backbone,
            projection,
            head,
            is_classification=self.peft_config[adapter_name].task_type == TaskType.SEQ_CLS,
            input_embeddings=shared_embeddings,
        )


def _copy_module(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module)
