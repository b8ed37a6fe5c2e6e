"""Small pieces shared by the Trainer tests: a token dataset, training arguments, adapter files."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file


class TokenDataset(torch.utils.data.Dataset):
    """`n` random sequences (causal LM: labels = input_ids), the same for a given seed."""

    def __init__(self, n: int = 16, length: int = 8, vocab: int = 128, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, vocab, (n, length), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def training_args(output_dir, **overrides):
    from transformers import TrainingArguments

    values = dict(
        output_dir=str(output_dir),
        max_steps=4,
        save_steps=2,
        save_strategy="steps",
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=5e-2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def adapter_file(folder) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, "adapter_model.safetensors"))


def lora_tensors(model) -> dict[str, torch.Tensor]:
    """The model's LoRA tensors keyed by name (detached copies)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
