"""Super-Tuning against peft: the same magnitude-chosen positions, files both ways (with and without saved
indices), same names, the Supra LoRA branch, merge/unmerge, a sequence classifier."""

import copy

import peft
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import tiny_gpt2, tiny_llama, tiny_llama_seq_cls
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit

METHOD = "SupertuningConfig"
QV = {"target_modules": ["q_proj", "v_proj"], "sparsity": 0.9}

CASES = {
    "llama_q_v": Case(tiny_llama, QV),
    "llama_defaults_causal_lm": Case(tiny_llama, {}, task_type="CAUSAL_LM"),
    "llama_supra_random_init": Case(tiny_llama, {**QV, "r": 2, "init_weights": False}),
    "llama_bottom_supra_alpha": Case(tiny_llama, {**QV, "select_top": False, "r": 4, "lora_alpha": 3.0}),
    "llama_indices_not_saved": Case(tiny_llama, {**QV, "save_precomputed_indices": False}),
    "llama_seq_cls": Case(tiny_llama_seq_cls, {**QV, "r": 2}, task_type="SEQ_CLS"),
}
# unload keeps the trained classifier (modules_to_save), so "unload equals the base model" leaves it out
NO_HEAD = {name: case for name, case in CASES.items() if case.task_type != "SEQ_CLS"}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=NO_HEAD,
        training="llama_supra_random_init",
        bf16=["llama_q_v", "llama_supra_random_init"],
        mixed_batch=["llama_q_v", "llama_supra_random_init"],
        low_cpu_mem_usage="llama_supra_random_init",
        gradients=["llama_q_v", "llama_supra_random_init"],
        merged_as_peft=["llama_q_v", "llama_supra_random_init"],
        default_targets="TRANSFORMERS_MODELS_TO_SUPERTUNING_TARGET_MODULES_MAPPING",
    )
)


def test_indices_are_saved_as_int32_or_left_out(tmp_path):
    """With save_precomputed_indices the 4 adapted layers' positions are in the file, as int32."""
    base = tiny_llama()
    for save, expected in ((True, 4), (False, 0)):
        config = peftkit.SupertuningConfig(**QV, save_precomputed_indices=save)
        peftkit.get_peft_model(copy.deepcopy(base), config).save_pretrained(tmp_path / str(save))
        state = load_file(tmp_path / str(save) / "adapter_model.safetensors")
        indices = {k: v for k, v in state.items() if k.endswith("supertuning_indices")}
        assert len(indices) == expected
        assert all(v.dtype == torch.int32 for v in indices.values())


@pytest.mark.parametrize("case", ["llama_supra_random_init", "llama_bottom_supra_alpha"])
def test_same_positions_and_init_from_a_seed_as_peft(case):
    """The positions (top-k of |W|) and the seeded values / LoRA factors equal peft's exactly."""
    theirs_config, ours_config = checks.config_pair(METHOD, CASES[case])
    base = CASES[case].model_fn()
    torch.manual_seed(5)
    theirs = peft.get_peft_model(copy.deepcopy(base), theirs_config)
    torch.manual_seed(5)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config)
    theirs_state, ours_state = theirs.state_dict(), ours.state_dict()
    assert theirs_state.keys() == ours_state.keys()
    for key, value in theirs_state.items():
        assert ours_state[key].dtype == value.dtype and torch.equal(ours_state[key], value), key


def test_bad_values_and_unsupported_layers_are_clear_errors():
    with pytest.raises(ValueError, match="sparsity"):
        peftkit.SupertuningConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="r must be a positive integer"):
        peftkit.SupertuningConfig(r=0)
    with pytest.raises(ValueError, match="lora_alpha is set but r is None"):
        peftkit.SupertuningConfig(lora_alpha=8)
    with pytest.raises(ValueError, match="lora_dropout"):
        peftkit.SupertuningConfig(r=2, lora_dropout=1.0)
    with pytest.raises(ValueError, match="leaves no trainable entries"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.SupertuningConfig(target_modules=["q_proj"], sparsity=0.9999)
        )
    # GPT-2's Conv1D is not a layer Super-Tuning adapts (peft: nn.Linear only)
    with pytest.raises(TypeError, match="not supported by SupertuningModel"):
        peftkit.get_peft_model(tiny_gpt2(), peftkit.SupertuningConfig(target_modules=["c_attn"]))
    model = peftkit.get_peft_model(tiny_llama(), peftkit.SupertuningConfig(**QV))
    with pytest.raises(ValueError, match="saved for all adapters or none"):
        with pytest.warns(UserWarning, match="save_precomputed_indices=False"):
            other = peftkit.SupertuningConfig(**QV, save_precomputed_indices=False)
        model.add_adapter("other", other)
