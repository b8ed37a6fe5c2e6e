"""PVeRA layers: VeRA's shared random projections, with a sampled low-rank code.

    [mu; logvar] = lambda_d * (A_s dropout(x))        (A_s: the shared A's 2r rows, first `in` columns)
    z = mu + eps * exp(logvar / 2), eps ~ N(0, I)      in training or with `sample_at_inference`
    z = mu                                             otherwise (deterministic)
    y = W x + b + lambda_b * (B_s z)                   (B_s: the shared B's first `out` rows, r columns)

Merging can only keep the mean: `delta_W = diag(lambda_b) B_s diag(lambda_d[:r]) A_s[:r]`. Each layer
samples from its own generator seeded with `generator_seed` (torch's global RNG when it is None), on the
CPU, as peft does, so seeded runs draw the same noise.

A (2r x in_max) and B (out_max x r) live once per adapter on the tuner (`PveraModel.pvera_A/pvera_B`,
BufferDicts every layer shares), drawn for that adapter's own rank and largest layer.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...utils.warnings import PeftWarning
from .._buffer_dict import BufferDict
from .._dropout import input_dropout
from .._linear_kind import set_linear_sizes
from ..tuners_utils import BaseTunerLayer
from .config import PveraConfig

_HALF = (torch.float16, torch.bfloat16)


class PveraLayer(BaseTunerLayer):
    """State shared by PVeRA layer kinds: the trained vectors, the sampling settings and generators, and
    references to the shared projections."""

    adapter_layer_names = ("pvera_lambda_b", "pvera_lambda_d")
    other_param_names = ("pvera_A", "pvera_B", "pvera_dropout", "r", "sample_at_inference", "pvera_generator")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.sample_at_inference: dict[str, bool] = {}
        self.pvera_generator: dict[str, torch.Generator | None] = {}  # CPU generators: .to() cannot move them
        self.pvera_dropout = nn.ModuleDict({})
        self.pvera_lambda_b = nn.ParameterDict({})
        self.pvera_lambda_d = nn.ParameterDict({})
        self.pvera_A: BufferDict | None = None
        self.pvera_B: BufferDict | None = None
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        pvera_A: BufferDict,
        pvera_B: BufferDict,
        r: int,
        config: PveraConfig,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name` on this layer, reading its projections from the shared dicts."""
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        self.pvera_A, self.pvera_B = pvera_A, pvera_B
        rows, cols = pvera_A[adapter_name].shape
        out_rows, out_cols = pvera_B[adapter_name].shape
        if (rows, out_cols) != (2 * r, r) or cols < self.in_features or out_rows < self.out_features:
            raise ValueError(
                f"The shared PVeRA projections of adapter '{adapter_name}' do not fit this layer: pvera_A is "
                f"{(rows, cols)}, pvera_B {(out_rows, out_cols)}, the layer needs ({2 * r}, >={self.in_features}) "
                f"and (>={self.out_features}, {r}) for r={r}."
            )
        self.r[adapter_name] = r
        self.sample_at_inference[adapter_name] = config.sample_at_inference
        seed = config.generator_seed
        self.pvera_generator[adapter_name] = None if seed is None else torch.Generator().manual_seed(seed)
        self.pvera_dropout[adapter_name] = input_dropout(config.pvera_dropout)
        self.pvera_lambda_b[adapter_name] = nn.Parameter(torch.ones(self.out_features))
        # drawn even when then overwritten, so that seeded runs consume torch's global RNG as in peft
        self.pvera_lambda_d[adapter_name] = nn.Parameter(torch.randn(2 * r))
        if config.init_weights:
            self.reset_pvera_parameters(adapter_name, d_initial=config.d_initial)
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_pvera_parameters(self, adapter_name: str, d_initial: float = 0.1) -> None:
        """`lambda_b = 0, lambda_d = d_initial`: the adapter starts as a no-op."""
        if adapter_name not in self.pvera_lambda_d:
            return
        with torch.no_grad():
            self.pvera_lambda_d[adapter_name].fill_(d_initial)
            self.pvera_lambda_b[adapter_name].zero_()

    def _reparametrize(self, mu: torch.Tensor, logvar: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """A sample of N(mu, exp(logvar)) in training or with `sample_at_inference`, else `mu`."""
        if not (self.training or self.sample_at_inference[adapter_name]):
            return mu
        std = torch.exp(0.5 * logvar)
        generator = self.pvera_generator[adapter_name]
        if generator is None:
            noise = torch.randn_like(std)
        else:
            noise = torch.randn(std.shape, dtype=std.dtype, generator=generator).to(std.device)
        return mu + noise * std

    def _projections(self, adapter_name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's slices `A_s` (2r x in) and `B_s` (out x r) of the shared projections."""
        sliced_A = self.pvera_A[adapter_name][:, : self.in_features]
        sliced_B = self.pvera_B[adapter_name][: self.out_features, :]
        return sliced_A.to(dtype), sliced_B.to(dtype)

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        lambda_b, lambda_d = self.pvera_lambda_b[adapter_name], self.pvera_lambda_d[adapter_name]
        sliced_A, sliced_B = self._projections(adapter_name, lambda_d.dtype)
        x = self._cast_input_dtype(x, lambda_d.dtype)
        mu, logvar = (lambda_d * F.linear(self.pvera_dropout[adapter_name](x), sliced_A)).chunk(2, dim=-1)
        return lambda_b * F.linear(self._reparametrize(mu, logvar, adapter_name), sliced_B)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The mean's weight change `diag(lambda_b) B_s diag(lambda_d[:r]) A_s[:r]`, in the base weight's
        layout (computed in fp32 on the CPU when the projections are half precision, then cast back)."""
        dtype = self.pvera_B[adapter].dtype
        on_cpu_half = self.pvera_B[adapter].device.type == "cpu" and dtype in _HALF
        lambda_b, lambda_d = self.pvera_lambda_b[adapter], self.pvera_lambda_d[adapter]
        if on_cpu_half:
            lambda_b, lambda_d = lambda_b.float(), lambda_d.float()
        sliced_A, sliced_B = self._projections(adapter, lambda_d.dtype)
        r = self.r[adapter]
        delta = (lambda_b.unsqueeze(-1) * sliced_B) @ (lambda_d[:r].unsqueeze(-1) * sliced_A[:r])
        delta = delta.T if self.fan_in_fan_out else delta
        return delta.to(dtype) if on_cpu_half else delta

    def _check_mergeable(self) -> None:
        sampling = [a for a in self.active_adapters if self.sample_at_inference.get(a)]
        if sampling:
            warnings.warn(
                f"PVeRA adapters {sampling} sample at inference, but a merged adapter is its mean: the merged "
                "model no longer samples.",
                PeftWarning,
                stacklevel=3,
            )

    def __repr__(self) -> str:
        return "pvera." + super().__repr__()


class Linear(PveraLayer, nn.Module):
    """PVeRA on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`: weight stored as (in, out))."""

    def __init__(
        self,
        base_layer: nn.Module,
        pvera_A: BufferDict,
        pvera_B: BufferDict,
        adapter_name: str,
        config: PveraConfig,
        r: int = 0,
        is_target_conv_1d_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        PveraLayer.__init__(self, base_layer, **kwargs)
        set_linear_sizes(self, config.fan_in_fan_out, is_target_conv_1d_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, pvera_A, pvera_B, r, config)
