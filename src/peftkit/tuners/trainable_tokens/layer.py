"""TrainableTokensLayer: an embedding (or tied output projection) with some rows replaced by trained ones.

With `E` the weight (num_tokens, dim) and `D` the trained rows for the token ids `idx`:

    E' = E with E'[idx] = D
    Embedding: y = E'[x]          Linear (output head, y = h E^T + b): y = h E'^T + b

so only the positions whose token id is in `idx` (Embedding), or only the logits of `idx` (Linear),
change. Merging writes `D` into `E[idx]`; unmerging writes the saved original rows back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._buffer_dict import BufferDict
from ..tuners_utils import BaseTunerLayer


class TrainableTokensLayer(BaseTunerLayer, nn.Module):
    """Trains rows `token_indices[adapter]` of an `nn.Embedding` (or of a tied `nn.Linear` output head).

    `tied_adapter`: the layer of the input embedding whose rows this output head shares (tied weights);
    the trained rows are then the same `nn.ParameterDict` (saved once, under the embedding).
    """

    adapter_layer_names = ("trainable_tokens_delta",)
    other_param_names = ("token_indices", "trainable_tokens_original")
    lora_conversion_refusal = (
        "trainable tokens replace rows of the embedding, which a LoRA adapter file does not hold (as in peft)"
    )

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        token_indices: list[int],
        tied_adapter: TrainableTokensLayer | None = None,
        init_weights: bool = True,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        self._init_tuner_layer(base_layer)
        if not isinstance(base_layer, (nn.Embedding, nn.Linear)):
            raise TypeError(
                f"Trainable tokens work on nn.Embedding (or a tied nn.Linear output head), not on "
                f"{type(base_layer).__name__}; target the model's embedding layer."
            )
        self._tied_adapter = [tied_adapter] if tied_adapter is not None else []  # a list: not a submodule
        self.trainable_tokens_delta = (
            tied_adapter.trainable_tokens_delta if tied_adapter is not None else nn.ParameterDict({})
        )
        self.trainable_tokens_original = BufferDict()
        self.token_indices: dict[str, list[int]] = {}
        self.kwargs = kwargs
        self._active_adapter = adapter_name
        self.update_layer(
            adapter_name, token_indices, init_weights=init_weights, inference_mode=inference_mode
        )

    @property
    def tied_adapter(self) -> TrainableTokensLayer | None:
        return self._tied_adapter[0] if self._tied_adapter else None

    def update_layer(
        self,
        adapter_name: str,
        token_indices: list[int],
        init_weights: bool = True,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create the trained rows of `adapter_name` (the current rows, or random with init_weights=False)."""
        indices = [int(i) for i in token_indices]
        weight = self.get_base_layer().weight
        num_rows = weight.shape[0]
        bad = [i for i in indices if not 0 <= i < num_rows]
        if bad or len(set(indices)) != len(indices):
            raise ValueError(
                f"Trainable token indices must be distinct token ids in [0, {num_rows}); got {token_indices}."
            )
        self.token_indices[adapter_name] = indices
        rows = weight.detach()[indices].clone()
        self.trainable_tokens_original[adapter_name] = rows.clone()
        if self.tied_adapter is None:
            if weight.is_meta:
                values = torch.empty(rows.shape, dtype=rows.dtype, device="meta")
            else:
                values = rows if init_weights else torch.randn_like(rows)
            self.trainable_tokens_delta[adapter_name] = nn.Parameter(values)
        self._mark_new_adapter_trainable(adapter_name, inference_mode)

    # ----- forward -----
    def _check_disjoint(self, names: list[str]) -> None:
        seen: set[int] = set()
        for name in names:
            indices = set(self.token_indices[name])
            if indices & seen:
                raise ValueError(
                    f"Token indices of adapter {name} are already defined and would result in undefined merging "
                    "behavior. Only disjunct token indices are currently supported."
                )
            seen |= indices

    def _forward_with(self, active: list[str], x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_disjoint(active)
        return super()._forward_with(active, x, *args, **kwargs)

    def _apply_adapter(
        self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        rows = self.trainable_tokens_delta[adapter_name]
        indices = torch.tensor(self.token_indices[adapter_name], device=result.device)
        base = self.get_base_layer()
        if isinstance(base, nn.Embedding):
            lookup = torch.full((base.num_embeddings,), -1, dtype=torch.long, device=x.device)
            lookup[indices.to(x.device)] = torch.arange(len(indices), device=x.device)
            position = lookup[x]
            hit = (position >= 0).unsqueeze(-1)
            if (
                base.max_norm is not None
            ):  # keep the embedding's renormalisation: look the rows up the same way
                new = F.embedding(
                    position.clamp_min(0), rows, max_norm=base.max_norm, norm_type=base.norm_type
                )
            else:
                new = rows[position.clamp_min(0)]
            return torch.where(hit, new.to(result.dtype), result)
        logits = F.linear(self._cast_input_dtype(x, rows.dtype), rows)
        if base.bias is not None:
            logits = logits + base.bias[indices].to(logits.dtype)
        return result.index_copy(-1, indices, logits.to(result.dtype))

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        return self._apply_adapter(adapter_name, x, base_result, base_result) - base_result

    # ----- merging -----
    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The change of the weight: trained minus original rows at `token_indices`, zero elsewhere."""
        weight = self.get_base_layer().weight
        delta = torch.zeros_like(weight, dtype=torch.float32)
        rows = (
            self.trainable_tokens_delta[adapter_name].float()
            - self.trainable_tokens_original[adapter_name].float()
        )
        return delta.index_copy(0, self._index(adapter_name, weight.device), rows)

    def _index(self, adapter_name: str, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.token_indices[adapter_name], device=device)

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        rows = self.trainable_tokens_delta[adapter_name].detach().to(weight.dtype)
        return weight.index_copy(0, self._index(adapter_name, weight.device), rows)

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        rows = self.trainable_tokens_original[adapter_name].to(weight.dtype)
        return weight.index_copy(0, self._index(adapter_name, weight.device), rows)

    def __repr__(self) -> str:
        return "trainable_tokens." + super().__repr__()
