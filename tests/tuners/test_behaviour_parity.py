"""Behaviours a broad peft-vs-peftkit compatibility run found different, each checked against peft 0.21.2.

Every test builds the same situation in both libraries and asserts that peftkit answers as peft does,
or (where peftkit deliberately differs, listed in the README) that it refuses with a clear error.
"""

from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
from tests.conftest import perturb_adapter_weights, tiny_llama
from torch import nn

import peftkit

LIBS = (peft, peftkit)
ATOL = 1e-5  # fp32: same weights, same input


class TwoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.lin(x)))


class GroupedConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, groups=2)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3)))


def _both(make_base, config_name: str, seed: int = 0, **config_kwargs):
    """The same adapter in peft and peftkit on copies of one base (peft's weights copied into peftkit)."""
    torch.manual_seed(seed)
    base = make_base()
    theirs = peft.get_peft_model(
        copy.deepcopy(base), getattr(peft, config_name)(**copy.deepcopy(config_kwargs))
    )
    ours = peftkit.get_peft_model(
        copy.deepcopy(base), getattr(peftkit, config_name)(**copy.deepcopy(config_kwargs))
    )
    perturb_adapter_weights(theirs, seed=seed + 1)
    ours.load_state_dict(theirs.state_dict())
    return base, theirs.eval(), ours.eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ----- disable_adapter restores the state it found -----
def test_disable_adapter_context_keeps_layers_disabled_before_it_as_peft():
    x = torch.randn(3, 8)
    base, theirs, ours = _both(TwoLinear, "LoraConfig", target_modules=["lin"])
    expected_base = base(x)
    for model in (theirs, ours):
        model.disable_adapter_layers()
        with model.disable_adapter():
            pass
        assert _max_diff(model(x), expected_base) <= ATOL, "layers disabled before the block stay disabled"
        model.enable_adapter_layers()
        assert _max_diff(model(x), expected_base) > 1e-3


def test_disable_adapter_context_with_some_layers_disabled_warns_and_enables_all_as_peft():
    x = torch.randn(3, 8)
    _, theirs, ours = _both(TwoLinear, "LoraConfig", target_modules=["lin", "out"])
    outputs = []
    for model in (theirs, ours):
        model.base_model.model.lin.enable_adapters(False)
        with (
            pytest.warns(
                UserWarning, match="some adapter layers that are enabled and others that are disabled"
            ),
            model.disable_adapter(),
        ):
            pass
        assert (
            not model.base_model.model.lin.disable_adapters
            and not model.base_model.model.out.disable_adapters
        )
        outputs.append(model(x))
    assert _max_diff(outputs[0], outputs[1]) <= ATOL


def test_disable_adapter_context_enables_again_after_it():
    x = torch.randn(3, 8)
    base, _, ours = _both(TwoLinear, "LoraConfig", target_modules=["lin"])
    adapted = ours(x)
    with ours.disable_adapter():
        assert _max_diff(ours(x), base(x)) <= ATOL
    assert _max_diff(ours(x), adapted) <= ATOL


# ----- delete_adapter with the adapter merged -----
@pytest.mark.parametrize("config_name", ["LoraConfig", "LoHaConfig", "IA3Config"])
def test_deleting_a_merged_adapter_is_refused_as_peft_refuses(config_name):
    x = torch.randn(3, 8)
    kwargs = {"target_modules": ["lin"]}
    if config_name == "IA3Config":
        kwargs["feedforward_modules"] = []
    _, theirs, ours = _both(TwoLinear, config_name, **kwargs)
    for lib, model in zip(LIBS, (theirs, ours)):
        model.add_adapter("other", getattr(lib, config_name)(**kwargs))
    merged = ours(x)
    for model in (theirs, ours):
        model.merge_adapter()
        with pytest.raises(ValueError, match="default"):
            model.delete_adapter("default")
    assert "unmerge_adapter()" in _error_text(lambda: ours.delete_adapter("default"))
    assert _max_diff(ours(x), merged) <= 1e-4, "a refused delete leaves the model as it was"
    ours.unmerge_adapter()
    ours.delete_adapter("default")
    assert "default" not in ours.peft_config


