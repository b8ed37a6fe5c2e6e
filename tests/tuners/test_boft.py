"""BOFT against peft: files move both ways with the same logits, same parameter names and files,
merge/unmerge/disable, training, and the training-only block dropout."""

import copy

import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case, conv_case

import peftkit

METHOD = "BOFTConfig"
pytestmark = pytest.mark.filterwarnings("ignore:.*(CUDA extension|boft_n_butterfly_factor to 1)")

CASES = {
    "llama_block_size": Case(tiny_llama, {"target_modules": ["q_proj", "v_proj"], "boft_block_size": 4}),
    "llama_block_num": Case(
        tiny_llama, {"target_modules": ["k_proj", "down_proj"], "boft_block_size": 0, "boft_block_num": 4}
    ),
    "llama_defaults_bias": Case(tiny_llama, {"bias": "boft_only"}, task_type="CAUSAL_LM"),
    "conv_one_block": conv_case(
        {"target_modules": ["lin", "conv2d", "conv2d_1x1"], "boft_block_size": 0, "boft_block_num": 1}
    ),
    "conv_blocks": conv_case({"target_modules": ["lin", "conv2d_1x1"], "boft_block_size": 2}),
}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_block_size",
        bf16=None,  # one bf16 rounding (~0.002) from peft; half precision: test_behaviour_parity.py
    )
)


def test_block_errors_name_the_dimension():
    with pytest.raises(ValueError, match=r"in_features \(32\) must be divisible by boft_block_size \(5\)"):
        peftkit.get_peft_model(tiny_llama(), peftkit.BOFTConfig(target_modules=["q_proj"], boft_block_size=5))
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    with pytest.raises(
        ValueError, match=r"Convolutional kernel dimension \(9\) must be divisible by boft_block_size"
    ):
        peftkit.get_peft_model(conv, peftkit.BOFTConfig(target_modules=["0"], boft_block_size=2))
    with pytest.raises(ValueError, match="Either `boft_block_size` or `boft_block_num` must be non-zero"):
        peftkit.BOFTConfig(boft_block_size=0, boft_block_num=0)
    with pytest.raises(ValueError, match="boft_n_butterfly_factor must be a positive integer"):
        peftkit.BOFTConfig(boft_n_butterfly_factor=0)
    butterfly = peftkit.BOFTConfig(target_modules=["0"], boft_block_size=3, boft_n_butterfly_factor=2)
    with pytest.raises(ValueError, match=r"boft_block_size \(3\) must be an even number"):
        peftkit.get_peft_model(torch.nn.Sequential(torch.nn.Linear(12, 2)), butterfly)
    butterfly = peftkit.BOFTConfig(target_modules=["q_proj"], boft_block_size=8, boft_n_butterfly_factor=4)
    with pytest.raises(
        ValueError, match=r"Invalid combination of in_features \(32\), boft_n_butterfly_factor \(4\)"
    ):
        peftkit.get_peft_model(tiny_llama(), butterfly)


def test_block_dropout_acts_in_training_forward_only():
    """boft_dropout=1 replaces every block by the identity in a training forward (only `s` acts); a merge
    done in training mode still uses the full rotation."""
    base = tiny_llama()
    model = peftkit.get_peft_model(
        copy.deepcopy(base),
        peftkit.BOFTConfig(target_modules=["q_proj"], boft_block_size=4, boft_dropout=1.0),
    )
    perturb_adapter_weights(model)
    inputs = llama_inputs()
    with torch.no_grad():
        adapted = model.eval()(**inputs).logits
        scale_only = copy.deepcopy(model)
        for layer in scale_only.modules():
            if isinstance(layer, peftkit.tuners.boft.BOFTLayer):
                layer.boft_R["default"].zero_()
        checks.assert_close(
            model.train()(**inputs).logits, scale_only.eval()(**inputs).logits, 1e-5, "dropped"
        )
        model.merge_adapter()
        checks.assert_close(model.eval()(**inputs).logits, adapted, checks.MERGE_ATOL, "merged in training")


# ----- several butterfly factors -----
# peft 0.21 builds them only where its CUDA block-diagonal extension loads (elsewhere it warns and uses one
# factor). These tests stand in for that extension with `torch.block_diag`, which is what it computes.
BUTTERFLY_CASES = {
    "llama_2_factors": Case(
        tiny_llama,
        {"target_modules": ["q_proj", "v_proj"], "boft_block_size": 4, "boft_n_butterfly_factor": 2},
    ),
    "llama_3_factors_block_num": Case(
        tiny_llama,
        {
            "target_modules": ["o_proj", "down_proj"],
            "boft_block_size": 0,
            "boft_block_num": 8,
            "boft_n_butterfly_factor": 3,
        },
    ),
    "conv_2_factors": conv_case(
        {"target_modules": ["lin", "conv2d_1x1"], "boft_block_size": 2, "boft_n_butterfly_factor": 2}
    ),
}


class _BlockDiagonalExtension:
    """What peft's fbd_cuda computes: (m, n, b, b) blocks -> (m, n*b, n*b) block-diagonal matrices."""

    def forward(self, blocks):
        return [torch.stack([torch.block_diag(*factor) for factor in blocks])]


@pytest.fixture
def peft_with_block_diag_extension(monkeypatch):
    import peft.tuners.boft.layer as peft_boft_layer

    monkeypatch.setattr(peft_boft_layer, "get_fbd_cuda", lambda: _BlockDiagonalExtension())


