"""transformers integration without the `peft` alias: `PeftTrainer` / `PeftTrainerMixin` for the Trainer,
and transformers' model-level adapter API as functions (or `AdapterMixin` methods).

    from peftkit.integrations.transformers import PeftTrainer
    trainer = PeftTrainer(model=get_peft_model(model, config), args=args, train_dataset=data)
"""

from .model_adapters import (
    AdapterMixin,
    active_adapters,
    add_adapter,
    delete_adapter,
    disable_adapters,
    enable_adapters,
    get_adapter_state_dict,
    has_adapters,
    load_adapter,
    save_adapters,
    set_adapter,
)
from .trainer import PeftTrainer, PeftTrainerMixin, load_adapter_checkpoint

__all__ = [
    "AdapterMixin",
    "PeftTrainer",
    "PeftTrainerMixin",
    "active_adapters",
    "add_adapter",
    "delete_adapter",
    "disable_adapters",
    "enable_adapters",
    "get_adapter_state_dict",
    "has_adapters",
    "load_adapter",
    "load_adapter_checkpoint",
    "save_adapters",
    "set_adapter",
]
