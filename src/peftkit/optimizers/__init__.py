"""Optimizers made for LoRA: LoRA+ (separate learning rates for A and B) and LoRA-FA (A frozen, B projected)."""

from .lorafa import LoraFAOptimizer, create_lorafa_optimizer
from .loraplus import create_loraplus_optimizer

__all__ = ["LoraFAOptimizer", "create_lorafa_optimizer", "create_loraplus_optimizer"]
