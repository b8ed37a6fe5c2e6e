"""The adapter methods. Importing this package registers each of them."""

from .lora import LoraConfig, LoraModel, LoraRuntimeConfig

__all__ = ["LoraConfig", "LoraModel", "LoraRuntimeConfig"]
