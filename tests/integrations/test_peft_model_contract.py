"""What transformers' Trainer, generate and FSDP/DeepSpeed saving expect of a PeftModel."""

from __future__ import annotations

import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama
from tests.integrations.trainer_helpers import adapter_file, max_abs_diff

import peftkit

CONFIG = dict(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def _model(base=None):
    return peftkit.get_peft_model(base if base is not None else tiny_llama(), peftkit.LoraConfig(**CONFIG))


def test_base_model_attributes_fall_through():
    base = tiny_llama()
    base.is_quantized = True
    base.hf_device_map = {"": "cpu"}
    model = _model(base)
    assert model.config is base.config and model.generation_config is base.generation_config
    assert model.is_quantized is True and model.hf_device_map == {"": "cpu"}
    assert model.get_input_embeddings() is base.get_input_embeddings()
    assert model.get_output_embeddings() is base.get_output_embeddings()
    assert model.main_input_name == "input_ids"
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert model.num_parameters(only_trainable=True) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    model.enable_input_require_grads()
    assert base._require_grads_hooks
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert base.model.gradient_checkpointing
    # attributes the base does not have are missing, as on the base (getattr(model, x, default) works)
    plain = _model()
    assert not hasattr(plain, "hf_device_map") and getattr(plain, "is_quantized", False) is False


def test_adapter_bookkeeping_transformers_reads():
    model = _model()
    assert model._hf_peft_config_loaded is True
    assert model.active_adapters == ["default"] and isinstance(model.active_adapters, list)
    assert model.active_peft_config is model.peft_config["default"]
    model.add_adapter("other", peftkit.LoraConfig(**CONFIG))
    model.set_adapter("other")
    assert model.active_adapters == ["other"] and model.active_peft_config is model.peft_config["other"]


def test_save_pretrained_filters_a_full_state_dict_handed_in(tmp_path):
    """FSDP/DeepSpeed gather the full state dict and hand it to save_pretrained: only the adapter part of
    *that* dict is written (not the model's own, possibly sharded, tensors)."""
    model = _model()
    full = {k: v.clone() for k, v in model.state_dict().items()}
    for key in full:
        if "lora_B" in key:
            full[key] = torch.full_like(full[key], 0.5)
    model.save_pretrained(tmp_path, state_dict=full)
    saved = adapter_file(tmp_path)
    expected = {k.replace(".default", ""): v for k, v in full.items() if ".lora_" in k}
    assert max_abs_diff(saved, expected) == 0.0
    assert all((v == 0.5).all() for k, v in saved.items() if "lora_B" in k)  # not the model's zeros
    model.save_pretrained(tmp_path / "other_rank", is_main_process=False)
    assert not (tmp_path / "other_rank").exists()


def test_generate_uses_the_adapter():
    pristine = tiny_llama()
    model = _model().eval()
    perturb_adapter_weights(model, scale=2.0)
    inputs = llama_inputs(batch=2, length=5)
    inputs["attention_mask"][:] = 1
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    adapted = model.generate(**inputs, **kwargs)
    with model.disable_adapter():
        plain = model.generate(**inputs, **kwargs)
    base_out = pristine.generate(**inputs, **kwargs)
    assert adapted.shape == (2, 11)
    assert torch.equal(plain, base_out) and not torch.equal(adapted, plain)