def _error_text(call) -> str:
    with pytest.raises(ValueError) as caught:
        call()
    return str(caught.value)


def test_functional_delete_of_a_merged_adapter_is_refused():
    from peftkit.functional import delete_adapter

    model = peftkit.get_peft_model(TwoLinear(), peftkit.LoraConfig(target_modules=["lin"]))
    model.merge_adapter()
    with pytest.raises(ValueError, match=r"\['default'\].*merged"):
        delete_adapter(model.base_model.model, "default", prefix="lora_")


# ----- grouped convolutions -----
@pytest.mark.parametrize(
    "config_name, extra",
    [
        ("LoHaConfig", {}),
        ("LoKrConfig", {}),
        ("LoHaConfig", {"use_effective_conv2d": True}),
        ("LoKrConfig", {"use_effective_conv2d": True, "r": 1}),
    ],
)
def test_loha_and_lokr_on_grouped_convolutions_equal_peft(config_name, extra):
    x = torch.randn(2, 4, 6, 6)
    _, theirs, ours = _both(GroupedConvNet, config_name, target_modules=["conv"], **extra)
    expected = theirs(x)
    assert _max_diff(ours(x), expected) <= ATOL
    for model in (theirs, ours):
        model.merge_adapter()
    assert _max_diff(ours(x), theirs(x)) <= 1e-4
    assert _max_diff(ours(x), expected) <= 1e-4  # merged equals unmerged


def test_dora_on_a_grouped_convolution_is_refused_naming_the_layer():
    with pytest.raises(
        ValueError, match=r"DoRA is not supported on a grouped convolution.*groups=2.*use_dora=False"
    ):
        peftkit.get_peft_model(
            GroupedConvNet(), peftkit.LoraConfig(target_modules=["conv"], r=4, use_dora=True)
        )
    # plain LoRA on the same layer works and equals peft
    x = torch.randn(2, 4, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both warn that a grouped conv cannot be merged
        _, theirs, ours = _both(GroupedConvNet, "LoraConfig", target_modules=["conv"], r=4)
    assert _max_diff(ours(x), theirs(x)) <= ATOL


# ----- OFT / BOFT in half precision on the CPU -----
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "config_name, extra",
    [
        ("OFTConfig", {"r": 0, "oft_block_size": 4, "use_cayley_neumann": False}),
        ("BOFTConfig", {"boft_block_size": 4}),
    ],
)
def test_oft_and_boft_run_in_half_precision_on_cpu_as_peft(dtype, config_name, extra):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)
    x = torch.randn(3, 16).to(dtype)
    models = []
    for lib in LIBS:
        config = getattr(lib, config_name)(target_modules=["0"], init_weights=False, **extra)
        models.append(lib.get_peft_model(copy.deepcopy(base), config, autocast_adapter_dtype=False))
    theirs, ours = models
    ours.load_state_dict(theirs.state_dict())
    expected = theirs(x)
    assert expected.dtype == ours(x).dtype == dtype
    # half precision: one rounding of an O(1) output differs by up to a few units of 2^-8 (bf16)
    assert _max_diff(ours(x), expected) <= 1e-2
    ours.merge_adapter()
    assert _max_diff(ours(x), expected) <= 5e-2
    ours.unmerge_adapter()
    assert _max_diff(ours(x), expected) <= 5e-2


# ----- target_parameters alone -----
def test_target_parameters_without_target_modules_on_a_custom_model_as_peft(tmp_path):
    x = torch.randn(3, 8)
    kwargs = {"target_modules": None, "target_parameters": ["lin.weight"], "init_lora_weights": False}
    base, theirs, ours = _both(TwoLinear, "LoraConfig", **kwargs)
    assert _max_diff(ours(x), theirs(x)) <= ATOL
    assert _max_diff(ours(x), base(x)) > 1e-3
    assert ours.peft_config["default"].target_modules is None
    ours.save_pretrained(tmp_path)
    reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert _max_diff(reloaded(x), ours(x)) <= ATOL


