"""Issue 9 for every layer method: a wrong-base adapter and a corrupted file get the same clear errors
as LoRA's (the checks live in the shared persistence code, so each method inherits them)."""

import pytest
import torch
from tests.conftest import perturb_adapter_weights, tiny_llama

import peftkit
from peftkit.utils.warnings import AdapterLoadError, PeftWarning

CONFIGS = {
    "LoraConfig": {"target_modules": ["q_proj", "v_proj"]},
    "IA3Config": {"target_modules": ["q_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    "LoHaConfig": {"target_modules": ["q_proj", "v_proj"], "r": 4},
    "LoKrConfig": {"target_modules": ["q_proj", "v_proj"], "r": 4},
    "OFTConfig": {"target_modules": ["q_proj", "v_proj"], "r": 0, "oft_block_size": 8},
    "BOFTConfig": {"target_modules": ["q_proj", "v_proj"], "boft_block_size": 8},
    "AdaLoraConfig": {"target_modules": ["q_proj", "v_proj"], "init_r": 4, "target_r": 2, "total_step": 10},
    "VeraConfig": {"target_modules": ["q_proj", "o_proj"], "r": 4},
    "FourierFTConfig": {"target_modules": ["q_proj", "v_proj"], "n_frequency": 16},
    "HRAConfig": {"target_modules": ["q_proj", "v_proj"], "r": 4},
    "LNTuningConfig": {"target_modules": ["input_layernorm"]},
    "DeloraConfig": {"target_modules": ["q_proj", "v_proj"], "r": 4},
    "GraloraConfig": {"target_modules": ["q_proj", "v_proj"], "r": 4},
    "MissConfig": {"target_modules": ["q_proj", "v_proj"], "r": 4},
    "ShiraConfig": {"target_modules": ["q_proj", "v_proj"], "r": 2},
    "BeftConfig": {"target_modules": ["v_proj"]},
    "FrodConfig": {"target_modules": ["q_proj", "v_proj"], "sparse_rate": 0.05, "progressbar": False},
    "LilyConfig": {"target_modules": ["q_proj", "v_proj"], "r": 4},
    "PveraConfig": {"target_modules": ["q_proj", "o_proj"], "r": 4},
    "DeftConfig": {"target_modules": ["q_proj", "v_proj"], "r": 4},
    "ShadowConfig": {"r": 4, "shadow_dropout": 0.0},
    "SupertuningConfig": {"target_modules": ["q_proj", "v_proj"], "sparsity": 0.9, "r": 2},
    "RandLoraConfig": {"target_modules": ["q_proj", "v_proj"], "r": 4},
    "TinyLoraConfig": {"target_modules": ["q_proj", "v_proj"], "r": 2, "u": 4},
    "VBLoRAConfig": {"target_modules": ["q_proj", "v_proj"], "r": 2, "num_vectors": 8, "vector_length": 8},
}


@pytest.fixture(params=sorted(CONFIGS), scope="module")
def saved(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    base = tiny_llama()
    base.config._name_or_path = "org/tiny-llama"
    model = peftkit.get_peft_model(base, getattr(peftkit, request.param)(**CONFIGS[request.param]))
    perturb_adapter_weights(model)
    model.save_pretrained(folder)
    return request.param, folder


def test_adapter_for_another_base_names_key_and_shapes(saved):
    name, folder = saved
    other = tiny_llama(hidden_size=48, num_attention_heads=4, intermediate_size=96)
    if name == "FourierFTConfig":
        # its spectrum is (n_frequency,) for any layer size: no shape can tell the base apart, so the
        # recorded base model's name is the only signal (it warns when names differ)
        other.config._name_or_path = "org/another-base"
        with pytest.warns(PeftWarning, match="org/another-base"):
            peftkit.PeftModel.from_pretrained(other, folder)
        return
    with pytest.raises(AdapterLoadError, match=r"expects .* holds|Size mismatch") as err:
        peftkit.PeftModel.from_pretrained(other, folder)
    assert "different base model" in str(err.value) or "another" in str(err.value)
    assert not any(".default" in n for n, _ in other.named_parameters())  # the model was given back as it was


def test_truncated_file_names_the_file(saved):
    name, folder = saved
    path = folder / "adapter_model.safetensors"
    data = path.read_bytes()
    broken = folder.parent / f"{name}-broken"
    broken.mkdir(exist_ok=True)
    (broken / "adapter_config.json").write_text((folder / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterLoadError, match="adapter_model.safetensors"):
        peftkit.PeftModel.from_pretrained(tiny_llama(), broken)


def test_targets_matching_nothing_name_them(saved):
    name, _ = saved
    kwargs = dict(CONFIGS[name], target_modules=["no_such_module"])
    kwargs.pop("feedforward_modules", None)
    with pytest.raises(ValueError, match="no_such_module"):
        peftkit.get_peft_model(tiny_llama(), getattr(peftkit, name)(**kwargs))


def test_round_trip_reproduces_outputs(saved):
    name, folder = saved
    model = peftkit.get_peft_model(tiny_llama(), getattr(peftkit, name)(**CONFIGS[name]))
    perturb_adapter_weights(model)
    loaded = peftkit.PeftModel.from_pretrained(tiny_llama(), folder)
    ids = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits, atol=1e-5, rtol=0
        )
