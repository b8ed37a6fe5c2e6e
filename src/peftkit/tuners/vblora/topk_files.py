"""VB-LoRA's compact file format (`save_only_topk_weights=True`), as peft writes it.

Only the top k of each piece's N logits matter to the forward, so a file may hold, per logits tensor
`<key>`, the indices of the top k (`<key>_topk_indices`, the smallest integer type that holds N) and
their softmax weights but the last (`<key>_topk_weights`, k - 1 of them: the weights sum to 1). Loading
rebuilds logits that give the same weights: log(weight) at the k indices, -inf elsewhere.
"""

from __future__ import annotations

import torch

_INDICES = "_topk_indices"
_WEIGHTS = "_topk_weights"


def index_dtype(num_vectors: int) -> torch.dtype:
    """The smallest integer dtype peft stores indices below `num_vectors` in."""
    for bound, dtype in ((2**8, torch.uint8), (2**15, torch.int16), (2**31, torch.int32)):
        if num_vectors < bound:
            return dtype
    return torch.int64


def is_logits_key(key: str) -> bool:
    return key.endswith(("vblora_logits_A", "vblora_logits_B"))


def compress_logits(tensors: dict[str, torch.Tensor], topk: int, num_vectors: int) -> dict[str, torch.Tensor]:
    """`tensors` with each logits tensor replaced by its top-k indices and weights."""
    compact: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if not is_logits_key(key):
            compact[key] = tensor
            continue
        best, indices = tensor.topk(topk)
        compact[key + _INDICES] = indices.to(index_dtype(num_vectors))
        compact[key + _WEIGHTS] = torch.softmax(best, dim=-1)[..., :-1].contiguous()
    return compact


def expand_logits(tensors: dict[str, torch.Tensor], num_vectors: int) -> dict[str, torch.Tensor]:
    """The inverse of `compress_logits`: logits (-inf outside the top k) wherever a file holds indices."""
    expanded: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if key.endswith(_WEIGHTS) and key.removesuffix(_WEIGHTS) + _INDICES in tensors:
            continue
        if not key.endswith(_INDICES):
            expanded[key] = tensor
            continue
        name = key.removesuffix(_INDICES)
        weights = tensors[name + _WEIGHTS]
        weights = torch.cat([weights, 1 - weights.sum(-1, keepdim=True)], dim=-1)
        logits = torch.full((*weights.shape[:-1], num_vectors), float("-inf"), device=weights.device)
        expanded[name] = logits.scatter(-1, tensor.long(), torch.log(weights).to(logits.dtype))
    return expanded
