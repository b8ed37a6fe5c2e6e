"""Optimizers made for LoRA: LoRA+ (separate learning rates for A and B), LoRA-FA (A frozen, B projected) and
Riemannian-preconditioned LoRA."""

from .lorafa import LoraFAOptimizer, create_lorafa_optimizer
from .loraplus import create_loraplus_optimizer
from .riemannian import create_riemannian_optimizer

__all__ = [
    "LoraFAOptimizer",
    "create_lorafa_optimizer",
    "create_loraplus_optimizer",
    "create_riemannian_optimizer",
]
