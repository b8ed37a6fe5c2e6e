"""TinyLoRA layers: a tiny trained vector mixes fixed random r x r matrices between the base weight's own
top singular directions.

    y = W x + B R A dropout(x),        R = sum_i v_i P_i
    delta_W = B R A

`W = U S V^T` is the frozen base weight (out x in); A = diag(sqrt(S_r)) V_r^T (r x in) and
B = U_r diag(sqrt(S_r)) (out x r) are its rank-r truncation, the singular values split evenly between
the two (r is capped at min(out, in)). P (u x r x r) is drawn once per layer from N(0, 1/r) by a
generator seeded `projection_seed + layer index`. Only v (u numbers) trains; it lives on the tuner
(`TinyLoraModel.tinylora_v[adapter][group]`) and a group of layers may share it (`weight_tying`).

On an embedding (weight num_embeddings x dim) the low-rank factor is looked up by token id:
`y = E[ids] + dropout(B[ids]) R A`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._buffer_dict import BufferDict
from .._dropout import input_dropout
from ..tuners_utils import BaseTunerLayer
from .config import TinyLoraConfig

_HALF = (torch.float16, torch.bfloat16)


def svd_factors(weight: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of the module docstring for `weight` (out x in): the SVD is taken in fp32, its rank-r parts
    are cast to `weight`'s dtype before the singular values are split (as peft, bit for bit)."""
    dtype = weight.dtype
    left, singular, right_t = torch.linalg.svd(weight.float(), full_matrices=False)
    rank = min(r, *weight.shape)
    root = torch.sqrt(singular[:rank].to(dtype))
    factor_a = root.unsqueeze(1) * right_t[:rank, :].to(dtype)
    factor_b = left[:, :rank].to(dtype) * root.unsqueeze(0)
    return factor_a.contiguous(), factor_b.contiguous()


