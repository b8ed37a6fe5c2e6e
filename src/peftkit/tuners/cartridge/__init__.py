"""Cartridge: a key/value-cache prefix held as parameters (Eyuboglu et al., 2025)."""

from .._registration import register_peft_method
from .config import CartridgeConfig
from .model import CartridgeEncoder

# as PEFT registers it: the encoder as its "tuner", and the default prefix "cartridge_" (no tensor of a
# prompt-learning adapter carries it; the file key is `prompt_embeddings`)
register_peft_method(
    name="cartridge", config_cls=CartridgeConfig, model_cls=CartridgeEncoder, prefix="cartridge_"
)

__all__ = ["CartridgeConfig", "CartridgeEncoder"]
