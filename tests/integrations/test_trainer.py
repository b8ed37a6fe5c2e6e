"""PeftTrainer (transformers' Trainer + PeftTrainerMixin) on peftkit models, without the `peft` alias.

Checkpoints hold only the adapter, resuming reproduces the uninterrupted run, the best model is loaded
back, label smoothing gives peft+Trainer's loss, and dataset columns the base model takes are kept.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from tests.conftest import perturb_adapter_weights, tiny_llama
from tests.integrations.trainer_helpers import (
    TokenDataset,
    adapter_file,
    lora_tensors,
    max_abs_diff,
    training_args,
)

import peftkit
from peftkit.integrations.transformers import PeftTrainer, add_adapter

LORA = dict(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def _peft_model(seed: int = 0, **overrides):
    return peftkit.get_peft_model(tiny_llama(seed, **overrides), peftkit.LoraConfig(**LORA))


def _batch(dataset, n: int = 4) -> dict[str, torch.Tensor]:
    return {k: torch.stack([dataset[i][k] for i in range(n)]) for k in dataset[0]}


@pytest.fixture(scope="module")
def tied_run(tmp_path_factory):
    """An uninterrupted 4-step run with save_steps=2 on a tiny Llama with tied embeddings."""
    out = tmp_path_factory.mktemp("tied_run")
    model = _peft_model(tie_word_embeddings=True)
    trainer = PeftTrainer(model=model, args=training_args(out), train_dataset=TokenDataset())
    trainer.train()
    return out, model, trainer


def test_checkpoints_hold_only_the_adapter(tied_run):
    out, model, _ = tied_run
    for step in (2, 4):
        files = set(os.listdir(out / f"checkpoint-{step}"))
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        assert not files & {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"}
    saved = adapter_file(out / "checkpoint-4")
    assert saved and all(k.startswith("base_model.model.") and ".lora_" in k for k in saved)
    # the last checkpoint holds the trained weights, keyed as PEFT keys them
    final = {k.replace(".default", ""): v for k, v in lora_tensors(model).items()}
    assert max_abs_diff(saved, final) == 0.0


def test_checkpoint_loads_in_peft(tied_run):
    import peft

    out, model, _ = tied_run
    loaded = peft.PeftModel.from_pretrained(tiny_llama(tie_word_embeddings=True), str(out / "checkpoint-4"))
    assert max_abs_diff(lora_tensors(loaded), lora_tensors(model)) == 0.0


def test_training_changes_the_adapter_and_logs_a_loss(tied_run):
    _, model, trainer = tied_run
    assert any(p.abs().max() > 0 for n, p in lora_tensors(model).items() if "lora_B" in n)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


def test_resume_from_checkpoint_matches_the_uninterrupted_run(tied_run, tmp_path):
    out, model, _ = tied_run
    resumed = _peft_model(seed=0, tie_word_embeddings=True)
    trainer = PeftTrainer(model=resumed, args=training_args(tmp_path), train_dataset=TokenDataset())
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert trainer.state.global_step == 4
    assert max_abs_diff(lora_tensors(resumed), lora_tensors(model)) <= 1e-6


def test_load_best_model_at_end_loads_the_best_checkpoint(tmp_path):
    scores = iter([1.0, 0.0])  # the first evaluation (step 2) is the best one

    def compute_metrics(_):
        return {"score": next(scores)}

    model = _peft_model()
    args = training_args(
        tmp_path,
        eval_strategy="steps",
        eval_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="score",
        greater_is_better=True,
    )
    trainer = PeftTrainer(
        model=model,
        args=args,
        train_dataset=TokenDataset(),
        eval_dataset=TokenDataset(n=4, seed=1),
        compute_metrics=compute_metrics,
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    best = adapter_file(tmp_path / "checkpoint-2")
    last = adapter_file(tmp_path / "checkpoint-4")
    assert max_abs_diff(best, last) > 1e-4  # the test would pass vacuously if both were the same
    now = {k.replace(".default", ""): v for k, v in lora_tensors(model).items()}
    assert max_abs_diff(now, best) == 0.0
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)  # still trainable


class _InnerModelTrainer(PeftTrainer):
    train_inner_model = True  # the Trainer gets the transformers model inside the PeftModel


def test_label_smoothing_loss_equals_peft_with_transformers_trainer(tmp_path):
    import peft
    from transformers import Trainer

    base = tiny_llama()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**LORA))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**LORA))
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    args = training_args(tmp_path, label_smoothing_factor=0.1)
    data = TokenDataset()
    batch = _batch(data)
    with torch.no_grad():
        expected = Trainer(model=theirs, args=args, train_dataset=data).compute_loss(theirs, dict(batch))
        got = PeftTrainer(model=ours, args=args, train_dataset=data).compute_loss(ours, dict(batch))
        unshifted = Trainer(model=ours, args=args, train_dataset=data).compute_loss(ours, dict(batch))
        inner_trainer = _InnerModelTrainer(model=ours, args=args, train_dataset=data)
        assert inner_trainer.model is ours.get_base_model() and inner_trainer.peft_model is ours
        inner = inner_trainer.compute_loss(inner_trainer.model, dict(batch))
    assert abs(got.item() - expected.item()) <= 1e-6
    assert abs(inner.item() - expected.item()) <= 1e-6
    # the plain Trainer does not know peftkit's wrapper and skips the shift: the mixin is what fixes it
    assert abs(unshifted.item() - expected.item()) > 1e-4


def test_columns_the_base_model_accepts_are_kept(tmp_path):
    import datasets

    data = datasets.Dataset.from_dict(
        {"input_ids": [[1, 2, 3]], "position_ids": [[0, 1, 2]], "text": ["a b c"], "labels": [[1, 2, 3]]}
    )
    trainer = PeftTrainer(model=_peft_model(), args=training_args(tmp_path), train_dataset=data)
    kept = trainer._remove_unused_columns(data)
    assert set(kept.column_names) == {"input_ids", "position_ids", "labels"}


def test_transformers_model_carrying_adapters_gets_adapter_only_checkpoints(tmp_path):
    import peft

    model = tiny_llama()
    add_adapter(model, peftkit.LoraConfig(target_modules=["q_proj", "v_proj"]))
    trainer = PeftTrainer(
        model=model, args=training_args(tmp_path, max_steps=2), train_dataset=TokenDataset()
    )
    trainer.train()
    files = set(os.listdir(tmp_path / "checkpoint-2"))
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    loaded = peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "checkpoint-2"))
    theirs = {k.replace("base_model.model.", ""): v for k, v in lora_tensors(loaded).items()}
    assert max_abs_diff(theirs, lora_tensors(model)) == 0.0


def test_mixin_on_trl_sft_trainer_writes_adapter_only_checkpoints(tmp_path):
    from datasets import Dataset
    from tests.integrations.tiny_tokenizer import tiny_texts, tiny_tokenizer
    from trl import SFTConfig, SFTTrainer

    from peftkit.integrations.transformers import PeftTrainerMixin

    class PeftSFTTrainer(PeftTrainerMixin, SFTTrainer):
        pass

    model = peftkit.get_peft_model(tiny_llama(bos_token_id=1, eos_token_id=2), peftkit.LoraConfig(**LORA))
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        save_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        max_length=16,
        disable_tqdm=True,
        learning_rate=5e-2,
    )
    trainer = PeftSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"text": tiny_texts()}),
        processing_class=tiny_tokenizer(),
    )
    trainer.train()
    files = set(os.listdir(tmp_path / "checkpoint-2"))
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert "model.safetensors" not in files
    saved = {
        k.replace("base_model.model.", ""): v for k, v in adapter_file(tmp_path / "checkpoint-2").items()
    }
    now = {
        k.replace("base_model.model.", "").replace(".default", ""): v for k, v in lora_tensors(model).items()
    }
    assert max_abs_diff(saved, now) == 0.0
