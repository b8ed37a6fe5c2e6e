"""SHiRA mask functions: which entries of a base weight the sparse adapter trains.

A mask function is called as `mask_fn(base_layer, r, **kwargs)` and returns a 0/1 tensor shaped like the
weight, (out_features, in_features), with exactly `r * (in_features + out_features)` ones (as many trained
values as a rank-r LoRA has), on the weight's device. The built-in one is `random_mask`; any other is set on
the config after creating it (`config.mask_fn = my_mask_fn`), with a `mask_type` of its own name. A function
that needs more arguments can close over them:

    def mask_with_threshold(threshold):
        def mask_fn(base_layer, r, **kwargs):
            ...
        return mask_fn
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def linear_shape(base_layer: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of an `nn.Linear`-like layer."""
    return base_layer.out_features, base_layer.in_features


def random_mask(base_layer: nn.Module, r: int, random_seed: int | None = None, **kwargs: Any) -> torch.Tensor:
    """A boolean (out, in) mask with `r * (out + in)` entries set, chosen uniformly at random.

    The positions are the first ones of a random permutation of the `out * in` flat (row-major) positions,
    drawn on the CPU from a fresh generator, seeded with `random_seed` when given. A fresh generator
    always starts from the same default seed, so an unseeded mask is reproducible too (as PEFT's is).
    """
    out_features, in_features = linear_shape(base_layer)
    n_trained = r * (out_features + in_features)
    generator = torch.Generator()
    if random_seed is not None:
        generator.manual_seed(random_seed)
    positions = torch.randperm(out_features * in_features, generator=generator, device="cpu")[:n_trained]
    mask = torch.zeros(out_features * in_features, dtype=torch.bool, device="cpu")
    mask[positions] = True
    return mask.view(out_features, in_features).to(base_layer.weight.device)
