"""Integrations with training libraries, without the `peft` alias (`peftkit.compat`):
`peftkit.integrations.transformers` has transformers' Trainer for peftkit models (`PeftTrainer`,
`PeftTrainerMixin` for any Trainer subclass, TRL's included) and transformers' model-level adapter
methods as functions or a mixin. `peftkit.integrations.gguf` exports LoRA adapters to llama.cpp's GGUF
format and imports them back (`peftkit[gguf]`)."""
