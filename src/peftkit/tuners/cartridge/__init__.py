"""Cartridge: a key/value-cache prefix held as parameters (Eyuboglu et al., 2025)."""

from .._registration import register_peft_method
from .config import CartridgeConfig
from .model import CartridgeEncoder

register_peft_method(name="cartridge", config_cls=CartridgeConfig, model_cls=CartridgeEncoder)

__all__ = ["CartridgeConfig", "CartridgeEncoder"]
