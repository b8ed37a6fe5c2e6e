"""Trainable tokens: train selected rows of an embedding matrix (PEFT's TRAINABLE_TOKENS method)."""

from .._registration import register_peft_method
from .config import TrainableTokensConfig
from .layer import TrainableTokensLayer
from .model import TrainableTokensModel
from .wrapper import TrainableTokensWrapper

register_peft_method(
    name="trainable_tokens", config_cls=TrainableTokensConfig, model_cls=TrainableTokensModel
)

__all__ = ["TrainableTokensConfig", "TrainableTokensLayer", "TrainableTokensModel", "TrainableTokensWrapper"]
