"""With the `peft` alias, transformers' own Trainer and TRL's SFTTrainer train peftkit models as they
train peft's: adapter-only checkpoints, resume, best-model loading, label smoothing, `peft_config=`.
Children run without the real peft (see alias_env); expected values come from the real peft here."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.conftest import perturb_adapter_weights, tiny_llama
from tests.integrations.alias_env import make_site_without_peft, run_python
from tests.integrations.trainer_helpers import TokenDataset, training_args

pytestmark = pytest.mark.slow

LORA = dict(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return make_site_without_peft(tmp_path_factory.mktemp("no_peft"))


@pytest.fixture(scope="module")
def smoothed_loss(tmp_path_factory):
    """An adapter written by the real peft, and transformers' Trainer loss (label smoothing 0.1) on it."""
    import peft
    from transformers import Trainer

    root = tmp_path_factory.mktemp("smoothing")
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(**LORA))
    perturb_adapter_weights(model)
    model.save_pretrained(root / "adapter")
    data = TokenDataset()
    batch = {k: torch.stack([data[i][k] for i in range(4)]) for k in data[0]}
    trainer = Trainer(
        model=model, args=training_args(root / "out", label_smoothing_factor=0.1), train_dataset=data
    )
    with torch.no_grad():
        loss = trainer.compute_loss(model, copy.copy(batch)).item()
    return root / "adapter", loss


def test_transformers_trainer_on_peftkit(site, smoothed_loss, tmp_path):
    adapter_dir, expected_loss = smoothed_loss
    values = run_python(
        site,
        f"""
        import peftkit.compat
        peftkit.compat.install_peft_alias()
        import os, torch, peftkit
        from transformers import Trainer
        from tests.conftest import tiny_llama
        from tests.integrations.trainer_helpers import TokenDataset, lora_tensors, max_abs_diff, training_args

        out = {str(tmp_path)!r}
        config = dict(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")

        def fresh():
            return peftkit.get_peft_model(tiny_llama(tie_word_embeddings=True), peftkit.LoraConfig(**config))

        model = fresh()
        Trainer(model=model, args=training_args(out + "/run"), train_dataset=TokenDataset()).train()
        report(files=sorted(os.listdir(out + "/run/checkpoint-2")))

        resumed = fresh()
        Trainer(model=resumed, args=training_args(out + "/resumed"), train_dataset=TokenDataset()).train(
            resume_from_checkpoint=out + "/run/checkpoint-2"
        )
        report(resume_diff=max_abs_diff(lora_tensors(resumed), lora_tensors(model)))

        scores = iter([1.0, 0.0])
        best = fresh()
        args = training_args(out + "/best", eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
                             metric_for_best_model="score", greater_is_better=True)
        trainer = Trainer(model=best, args=args, train_dataset=TokenDataset(), eval_dataset=TokenDataset(n=4, seed=1),
                          compute_metrics=lambda _: {{"score": next(scores)}})
        trainer.train()
        from safetensors.torch import load_file
        saved = load_file(out + "/best/checkpoint-2/adapter_model.safetensors")
        now = {{k.replace(".default", ""): v for k, v in lora_tensors(best).items()}}
        last = load_file(out + "/best/checkpoint-4/adapter_model.safetensors")
        report(best=trainer.state.best_model_checkpoint.split("/")[-1], best_diff=max_abs_diff(now, saved),
               best_vs_last=max_abs_diff(saved, last))

        smoothing = peftkit.PeftModel.from_pretrained(tiny_llama(), {str(adapter_dir)!r}, is_trainable=True)
        data = TokenDataset()
        batch = {{k: torch.stack([data[i][k] for i in range(4)]) for k in data[0]}}
        trainer = Trainer(model=smoothing, args=training_args(out + "/smooth", label_smoothing_factor=0.1), train_dataset=data)
        with torch.no_grad():
            report(smoothed=trainer.compute_loss(smoothing, batch).item())
        """,
    )
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(values["files"])
    assert "model.safetensors" not in values["files"]
    assert values["resume_diff"] <= 1e-6
    assert values["best"] == "checkpoint-2" and values["best_diff"] == 0.0 and values["best_vs_last"] > 1e-4
    assert abs(values["smoothed"] - expected_loss) <= 1e-6


def test_trl_sft_trainer_with_peft_config(site, tmp_path):
    values = run_python(
        site,
        f"""
        import peftkit.compat
        peftkit.compat.install_peft_alias()
        import os, peftkit
        from datasets import Dataset
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer
        from tests.conftest import tiny_llama
        from tests.integrations.tiny_tokenizer import tiny_texts, tiny_tokenizer

        out = {str(tmp_path)!r}
        args = SFTConfig(output_dir=out, max_steps=3, save_steps=1, per_device_train_batch_size=4, report_to=[],
                         use_cpu=True, logging_steps=1, max_length=16, disable_tqdm=True, dataloader_num_workers=0,
                         learning_rate=5e-2, seed=0)
        trainer = SFTTrainer(
            model=tiny_llama(bos_token_id=1, eos_token_id=2),
            args=args,
            train_dataset=Dataset.from_dict({{"text": tiny_texts()}}),
            processing_class=tiny_tokenizer(),
            peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        )
        report(model_class=type(trainer.model).__module__ + "." + type(trainer.model).__name__,
               trainable=sorted({{n.split(".")[-3] for n, p in trainer.model.named_parameters() if p.requires_grad}}))
        before = {{n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}}
        trainer.train()
        moved = sum(bool((p.detach() - before[n]).abs().max() > 0) for n, p in trainer.model.named_parameters() if n in before)
        report(
            steps=trainer.state.global_step,
            checkpoints=sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")),
            files={{d: sorted(os.listdir(os.path.join(out, d))) for d in os.listdir(out) if d.startswith("checkpoint-")}},
            moved=moved,
            total=len(before),
        )
        """,
    )
    assert values["model_class"] == "peftkit.peft_model.PeftModelForCausalLM"
    assert values["trainable"] == ["lora_A", "lora_B"]
    assert values["steps"] == 3 and values["checkpoints"] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    for files in values["files"].values():
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files)
        assert "model.safetensors" not in files
    assert values["moved"] == values["total"] > 0