# ----- modules_to_save that target_modules also match -----
@pytest.mark.parametrize(
    "config_name, extra",
    [
        ("FourierFTConfig", {"n_frequency": 10}),
        ("IA3Config", {"feedforward_modules": []}),
        ("LoHaConfig", {}),
        ("LoKrConfig", {}),
        ("HRAConfig", {}),
    ],
)
def test_modules_to_save_wins_over_target_modules_as_in_peft(config_name, extra):
    x = torch.randn(3, 8)
    kwargs = {"target_modules": ["lin", "out"], "modules_to_save": ["out"], **extra}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, theirs, ours = _both(TwoLinear, config_name, **kwargs)
    assert any("not adapted" in str(w.message) for w in caught), "peftkit says which modules it left out"
    for model in (theirs, ours):
        assert type(model.base_model.model.out).__name__ == "ModulesToSaveWrapper"
    assert type(ours.base_model.model.lin).__name__ == type(theirs.base_model.model.lin).__name__
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    assert _max_diff(ours(x), theirs(x)) <= ATOL


# ----- VeRA's projections are shared between adapters -----
def test_vera_adapters_with_the_same_shapes_share_their_projection_tensors_as_peft():
    answers = []
    for lib in LIBS:
        torch.manual_seed(0)
        model = lib.get_peft_model(TwoLinear(), lib.VeraConfig(target_modules=["lin", "out"], r=4))
        model.add_adapter("other", lib.VeraConfig(target_modules=["lin", "out"], r=4))
        lin, out = model.base_model.model.lin, model.base_model.model.out
        answers.append(
            (
                lin.vera_A["default"] is lin.vera_A["other"],
                lin.vera_B["default"] is lin.vera_B["other"],
                lin.vera_A["other"].data_ptr() == out.vera_A["other"].data_ptr(),
            )
        )
    assert answers[1] == answers[0] == (True, True, True)


def test_vera_adapter_of_another_rank_gets_projections_of_its_own_rank():
    model = peftkit.get_peft_model(TwoLinear(), peftkit.VeraConfig(target_modules=["lin"], r=4))
    model.add_adapter("small", peftkit.VeraConfig(target_modules=["lin"], r=2))
    lin = model.base_model.model.lin
    assert lin.vera_A["small"].shape[0] == 2 and lin.vera_A["default"].shape[0] == 4
    model.set_adapter("small")
    assert model(torch.randn(2, 8)).shape == (2, 2)  # peft 0.21.2 fails here (it reuses the rank-4 pair)


# ----- get_peft_model twice -----
def test_a_second_get_peft_model_on_an_adapted_model_warns_as_peft():
    for lib in LIBS:
        model = lib.get_peft_model(TwoLinear(), lib.LoraConfig(target_modules=["lin"]))
        with pytest.warns(UserWarning, match="modify a model with PEFT for a second time"):
            lib.get_peft_model(
                model.base_model.model, lib.LoraConfig(target_modules=["out"]), adapter_name="b"
            )


def test_an_adapter_name_inside_the_method_prefix_warns_as_peft():
    for lib in LIBS:
        with pytest.warns(UserWarning, match="should not be contained in the prefix"):
            lib.get_peft_model(TwoLinear(), lib.LoraConfig(target_modules=["lin"]), adapter_name="lora")


# ----- model cards -----
def _front_matter(folder) -> list[str]:
    text = (folder / "README.md").read_text()
    return text.split("---")[1].strip().splitlines()


@pytest.mark.parametrize("make_base", [TwoLinear, tiny_llama], ids=["custom", "transformers"])
def test_model_card_front_matter_names_a_base_model_only_where_peft_does(tmp_path, make_base):
    target = ["lin"] if make_base is TwoLinear else ["q_proj"]
    cards = {}
    for lib in LIBS:
        model = lib.get_peft_model(make_base(), lib.LoraConfig(target_modules=target))
        model.save_pretrained(tmp_path / lib.__name__)
        lines = _front_matter(tmp_path / lib.__name__)
        cards[lib.__name__] = {line.split(":")[0].strip("- '\"") for line in lines}
    theirs, ours = cards["peft"], cards["peftkit"] - {"peftkit"}  # our own tag says who wrote the file
    assert ours == theirs
    assert ("base_model" in ours) == (make_base is not TwoLinear)