@pytest.mark.parametrize("case", BUTTERFLY_CASES.values(), ids=BUTTERFLY_CASES.keys())
def test_butterfly_files_move_both_ways(case, tmp_path, peft_with_block_diag_extension):
    checks.check_peft_file_loads_in_peftkit(METHOD, case, str(tmp_path / "from_peft"))
    checks.check_peftkit_file_loads_in_peft(METHOD, case, str(tmp_path / "from_peftkit"))
    checks.check_same_files_as_peft(METHOD, case, tmp_path)
    checks.check_trainable_names(METHOD, case)


@pytest.mark.parametrize("case", BUTTERFLY_CASES.values(), ids=BUTTERFLY_CASES.keys())
def test_butterfly_merge_unmerge_disable(case):
    checks.check_merge_unmerge_disable(METHOD, case)


def test_butterfly_permutations_are_peft_s(peft_with_block_diag_extension):
    """P_j as a matrix (`P[i, perm[i]] = 1`) equals peft's `boft_P` for each factor."""
    import peft

    from peftkit.tuners.boft.layer import butterfly_permutation

    for features, block_size, factors in [(16, 2, 4), (24, 6, 3), (32, 4, 3)]:
        model = torch.nn.Sequential(torch.nn.Linear(features, 3))
        config = peft.BOFTConfig(
            target_modules=["0"], boft_block_size=block_size, boft_n_butterfly_factor=factors
        )
        expected = peft.get_peft_model(model, config).base_model.model[0].boft_P
        for factor in range(1, factors):
            perm, _ = butterfly_permutation(features, block_size, factor)
            assert torch.equal(torch.eye(features)[perm], expected[factor].float())


# ----- files peft wrote without its CUDA extension -----
def _peft_cpu_file(folder, base, adapter_config: dict, monkeypatch):
    """A BOFT adapter saved by peft where its CUDA extension does not build (every CPU machine; forced
    here so that the test means the same on a GPU): its boft_R holds one factor whatever the config says."""
    import json

    import peft
    import peft.tuners.boft.layer as peft_boft_layer
    from safetensors.torch import load_file

    monkeypatch.setattr(peft_boft_layer, "get_fbd_cuda", lambda: None)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.BOFTConfig(**adapter_config))
    perturb_adapter_weights(theirs)
    theirs.eval().save_pretrained(folder)
    saved = json.loads((folder / "adapter_config.json").read_text())
    shapes = {t.shape[0] for k, t in load_file(folder / "adapter_model.safetensors").items() if "boft_R" in k}
    assert saved["boft_n_butterfly_factor"] == adapter_config["boft_n_butterfly_factor"] and shapes == {1}
    return theirs


@pytest.mark.parametrize("factors", [2, 3])
def test_peft_file_with_fewer_factors_than_its_config_loads_and_saves_consistently(
    factors, tmp_path, monkeypatch
):
    import json

    import peft
    from safetensors.torch import load_file

    base = tiny_llama()
    config = {
        "target_modules": ["q_proj", "v_proj"],
        "boft_block_size": 4,
        "boft_n_butterfly_factor": factors,
    }
    theirs = _peft_cpu_file(tmp_path / "peft", base, config, monkeypatch)
    with pytest.warns(
        peftkit.PeftWarning, match=rf"boft_n_butterfly_factor={factors}, but its boft_R tensors hold 1"
    ):
        ours = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft")
    assert ours.peft_config["default"].boft_n_butterfly_factor == 1
    inputs = llama_inputs()
    with torch.no_grad():
        expected = theirs(**inputs).logits
        checks.assert_close(
            ours(**inputs).logits, expected, checks.ROUNDTRIP_ATOL, "peft's CPU file in peftkit"
        )
    ours.save_pretrained(tmp_path / "again")  # what it holds, and a config that says so
    assert (
        json.loads((tmp_path / "again" / "adapter_config.json").read_text())["boft_n_butterfly_factor"] == 1
    )
    tensors = load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert {t.shape[0] for k, t in tensors.items() if "boft_R" in k} == {1}
    again = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "again").eval()
    with torch.no_grad():
        checks.assert_close(again(**inputs).logits, expected, checks.ROUNDTRIP_ATOL, "saved again, in peft")


def test_peft_file_with_fewer_factors_loads_as_a_second_adapter(tmp_path, monkeypatch):
    base = tiny_llama()
    config = {"target_modules": ["q_proj"], "boft_block_size": 4, "boft_n_butterfly_factor": 2}
    theirs = _peft_cpu_file(tmp_path, base, config, monkeypatch)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.BOFTConfig(**config))
    with pytest.warns(peftkit.PeftWarning, match="hold 1 butterfly factor"):
        ours.load_adapter(tmp_path, adapter_name="from_peft")
    ours.set_adapter("from_peft")
    inputs = llama_inputs()
    with torch.no_grad():
        checks.assert_close(
            ours.eval()(**inputs).logits, theirs(**inputs).logits, checks.ROUNDTRIP_ATOL, "second"
        )
    assert ours.peft_config["default"].boft_n_butterfly_factor == 2  # its own adapter keeps its factors
    assert ours.base_model.model.model.layers[0].self_attn.q_proj.boft_R["default"].shape[0] == 2
