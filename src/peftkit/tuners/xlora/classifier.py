"""The X-LoRA classifier: from the last hidden state of the scaling pass, each token's scalings of the
experts, per LoRA layer.

    logits = MLP(h_last)                          (xlora_depth Linear layers, ReLU + dropout between)
    scalings[b, t, l, e] = logits[b, t, e]        (or logits[b, t, l, e] with layerwise_scalings)
    scalings = softmax(scalings / temperature)    (over the experts, with enable_softmax)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import XLoraConfig


class TemperatureScaledSoftmax(nn.Module):
    """`softmax(logits / temperature)` over the last dimension."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.softmax(logits / self.temperature)


def _batch_and_length(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> tuple[int, int]:
    source = input_ids if input_ids is not None else inputs_embeds
    if source is None:
        raise ValueError("X-LoRA needs input_ids or inputs_embeds to size its scalings.")
    return source.shape[0], source.shape[1]


class XLoraClassifier(nn.Module):
    """Predicts the scalings (batch, seq, n_layers, n_classes) of `n_classes` experts in `n_layers`
    LoRA layers; keeps a log of them when `scalings_logging` is on."""

    def __init__(
        self,
        model: nn.Module,
        config: XLoraConfig,
        n_classes: int,
        n_layers: int,
        device: torch.device | None,
    ) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.n_layers = n_layers
        self.config = config
        self.log_scalings: list[torch.Tensor] = []
        self.softmax = TemperatureScaledSoftmax(temperature=config.softmax_temperature)
        self.override_scaling_pass_value: float = config.scaling_pass_value
        self.scalings_logging = False
        self.dtype = next(model.parameters()).dtype
        outputs = n_classes * n_layers if config.layerwise_scalings else n_classes
        layers: list[nn.Module] = []
        width = config.hidden_size
        for _ in range(config.xlora_depth - 1):
            layers += [nn.Linear(width, config.xlora_size, bias=True), nn.ReLU()]
            if config.xlora_dropout_p > 0.0:
                layers.append(nn.Dropout(p=config.xlora_dropout_p))
            width = config.xlora_size
        layers.append(nn.Linear(width, outputs, bias=True))
        self.layers = nn.Sequential(*layers).to(device=device, dtype=self.dtype)

    def make_dummy_scalings(
        self,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The scalings of the scaling pass: every entry `scaling_pass_value` (batch, seq, n_layers, n_classes)."""
        batch, length = _batch_and_length(input_ids, inputs_embeds)
        device = (input_ids if input_ids is not None else inputs_embeds).device
        return torch.full(
            (batch, length, self.n_layers, self.n_classes),
            self.override_scaling_pass_value,
            device=device,
            dtype=self.dtype,
        )

    def forward(
        self,
        result: Any,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The scalings predicted from `result.hidden_states[-1]` (the scaling pass's output)."""
        batch, length = _batch_and_length(input_ids, inputs_embeds)
        logits = self.layers(result.hidden_states[-1])
        if not self.config.layerwise_scalings:  # one set of scalings, the same in every layer
            logits = logits.unsqueeze(2).expand(-1, -1, self.n_layers, -1)
        scalings = logits.reshape(batch, length, self.n_layers, self.n_classes)
        if self.config.enable_softmax:
            scalings = self.softmax(scalings)
        if self.scalings_logging:
            self.log_scalings.append(scalings)
        return scalings

    def _get_bucketed_scalings(self) -> dict[int, tuple[list[int], list[torch.Tensor]]]:
        """The log grouped by sequence length: length -> (positions in the log, scalings)."""
        buckets: dict[int, tuple[list[int], list[torch.Tensor]]] = {}
        for position, scalings in enumerate(self.log_scalings):
            positions, tensors = buckets.setdefault(scalings.shape[1], ([], []))
            positions.append(position)
            tensors.append(scalings)
        return buckets

    def _set_override_scaling_pass_value(self, value: float | None) -> None:
        """The scaling pass's value (None: 1 / n_classes), also written into the config."""
        self.override_scaling_pass_value = 1 / self.n_classes if value is None else value
        self.config.scaling_pass_value = self.override_scaling_pass_value
