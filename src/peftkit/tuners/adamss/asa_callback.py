"""`AdamssAsaCallback`: adaptive subspace allocation in transformers' `Trainer`.

Imported from here (not from `peftkit`, as in PEFT), so that `import peftkit` does not load transformers:

    from peftkit.tuners.adamss.asa_callback import AdamssAsaCallback
    trainer = Trainer(model=model, callbacks=[AdamssAsaCallback()], ...)

It calls the model's `update_and_allocate(state.global_step)` after every optimizer step; every setting is
read from the model's `AdamssConfig`. A custom training loop calls `model.base_model.update_and_allocate`
itself instead.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

__all__ = ["AdamssAsaCallback"]


class AdamssAsaCallback(TrainerCallback):
    """Runs AdaMSS's adaptive subspace allocation after each optimizer step of a `Trainer`."""

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> Any:
        model = kwargs.get("model")
        if model is not None:
            tuner = getattr(model, "base_model", model)
            if hasattr(tuner, "update_and_allocate"):
                tuner.update_and_allocate(state.global_step)
        return super().on_optimizer_step(args=args, state=state, control=control)