def draw_projection(seed: int, u: int, r: int) -> torch.Tensor:
    """P (u x r x r) ~ N(0, 1/r), from a CPU generator seeded with `seed` (same seed, same P)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.normal(0.0, 1.0 / r**0.5, size=(u, r, r), generator=generator, device="cpu")


class TinyLoraLayer(BaseTunerLayer):
    """State shared by TinyLoRA layer kinds: the frozen SVD factors and projections, and a reference to
    the tuner's trained vectors (`tinylora_v`, shared by all layers)."""

    adapter_layer_names = ("tinylora_v",)
    other_param_names = (
        "tinylora_A",
        "tinylora_B",
        "tinylora_P",
        "tinylora_dropout",
        "r",
        "u",
        "_tinylora_v_key",
    )

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.u: dict[str, int] = {}
        self.tinylora_dropout = nn.ModuleDict({})
        self.tinylora_v: nn.ModuleDict | None = None  # the tuner's dict, set by update_layer
        self._tinylora_v_key: dict[str, str] = {}  # adapter -> its group's key in tinylora_v[adapter]
        self.tinylora_A = BufferDict(persistent=True)
        self.tinylora_B = BufferDict(persistent=True)
        self.tinylora_P = BufferDict(persistent=True)
        self.kwargs = kwargs

    def _weight_out_in(self) -> torch.Tensor:
        """The base weight as (out, in), the matrix the SVD factors describe (dequantized for a quantized base)."""
        return self._dense_base_weight()

    # the shared `tinylora_v` holds every adapter: this layer has an adapter only where it has its factors
    def has_adapter(self, adapter_name: str) -> bool:
        return adapter_name in self.tinylora_A

    def _get_available_adapters(self) -> set[str]:
        return set(self.tinylora_A.keys())

    def update_layer(
        self,
        adapter_name: str,
        tinylora_v: nn.ModuleDict,
        v_key: str,
        r: int,
        config: TinyLoraConfig,
        layer_idx: int = 0,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name` on this layer: its SVD factors, its projection P (seeded with
        `projection_seed + layer_idx`) and its reference to group `v_key` of the shared vectors."""
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        weight = self._weight_out_in()
        self.tinylora_P.persistent = config.save_projection
        self.u[adapter_name] = config.u
        self.tinylora_dropout[adapter_name] = input_dropout(config.tinylora_dropout)
        self.tinylora_v = tinylora_v
        self._tinylora_v_key[adapter_name] = v_key
        factor_a, factor_b = svd_factors(weight, r)
        self.tinylora_A[adapter_name], self.tinylora_B[adapter_name] = factor_a, factor_b
        self.r[adapter_name] = factor_a.shape[0]
        projection = draw_projection(config.projection_seed + layer_idx, config.u, factor_a.shape[0])
        dtype = weight.dtype if weight.dtype.is_floating_point else projection.dtype
        self.tinylora_P[adapter_name] = projection.to(weight.device, dtype)
        self._finish_new_adapter(adapter_name, inference_mode)

    def cast_adapter_dtype(self, adapter_name: str, dtype: torch.dtype = torch.float32) -> None:
        """The vectors and the frozen factors and projections of `adapter_name` in fp32 (from fp16/bf16)."""
        super().cast_adapter_dtype(adapter_name, dtype)
        for buffers in (self.tinylora_A, self.tinylora_B, self.tinylora_P):
            if adapter_name in buffers and buffers[adapter_name].dtype in _HALF:
                buffers[adapter_name] = buffers[adapter_name].to(dtype)

    def _mixing_matrix(self, adapter_name: str) -> torch.Tensor:
        """R = sum_i v_i P_i (r x r), in v's dtype."""
        v = self.tinylora_v[adapter_name][self._tinylora_v_key[adapter_name]]
        projection = self.tinylora_P[adapter_name].to(v.device, v.dtype)
        return torch.einsum("u,urs->rs", v, projection)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """`B R A` (out x in; (in x out) for Conv1D), computed in fp32 on CPU for half-precision factors."""
        factor_a, factor_b = self.tinylora_A[adapter], self.tinylora_B[adapter]
        dtype = factor_a.dtype
        mixing = self._mixing_matrix(adapter).to(factor_a.device, dtype)
        factor_b = factor_b.to(factor_a.device, dtype)
        upcast = factor_a.device.type == "cpu" and dtype in _HALF
        if upcast:
            factor_a, factor_b, mixing = factor_a.float(), factor_b.float(), mixing.float()
        delta = factor_b @ mixing @ factor_a
        if getattr(self, "fan_in_fan_out", False):
            delta = delta.T
        return delta.to(dtype) if upcast else delta

    def __repr__(self) -> str:
        return "tinylora." + super().__repr__()


class Linear(TinyLoraLayer, nn.Module):
    """TinyLoRA on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`: weight stored as (in, out))."""

    def __init__(
        self,
        base_layer: nn.Module,
        tinylora_v: nn.ModuleDict,
        v_key: str,
        adapter_name: str,
        config: TinyLoraConfig,
        r: int = 2,
        layer_idx: int = 0,
        fan_in_fan_out: bool = False,
        is_target_conv_1d_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        TinyLoraLayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = fan_in_fan_out
        self.is_target_conv_1d_layer = is_target_conv_1d_layer
        weight = self._weight_out_in()
        self.out_features, self.in_features = weight.shape
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, tinylora_v, v_key, r, config, layer_idx=layer_idx)

    def _weight_out_in(self) -> torch.Tensor:
        weight = self._dense_base_weight()
        return weight.T if self.fan_in_fan_out else weight

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        factor_a, factor_b = self.tinylora_A[adapter_name], self.tinylora_B[adapter_name]
        mixing = self._mixing_matrix(adapter_name)
        x = self._cast_input_dtype(self.tinylora_dropout[adapter_name](x), factor_a.dtype)
        return F.linear(F.linear(F.linear(x, factor_a), mixing), factor_b)


class Embedding(TinyLoraLayer, nn.Module):
    """TinyLoRA on `nn.Embedding`: the SVD of the embedding matrix, B's rows looked up by token id."""

    def __init__(
        self,
        base_layer: nn.Module,
        tinylora_v: nn.ModuleDict,
        v_key: str,
        adapter_name: str,
        config: TinyLoraConfig,
        r: int = 2,
        layer_idx: int = 0,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        TinyLoraLayer.__init__(self, base_layer, **kwargs)
        self.out_features, self.in_features = self._weight_out_in().shape
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, tinylora_v, v_key, r, config, layer_idx=layer_idx)

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        # computed in the embedding output's dtype, as peft does
        device, dtype = base_result.device, base_result.dtype
        factor_a = self.tinylora_A[adapter_name].to(device, dtype)
        factor_b = self.tinylora_B[adapter_name].to(device, dtype)
        mixing = self._mixing_matrix(adapter_name).to(device, dtype)
        low_rank = self.tinylora_dropout[adapter_name](F.embedding(x, factor_b))
        return low_rank @ mixing @ factor_a
