"""The shadow network on its own (`ShadowModel.unload_shadow`): `head(projection(backbone(x)))`.

The per-block injection and update need the base model's hidden states, so they do not exist standalone;
the shadow backbone with its projection and task head does, and the auxiliary loss trains exactly it.
`DetachedShadowModel` is a transformers `PreTrainedModel` (so it can `generate()` and be saved); that
base class needs transformers, which `import peftkit` does not load, so the class is built on first use
(`detached_shadow_model_class()`; `peftkit.tuners.shadow.DetachedShadowModel` reads it).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...utils.cache_names import output_cache

# generation passes these to a causal LM; the backbone (a base model) takes no such arguments
_CAUSAL_LM_ONLY_KWARGS = ("logits_to_keep", "num_logits_to_keep")


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' sequence-classification loss: regression (1 label), single-label (integer labels)
    or multi-label (float labels)."""
    num_labels = logits.shape[-1]
    if num_labels == 1:
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
    if labels.dtype in (torch.long, torch.int):
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels)


def shifted_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy (labels -100 ignored)."""
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    return F.cross_entropy(
        shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1), ignore_index=-100
    )


def pool_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The hidden state of each sequence's last non-padding token (left or right padding)."""
    if attention_mask is None:
        return hidden[:, -1, :]
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    last = (attention_mask.ne(0) * positions).argmax(dim=-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@functools.cache
def detached_shadow_model_class() -> type:
    """The `DetachedShadowModel` class (a transformers `PreTrainedModel` with `GenerationMixin`), built once."""
    from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutput

    class DetachedShadowModel(PreTrainedModel, GenerationMixin):
        """A standalone shadow network (backbone + projection + head), detached from the base model.

        A causal-LM head gives `CausalLMOutputWithPast` and `generate()`; a classification head pools the
        last token and gives `SequenceClassifierOutput`; no head gives the projected hidden states. With
        `input_embeddings` (the base model's table, shared, not a submodule: `save_pretrained` leaves it
        out) the backbone runs from `inputs_embeds`; `unload_shadow(copy=True)` attaches a private copy.
        """

        main_input_name = "input_ids"
        base_model_prefix = "backbone"
        _supports_cache_class = True
        # attention runs inside the wrapped backbone; the wrapper accepts whatever it was built with
        _supports_sdpa = True
        _supports_flash_attn = True
        _supports_flash_attn_2 = True
        _supports_flex_attn = True
        _supports_attention_backend = True

        def __init__(
            self,
            backbone: nn.Module,
            projection: nn.Module | None = None,
            head: nn.Module | None = None,
            is_classification: bool = False,
            input_embeddings: nn.Module | None = None,
        ) -> None:
            super().__init__(backbone.config)
            self.backbone = backbone
            self.shadow_hidden_projection = projection if projection is not None else nn.Identity()
            self.head = head
            self.is_classification = is_classification
            self._shared_input_embeddings: list[nn.Module | None] = [input_embeddings]  # not a submodule
            generation_config = getattr(backbone, "generation_config", None)
            self.generation_config = generation_config or GenerationConfig.from_model_config(self.config)

        def can_generate(self) -> bool:
            # PreTrainedModel.__init__ asks before the attributes exist
            return getattr(self, "head", None) is not None and not getattr(self, "is_classification", False)

        def get_input_embeddings(self) -> nn.Module:
            shared = self._shared_input_embeddings[0]
            return shared if shared is not None else self.backbone.get_input_embeddings()

        def set_input_embeddings(self, value: nn.Module) -> None:
            if self._shared_input_embeddings[0] is not None:
                self._shared_input_embeddings[0] = value
            else:
                self.backbone.set_input_embeddings(value)

        def get_output_embeddings(self) -> nn.Module | None:
            return None if getattr(self, "is_classification", False) else self.head

        def forward(
            self,
            input_ids: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None,
            labels: torch.Tensor | None = None,
            **kwargs: Any,
        ) -> Any:
            for key in _CAUSAL_LM_ONLY_KWARGS:
                kwargs.pop(key, None)
            kwargs["return_dict"] = True
            if self._shared_input_embeddings[0] is not None and kwargs.get("inputs_embeds") is None:
                if input_ids is None:
                    raise ValueError("Either `input_ids` or `inputs_embeds` must be provided.")
                kwargs["inputs_embeds"] = self.get_input_embeddings()(input_ids)
                input_ids = None
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            hidden = self.shadow_hidden_projection(out.last_hidden_state)
            if self.head is None:
                return hidden
            if self.is_classification:
                logits = self.head(pool_last_token(hidden, attention_mask))
                loss = None if labels is None else sequence_classification_loss(logits, labels)
                return SequenceClassifierOutput(loss=loss, logits=logits)
            logits = self.head(hidden)
            loss = None if labels is None else shifted_lm_loss(logits, labels)
            output = CausalLMOutputWithPast(loss=loss, logits=logits)
            cache = output_cache(out)
            if cache is not None:  # under the field name this transformers uses (`cache` / `past_key_values`)
                output[_cache_field(CausalLMOutputWithPast)] = cache
            return output

    DetachedShadowModel.__module__, DetachedShadowModel.__qualname__ = __name__, "DetachedShadowModel"
    return DetachedShadowModel


def _cache_field(output_cls: type) -> str:
    fields = getattr(output_cls, "__dataclass_fields__", {})
    return "cache" if "cache" in fields else "past_key_values"


def __getattr__(name: str) -> Any:
    # `DetachedShadowModel` as a module attribute too (its __module__ / __qualname__ name it here, for pickling)
    if name == "DetachedShadowModel":
        return detached_shadow_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
