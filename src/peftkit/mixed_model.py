"""PeftMixedModel: adapters of different methods (LoRA, LoHa, LoKr, AdaLoRA, OFT, SHiRA) on one model.

    model = get_peft_model(base, LoraConfig(...), adapter_name="lora", mixed=True)
    model.add_adapter("loha", LoHaConfig(...))
    model.set_adapter(["lora", "loha"])     # both active: their effects add up layer by layer

Adapters are loaded from single-method adapter folders (`from_pretrained`, `load_adapter`); like PEFT,
a mixed model is not saved as one folder: save each adapter from a PeftModel of its own method.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .config import PeftConfig
from .peft_model import PeftModel
from .persistence.folders import load_peft_model
from .tuners.mixed import MixedModel
from .tuners.mixed.model import check_mixable


class PeftMixedModel(PeftModel):
    """A base model with adapters of several compatible methods, any subset of them active at once."""

    def __init__(
        self, model: nn.Module, peft_config: PeftConfig, adapter_name: str = "default", **kwargs: Any
    ) -> None:
        check_mixable(peft_config)
        super().__init__(model, peft_config, adapter_name, **kwargs)

    def _tuner_class(self, peft_config: PeftConfig) -> type:
        return MixedModel

    def _check_adapter_type(self, peft_config: PeftConfig) -> None:
        check_mixable(peft_config)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.get_base_model().generate(*args, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "Saving a PeftMixedModel as one folder is not supported (peft does not either): save each adapter "
            "from a PeftModel of its own method, then load them here with load_adapter()."
        )

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike,
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: PeftConfig | None = None,
        **kwargs: Any,
    ) -> PeftMixedModel:
        """Load a single-method adapter folder (or Hub id) as the first adapter of a mixed model."""
        return load_peft_model(
            cls, model, model_id, adapter_name, is_trainable=is_trainable, config=config, **kwargs
        )
