"""OFT against peft: files move both ways with the same logits, same parameter names and files,
merge/unmerge/disable, training, Cayley variants (exact, Neumann, COFT, shared block), and peft's
Conv2d patch rotation."""

import copy

import peft
import pytest
import torch
from tests.conftest import conv_net, llama_inputs, perturb_adapter_weights, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case, conv_case, conv_inputs, conv_output

import peftkit

METHOD = "OFTConfig"
pytestmark = pytest.mark.filterwarnings("ignore:Invalid `oft_block_size`")

CASES = {
    "llama_neumann": Case(tiny_llama, {"target_modules": ["q_proj", "v_proj"], "oft_block_size": 8, "r": 0}),
    "llama_exact_cayley_r": Case(
        tiny_llama,
        {"target_modules": ["k_proj", "down_proj"], "r": 4, "oft_block_size": 0, "use_cayley_neumann": False},
    ),
    "llama_coft": Case(
        tiny_llama, {"target_modules": ["q_proj", "up_proj"], "oft_block_size": 4, "coft": True, "eps": 0.3}
    ),
    "llama_block_share_terms": Case(
        tiny_llama,
        {
            "target_modules": ["o_proj"],
            "oft_block_size": 8,
            "block_share": True,
            "num_cayley_neumann_terms": 3,
        },
    ),
    "llama_defaults_bias": Case(tiny_llama, {"bias": "oft_only"}, task_type="CAUSAL_LM"),
    # block size 3 is adjusted per layer: 2 (lin, emb, conv2d_1x1), 3 (conv2d: 1 x 3 x 3 patches)
    "conv_layers": conv_case({"target_modules": ["emb", "lin", "conv2d", "conv2d_1x1"], "oft_block_size": 3}),
}
# merged == unmerged holds except on peft's k x k Conv2d patch rotation (see test_conv2d_kxk_* below)
MERGE_CASES = {
    **{k: v for k, v in CASES.items() if k != "conv_layers"},
    "conv_1x1_emb_lin": conv_case({"target_modules": ["emb", "lin", "conv2d_1x1"], "oft_block_size": 2}),
}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_neumann",
        merge=MERGE_CASES,
        mixed_batch=None,  # with two adapters against peft (tested below)
    )
)


def test_conv2d_kxk_equals_peft_merged_and_unmerged():
    """peft's unmerged k x k Conv2d forward is a fold of rotated patches, not the merged convolution: peftkit
    gives peft's numbers in both modes (1e-5), and the two modes do differ (by more than 1e-2)."""
    case = conv_case({"target_modules": ["conv2d"], "oft_block_size": 3})
    base = conv_net()
    theirs = checks.peft_model(METHOD, case, base)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.OFTConfig(**case.config)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    inputs = conv_inputs()
    with torch.no_grad():
        unmerged = conv_output(theirs, inputs)
        checks.assert_close(conv_output(ours, inputs), unmerged, checks.ROUNDTRIP_ATOL, "unmerged")
        theirs.merge_adapter()
        ours.merge_adapter()
        merged = conv_output(theirs, inputs)
        checks.assert_close(conv_output(ours, inputs), merged, checks.ROUNDTRIP_ATOL, "merged")
        assert (merged - unmerged).abs().max() > 1e-2
        ours.unmerge_adapter()
        checks.assert_close(conv_output(ours, inputs), unmerged, checks.ROUNDTRIP_ATOL, "unmerged again")


def test_coft_keeps_each_block_in_its_ball():
    """After a forward, each block's ||Q||_F is at most eps / sqrt(number of blocks) (1e-6)."""
    config = peftkit.OFTConfig(target_modules=["q_proj"], oft_block_size=4, coft=True, eps=0.2)
    model = peftkit.get_peft_model(tiny_llama(), config)
    perturb_adapter_weights(model, scale=1.0)
    with torch.no_grad():
        model(**llama_inputs())
    weight = model.base_model.model.model.layers[0].self_attn.q_proj.oft_R["default"].weight
    norms = weight.norm(dim=1) * 2**0.5
    assert norms.max() <= 0.2 / weight.shape[0] ** 0.5 + 1e-6


def test_rotation_is_orthogonal_with_exact_cayley():
    config = peftkit.OFTConfig(target_modules=["q_proj"], oft_block_size=8, use_cayley_neumann=False)
    model = peftkit.get_peft_model(tiny_llama(), config)
    perturb_adapter_weights(model, scale=1.0)
    blocks = model.base_model.model.model.layers[0].self_attn.q_proj.oft_R["default"].blocks()
    eye = torch.eye(8).expand_as(blocks)
    torch.testing.assert_close(blocks @ blocks.transpose(1, 2), eye, atol=1e-5, rtol=0)


def test_block_size_adjustment_warns_and_r_adjusts():
    with pytest.warns(
        peftkit.PeftWarning, match=r"Invalid `oft_block_size` \(5\)! Adjusted `oft_block_size` to \(4\)"
    ):
        model = peftkit.get_peft_model(
            tiny_llama(), peftkit.OFTConfig(target_modules=["q_proj"], oft_block_size=5)
        )
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert (layer.r["default"], layer.oft_block_size["default"]) == (8, 4)
    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.OFTConfig(target_modules=["q_proj"], r=5, oft_block_size=0)
    )
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert (layer.r["default"], layer.oft_block_size["default"]) == (4, 8)


def test_config_errors():
    with pytest.raises(ValueError, match="Either `r` or `oft_block_size` must be non-zero"):
        peftkit.OFTConfig(r=0, oft_block_size=0)
    with pytest.raises(ValueError, match="either r \\(4\\) or oft_block_size \\(4\\)"):
        peftkit.OFTConfig(r=4, oft_block_size=4)
    with pytest.raises(ValueError, match="bias must be one of"):
        peftkit.OFTConfig(bias="lora_only")
    with pytest.raises(ValueError, match="dilation > 1"):
        model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, dilation=2))
        peftkit.get_peft_model(model, peftkit.OFTConfig(target_modules=["0"], oft_block_size=2))


def test_two_adapters_and_mixed_batch_equal_peft():
    """Two OFT adapters: each alone equals peft (1e-5); a mixed batch gives each sample its adapter."""
    base = tiny_llama()
    a, b = (
        {"target_modules": ["q_proj", "v_proj"], "oft_block_size": 8},
        {"target_modules": ["v_proj"], "oft_block_size": 4},
    )
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.OFTConfig(**a), adapter_name="first")
    theirs.add_adapter("second", peft.OFTConfig(**b))
    theirs.base_model.set_adapter(["first", "second"])
    perturb_adapter_weights(theirs)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.OFTConfig(**a), adapter_name="first")
    ours.add_adapter("second", peftkit.OFTConfig(**b))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.eval()
    ours.eval()
    inputs = llama_inputs(batch=3)
    expected = []
    with torch.no_grad():
        for name in ("first", "second"):
            theirs.set_adapter(name)
            ours.set_adapter(name)
            out = theirs(**inputs).logits
            checks.assert_close(ours(**inputs).logits, out, checks.ROUNDTRIP_ATOL, name)
            expected.append(out)
        mixed = ours(**inputs, adapter_names=["second", "first", "__base__"]).logits
        checks.assert_close(mixed[0], expected[1][0], checks.BASE_ATOL, "sample 0: second")
        checks.assert_close(mixed[1], expected[0][1], checks.BASE_ATOL, "sample 1: first")
        checks.assert_close(mixed[2], base(**inputs).logits[2], checks.BASE_ATOL, "sample 2: base")
