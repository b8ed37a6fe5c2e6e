"""The seam for LoRA variants: how one adapter on one layer departs from plain LoRA.

A layer holds at most one variant per adapter, in `layer.lora_variant[adapter_name]`; an adapter without
one is plain LoRA (`y = base(x) + s * B(A(dropout(x)))`) and may take the fast paths (`fast_paths.py`).
A variant is a small object (it may keep per-adapter state, e.g. aLoRA's activation context) whose hooks
receive the layer and the adapter's name:

    init(layer, name, inference_mode)           once, when attached: add parameters, swap factors
    delta_weight(layer, name) -> dW             the change to the base weight (what merging adds)
    merged_weight(layer, name, W) -> W'         the base weight with the adapter folded in (fp32)
    unmerged_weight(layer, name, W') -> W       its inverse
    forward(layer, name, x, result, base_result) -> y   the layer output with the adapter applied
    on_adapters_changed(layer, name)            another adapter was added to or deleted from the layer

plus the flags `supports_merge` / `supports_mixed_batch` (False: the operation is refused, and the error
names the variant by its `LoraVariant.name`) and `lora_conversion_refusal` (why `convert_to_lora` cannot write
the adapter as a plain LoRA; None when its merge is its weight change). Each hook defaults to what plain LoRA does, built from the layer's
own formula (`layer._adapter_output`, `layer._delta_weight`), so a variant overrides only what it changes.
A variant with per-adapter tensors of its own registers their container on the layer with
`add_adapter_container` (trainable ones are then placed, cast, saved and deleted with the factors), and
one that trains only some of the factors declares the others with `layer.freeze_adapter_weights`.

DoRA (`dora.py`) is chosen by `use_dora` when the adapter is created; aLoRA (`alora.py`) and bd-LoRA
(`bdlora.py`) are attached by the tuner once the adapter's layers exist; the others (VeLoRA, KaSA, MiCA,
QA-LoRA, MonteCLoRA, Arrow) are built from the config by `variant_choice.py` and handed to
`layer.update_layer(..., lora_variant=variant)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from .._tuner_layer import BaseTunerLayer

if TYPE_CHECKING:
    from .layer import LoraLayer


class LoraVariant:
    """An adapter's departure from plain LoRA on one layer; every hook defaults to plain LoRA."""

    name: str = "LoRA"  # how errors name adapters of this variant
    config_field: str = ""  # the LoraConfig field that asks for it (errors name it)
    supports_merge: bool = True
    supports_mixed_batch: bool = True  # adapter_names= batches (one pass per group of samples)
    # why `convert_to_lora` cannot write the adapter as a plain LoRA (None: its merge is its weight change)
    lora_conversion_refusal: str | None = None

    def init(self, layer: LoraLayer, adapter_name: str, inference_mode: bool = False) -> None:
        """Set the variant up on `layer`, whose factors for `adapter_name` exist and are placed."""

    def delta_weight(self, layer: LoraLayer, adapter_name: str) -> torch.Tensor:
        """The change the adapter makes to the base weight, in the base weight's layout."""
        return layer._delta_weight(adapter_name)

    def merged_weight(self, layer: LoraLayer, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        """`weight` with the adapter merged in (fp32); additive by default: `W + delta_weight`."""
        return BaseTunerLayer._merged_weight(layer, adapter_name, weight)

    def unmerged_weight(self, layer: LoraLayer, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        """Inverse of `merged_weight`."""
        return BaseTunerLayer._unmerged_weight(layer, adapter_name, weight)

    def forward(
        self,
        layer: LoraLayer,
        adapter_name: str,
        x: torch.Tensor,
        result: torch.Tensor,
        base_result: torch.Tensor,
    ) -> torch.Tensor:
        """The layer output `result` with the adapter applied for input `x` (`base_result`: see
        `BaseTunerLayer._apply_adapter`). Default: the op-by-op formula `result + s * B(A(dropout(x)))`."""
        return layer._add_adapter_output(result, layer._adapter_output(adapter_name, x, base_result))

    def on_adapters_changed(self, layer: LoraLayer, adapter_name: str) -> None:
        """Another adapter was added to `layer` or deleted from it (Arrow routes among the layer's adapters)."""


# The hooks of an adapter without a variant: plain LoRA (stateless, so one object serves every layer).
PLAIN_LORA = LoraVariant()


def add_adapter_container(
    layer: LoraLayer, attr: str, make: Callable[[], nn.Module], trainable: bool = True
) -> nn.Module:
    """The per-adapter container `layer.<attr>` (created with `make()` the first time), registered on this
    layer as one of its `adapter_layer_names` (`trainable`: its tensors train, are cast and placed with the
    factors) or of its `other_param_names` (fixed state); either way it is saved when it holds persistent
    tensors and emptied when an adapter is deleted."""
    if attr not in layer._modules:
        layer.add_module(attr, make())
    names = "adapter_layer_names" if trainable else "other_param_names"
    if attr not in getattr(layer, names):
        setattr(layer, names, (*getattr(layer, names), attr))  # this layer's own tuple, as PEFT does
    return layer._modules[attr]


def check_mergeable(layers: Iterable[LoraLayer], adapter_names: list[str]) -> None:
    """Raise before anything is merged when one of `adapter_names` has a variant that cannot be merged."""
    for layer in layers:
        for name in adapter_names:
            variant = layer.lora_variant.get(name)
            if variant is not None and not variant.supports_merge:
                raise NotImplementedError(f"{variant.name} does not support merging.")
