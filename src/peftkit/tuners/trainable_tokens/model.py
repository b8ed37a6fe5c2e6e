"""TrainableTokensModel: the tuner of the TRAINABLE_TOKENS method (selected embedding rows only)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..tuners_utils import BaseTuner
from .config import TrainableTokensConfig
from .layer import TrainableTokensLayer


class TrainableTokensModel(BaseTuner):
    """Trains the rows `token_indices` of the targeted embedding layer(s); see `TrainableTokensConfig`.

    With tied input/output embeddings, the output head is adapted too and shares the trained rows.
    """

    prefix = "trainable_tokens_"
    tuner_layer_cls = TrainableTokensLayer
    # an embedding, or a linear output head (tied to the embedding, or targeted by name)
    layer_classes = {nn.Embedding: TrainableTokensLayer, nn.Linear: TrainableTokensLayer}

    def _prepare_adapter_config(
        self, config: TrainableTokensConfig, model_config: dict
    ) -> TrainableTokensConfig:
        if config.target_modules is None:
            getter = getattr(self.model, "get_input_embeddings", None)
            embedding = getter() if getter is not None else None
            name = next((n for n, m in self.model.named_modules() if m is embedding), None)
            if name is None:
                raise ValueError(
                    "TrainableTokensConfig has no target_modules and the model has no input embedding "
                    "(get_input_embeddings); set target_modules to the name of its embedding layer."
                )
            config.target_modules = name  # PEFT writes the name as a (regex) string
        return config

    def _layer_kwargs(self, config: TrainableTokensConfig, key: str) -> dict[str, Any]:
        return {"token_indices": config.token_indices, "init_weights": config.init_weights}

    def _expected_tie(self, name: str, others: list[str]) -> bool:
        # a tied output head is adapted too, with the same trained rows (_adapt_tied_output)
        return True

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        super().inject_adapter(model, adapter_name, **kwargs)
        self._adapt_tied_output(model, adapter_name)

    def _adapt_tied_output(self, model: nn.Module, adapter_name: str) -> None:
        """A tied output head uses the trained rows of the input embedding."""
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not isinstance(embedding, TrainableTokensLayer) or output is None or output is embedding:
            return
        if getattr(output, "weight", None) is not embedding.get_base_layer().weight:
            return
        config = self.peft_config[adapter_name]
        if isinstance(output, TrainableTokensLayer):
            output.update_layer(adapter_name, config.token_indices, inference_mode=config.inference_mode)
            return
        name = next(n for n, m in model.named_modules() if m is output)
        parent = model.get_submodule(name.rpartition(".")[0])
        layer = TrainableTokensLayer(output, adapter_name, config.token_indices, tied_adapter=embedding)
        layer.set_adapter(self.active_adapters, inference_mode=config.inference_mode)
        setattr(parent, name.rpartition(".")[2], layer)
