"""C3A against peft: files move both ways with the same logits, same names, merge/unmerge, the block
size and init options, and the circulant algebra (exact gradients, see test_gradients_*)."""

import copy

import peft
import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit
from peftkit.tuners.c3a.utils import BlockCircularConvolution, get_circulant_fast

METHOD = "C3AConfig"
QV = {"block_size": 8, "target_modules": ["q_proj", "v_proj"]}
GRAD_ATOL = 1e-5  # gradients of the same loss on the same weights (fp32)

CASES = {
    "llama_q_v": Case(tiny_llama, QV),
    "llama_defaults_causal_lm": Case(tiny_llama, {"block_size": 16}, task_type="CAUSAL_LM"),
    "llama_pattern_gaussian": Case(
        tiny_llama,
        {
            "block_size": 16,
            "target_modules": ["q_proj", "v_proj", "down_proj"],
            "block_size_pattern": {"down_proj": 32, "layers.1.self_attn.q_proj": 4},
            "init_weights": "gaussian",
        },
    ),
    "llama_zero_init": Case(tiny_llama, {**QV, "init_weights": True}),
    "llama_kaiming_one_layer": Case(
        tiny_llama, {**QV, "init_weights": "kaiming_uniform", "layers_to_transform": [0]}
    ),
    "llama_bias_c3a_only": Case(lambda: tiny_llama(attention_bias=True), {**QV, "bias": "c3a_only"}),
}
# a trained bias (bias="c3a_only") is not undone by disabling the adapter, so that case is left out there
NO_BIAS = {name: case for name, case in CASES.items() if "bias" not in case.config}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=NO_BIAS,
        truncated_file=checks.ONE,
        default_targets="TRANSFORMERS_MODELS_TO_C3A_TARGET_MODULES_MAPPING",
    )
)


def _pair(config: dict):
    """peft's and peftkit's C3A on the same tiny Llama, with peft's (perturbed) kernels copied into ours."""
    base = tiny_llama()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.C3AConfig(**config))
    perturb_adapter_weights(theirs)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.C3AConfig(**config))
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _kernel_grads(model) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(**llama_inputs()).logits.square().sum().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_gradients_of_the_last_adapted_layers_equal_peft():
    """The kernel gradients of the last layer's adapters equal peft's (no C3A layer lies after them, so
    peft's wrong input gradient (next test) does not enter)."""
    theirs, ours = _pair(QV)
    expected, actual = _kernel_grads(theirs), _kernel_grads(ours)
    assert expected.keys() == actual.keys()
    last = [n for n in actual if ".layers.1." in n]
    assert len(last) == 2
    for name in last:
        assert expected[name].abs().max() > 1e-4, name
        checks.assert_close(actual[name], expected[name], GRAD_ATOL, name)


def test_gradients_are_exact_where_peft_s_are_not():
    """peftkit's backward is the derivative of the forward (gradcheck in float64), for the input and the
    kernel. peft 0.21.2's input gradient uses the transposed circulant blocks: gradcheck fails on it, so
    gradients reaching earlier layers through a C3A layer differ from peft's (a deliberate difference)."""
    gen = torch.Generator().manual_seed(0)
    kernel = torch.randn(3, 2, 4, dtype=torch.float64, generator=gen).requires_grad_()
    x = torch.randn(5, 8, dtype=torch.float64, generator=gen).requires_grad_()
    assert torch.autograd.gradcheck(BlockCircularConvolution.apply, (x, kernel))
    theirs = peft.tuners.c3a.utils.BlockCircularConvolution.apply
    assert not torch.autograd.gradcheck(lambda x: theirs(x, kernel.detach()), (x,), raise_exception=False)
    # the forward is the multiplication by the block-circulant matrix that merging adds, and equals peft's
    dense = get_circulant_fast(kernel)
    checks.assert_close(BlockCircularConvolution.apply(x, kernel), x @ dense.T, 1e-12, "forward vs matrix")
    checks.assert_close(dense, peft.tuners.c3a.utils.get_circulant_fast(kernel), 1e-12, "circulant matrix")


def test_two_active_adapters_add_up_like_their_merge():
    """With two active adapters each adds its own output (equal to merging both). peft 0.21.2 feeds the
    second adapter the first one's output instead (a deliberate difference: its unmerged forward then
    disagrees with its own merge)."""
    base = tiny_llama()
    model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.C3AConfig(**QV))
    model.add_adapter("second", peftkit.C3AConfig(**QV))
    model.base_model.set_adapter(["default", "second"])
    perturb_adapter_weights(model)
    model.eval()
    inputs = llama_inputs()
    with torch.no_grad():
        both = model(**inputs).logits
        assert (both - base(**inputs).logits).abs().max() > 1e-3
        model.merge_adapter()
        checks.assert_close(model(**inputs).logits, both, checks.MERGE_ATOL, "two adapters merged")


def test_bad_block_size_and_unsupported_layers_are_clear_errors():
    with pytest.raises(ValueError, match="factor of the output size.*16.*block size is 32"):
        peftkit.get_peft_model(tiny_llama(), peftkit.C3AConfig(block_size=32, target_modules=["v_proj"]))
    with pytest.raises(TypeError, match="not supported by C3AModel.*torch.nn.Linear"):
        peftkit.get_peft_model(tiny_gpt2(), peftkit.C3AConfig(block_size=8, target_modules=["c_attn"]))
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        peftkit.C3AConfig(block_size=0)
    with pytest.raises(ValueError, match="init_weights must be one of"):
        peftkit.C3AConfig(init_weights="orthogonal")
    # a failed injection leaves the model without adapter layers
    model = tiny_llama()
    with pytest.raises(ValueError):
        peftkit.get_peft_model(model, peftkit.C3AConfig(block_size=32, target_modules=["q_proj", "v_proj"]))
    assert not any("c3a" in name for name, _ in model.named_modules())


def test_init_options_draw_as_peft():
    """Same init schemes as peft: zeros for True; the uniform bounds of Xavier / Kaiming; N(0, 1)."""
    for init, bound in (
        ("xavier_uniform", (3 * 2 / 64) ** 0.5),
        (False, (3 * 2 / 64) ** 0.5),
        ("kaiming_uniform", 32**-0.5),
    ):
        model = peftkit.get_peft_model(tiny_llama(), peftkit.C3AConfig(**{**QV, "init_weights": init}))
        kernel = model.base_model.model.model.layers[0].self_attn.q_proj.c3a_kernel["default"]
        assert 0.5 * bound < kernel.abs().max() <= bound, init
    model = peftkit.get_peft_model(tiny_llama(), peftkit.C3AConfig(**{**QV, "init_weights": True}))
    assert all(p.abs().max() == 0 for n, p in model.named_parameters() if "c3a_kernel" in n)
