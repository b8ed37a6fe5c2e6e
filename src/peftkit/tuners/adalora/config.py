"""AdaLoraConfig: LoraConfig's fields plus AdaLoRA's budget schedule, as PEFT 0.21 writes them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from ...utils.peft_types import PeftType
from ...utils.warnings import PeftWarning
from ..lora.config import LoraConfig


@dataclass
class AdaLoraConfig(LoraConfig):
    """Configuration of an AdaLoRA adapter (Zhang et al., 2023): an SVD-shaped update
    `dW = B diag(E) A * lora_alpha / (ranknum + 1e-5)` per layer, whose ranks are pruned during training.

    Every layer starts at rank `init_r`; call `model.base_model.update_and_allocate(step)` after each
    optimizer step. After `tinit` warm-up steps the total budget falls cubically to `target_r` per layer at
    step `total_step - tfinal` (masking every `deltaT` steps the triplets of lowest smoothed sensitivity,
    `beta1`/`beta2` being the smoothing factors); then the final mask (`rank_pattern`) is kept. The loss of
    a training model gets `orth_reg_weight * mean(||A A^T - I||_F, ||B^T B - I||_F)`.
    """

    target_r: int = field(default=8, metadata={"help": "Target average rank per layer."})
    init_r: int = field(default=12, metadata={"help": "Initial rank of each layer."})
    tinit: int = field(default=0, metadata={"help": "Steps of initial fine-tuning before pruning."})
    tfinal: int = field(default=0, metadata={"help": "Steps of final fine-tuning with the final ranks."})
    deltaT: int = field(default=1, metadata={"help": "Steps between two budget allocations."})
    beta1: float = field(default=0.85, metadata={"help": "EMA factor of the sensitivity."})
    beta2: float = field(default=0.85, metadata={"help": "EMA factor of the uncertainty."})
    orth_reg_weight: float = field(default=0.5, metadata={"help": "Weight of the orthogonality regulariser."})
    total_step: int | None = field(default=None, metadata={"help": "Total number of training steps."})
    rank_pattern: dict | None = field(
        default=None,
        metadata={"help": "The allocated ranks: layer -> mask of kept triplets (set by training)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.ADALORA
        if self.use_dora:
            raise ValueError(f"{self.peft_type} does not support DoRA.")
        if self.total_step is None or self.total_step <= 0:
            raise ValueError("AdaLoRA does not work when `total_step` is None, supply a value > 0.")
        if self.tinit >= (self.total_step - self.tfinal):
            raise ValueError(
                "The supplied schedule values don't allow for a budgeting phase. Decrease `tfinal`/`tinit` or "
                "increase `total_step`."
            )
        if self.r != 8:
            warnings.warn(
                "Note that `r` is not used in AdaLora and will be ignored. If you intended to set the initial rank, "
                "use `init_r` instead.",
                PeftWarning,
            )

    def _validate_patterns(self) -> None:
        """rank_pattern maps `<module>.lora_E[.<adapter>]` to a list of booleans (the kept triplets)."""
        for name, mask in (self.rank_pattern or {}).items():
            if not isinstance(name, str) or not isinstance(mask, (list, tuple)):
                raise ValueError(
                    "AdaLoRA rank_pattern maps layer names to lists of booleans (written by update_and_allocate), "
                    f"got {name!r}: {mask!r}."
                )
