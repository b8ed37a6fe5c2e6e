"""Trainable tokens: train selected rows of an embedding matrix (PEFT's TRAINABLE_TOKENS method)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import TrainableTokensConfig
from .layer import TrainableTokensLayer
from .model import TrainableTokensModel
from .wrapper import TrainableTokensWrapper

register_peft_method(
    peft_type=PeftType.TRAINABLE_TOKENS,
    config_cls=TrainableTokensConfig,
    model_cls=TrainableTokensModel,
    prefix="trainable_tokens_",
)

__all__ = ["TrainableTokensConfig", "TrainableTokensLayer", "TrainableTokensModel", "TrainableTokensWrapper"]
