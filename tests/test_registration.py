"""`register_peft_method`: peft's signature, what each method's one call registers, and the checks that
turn a bad registration into a ValueError naming the problem and its fix."""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from pathlib import Path

import pytest
from torch import nn

import peftkit
from peftkit import LoraConfig, PeftConfig, register_peft_method
from peftkit.mapping import (
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_DEFAULT_TARGET_MODULES,
    PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
)
from peftkit.tuners.lora import LoraModel
from peftkit.tuners.lora.layer import Linear as LoraLinear
from peftkit.tuners.tuners_utils import BaseTuner
from peftkit.utils import constants
from peftkit.utils.peft_types import PeftType

TUNERS_DIR = Path(peftkit.__file__).parent / "tuners"
TABLES = (
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
    PEFT_TYPE_TO_DEFAULT_TARGET_MODULES,
)


@pytest.fixture
def registry():
    """The registry tables, restored after the test (registrations made in it are undone). The test's
    stand-in method registers as PeftType.SHIRA, so peftkit's own SHiRA is taken out for the test."""
    saved = [dict(table) for table in TABLES]
    for table in TABLES:
        table.pop(PeftType.SHIRA, None)
    yield
    for table, before in zip(TABLES, saved):
        table.clear()
        table.update(before)


# ----- a stand-in method to register in tests, as PeftType.SHIRA (the `registry` fixture unregisters SHiRA) -----
@dataclass
class ShiraConfig(LoraConfig):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.SHIRA


class ShiraModel(BaseTuner):
    prefix = "shira_"
    layer_classes = {nn.Linear: LoraLinear}

    def _layer_kwargs(self, config: ShiraConfig, key: str) -> dict:
        return {"r": config.r, "lora_alpha": config.lora_alpha}


def register_shira(**overrides) -> None:
    arguments = {"name": "shira", "config_cls": ShiraConfig, "model_cls": ShiraModel, **overrides}
    register_peft_method(**arguments)


# ----- the signature and what is registered -----
def test_signature_accepts_what_peft_accepts():
    from peft.utils.peft_types import register_peft_method as peft_register

    ours = inspect.signature(register_peft_method).parameters
    for name, param in inspect.signature(peft_register).parameters.items():
        assert name in ours, name
        assert ours[name].kind is param.kind and ours[name].default == param.default, name
    assert peftkit.mapping.register_peft_method is register_peft_method


def _register_calls(init_file: Path) -> list[ast.Call]:
    tree = ast.parse(init_file.read_text())
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_peft_method"
    ]


def test_each_method_registers_with_exactly_one_call_in_its_own_package():
    registered_names = set()
    for init_file in sorted(TUNERS_DIR.glob("*/__init__.py")):
        calls = _register_calls(init_file)
        if init_file.parent.name == "mixed":
            assert calls == []
            continue
        assert len(calls) == 1, init_file
        name = next(k.value.value for k in calls[0].keywords if k.arg == "name")
        assert name == init_file.parent.name
        registered_names.add(name)
    assert {t.value.lower() for t in PEFT_TYPE_TO_CONFIG_MAPPING} == registered_names


def test_no_tuner_class_carries_its_own_default_targets():
    for tuner in PEFT_TYPE_TO_TUNER_MAPPING.values():
        assert not hasattr(tuner, "target_module_mapping"), tuner.__name__


def test_prefixes_come_from_the_tuner_classes_and_match_peft():
    import peft.mapping

    for peft_type, tuner in PEFT_TYPE_TO_TUNER_MAPPING.items():
        if issubclass(tuner, BaseTuner):
            assert PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] == tuner.prefix
            assert (
                PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] == peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING[peft_type]
            )


def test_mixed_compatible_methods_are_the_registered_ones_in_peft_order():
    import peft.tuners.mixed.model as peft_mixed

    from peftkit.tuners.mixed import COMPATIBLE_TUNER_TYPES
    from peftkit.tuners.mixed.model import COMPATIBLE_TUNER_TYPES as from_model

    expected = (PeftType.LORA, PeftType.LOHA, PeftType.LOKR, PeftType.ADALORA, PeftType.OFT, PeftType.SHIRA)
    assert COMPATIBLE_TUNER_TYPES == from_model == expected
    # PEFT's mapping is another list: IA3, BEFT, HiRA and RoAd in it are refused by its mixed model, OFT is not
    in_mapping = {PeftType.LORA, PeftType.LOHA, PeftType.LOKR, PeftType.ADALORA, PeftType.SHIRA}
    assert set(PEFT_TYPE_TO_MIXED_MODEL_MAPPING) == in_mapping | {
        PeftType.IA3,
        PeftType.BEFT,
        PeftType.HIRA,
        PeftType.ROAD,
    }
    assert tuple(t for t in peft_mixed.COMPATIBLE_TUNER_TYPES if t in PEFT_TYPE_TO_CONFIG_MAPPING) == expected


@pytest.mark.parametrize(
    "peft_type, constant",
    [
        (PeftType.LORA, "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING"),
        (PeftType.ADALORA, "TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING"),
        (PeftType.IA3, "TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING"),
        (PeftType.HRA, "TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING"),
        (PeftType.OFT, "TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING"),
        (PeftType.BOFT, "TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING"),
        (PeftType.VERA, "TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING"),
        (PeftType.FOURIERFT, "TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING"),
        (PeftType.LOHA, "TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING"),
        (PeftType.LOKR, "TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING"),
        (PeftType.LN_TUNING, "TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING"),
        (PeftType.DELORA, "TRANSFORMERS_MODELS_TO_DELORA_TARGET_MODULES_MAPPING"),
        (PeftType.GRALORA, "TRANSFORMERS_MODELS_TO_GRALORA_TARGET_MODULES_MAPPING"),
        (PeftType.MISS, "TRANSFORMERS_MODELS_TO_MISS_TARGET_MODULES_MAPPING"),
        (PeftType.SHIRA, "TRANSFORMERS_MODELS_TO_SHIRA_TARGET_MODULES_MAPPING"),
        (PeftType.BEFT, "TRANSFORMERS_MODELS_TO_BEFT_TARGET_MODULES_MAPPING"),
        (PeftType.FROD, "TRANSFORMERS_MODELS_TO_FROD_TARGET_MODULES_MAPPING"),
        (PeftType.LILY, "TRANSFORMERS_MODELS_TO_LILY_TARGET_MODULES_MAPPING"),
        (PeftType.PVERA, "TRANSFORMERS_MODELS_TO_PVERA_TARGET_MODULES_MAPPING"),
    ],
)
def test_default_targets_are_the_public_constants(peft_type, constant):
    assert PEFT_TYPE_TO_DEFAULT_TARGET_MODULES[peft_type] is getattr(constants, constant)


def test_methods_without_default_targets_have_none():
    without = set(PEFT_TYPE_TO_CONFIG_MAPPING) - set(PEFT_TYPE_TO_DEFAULT_TARGET_MODULES)
    assert PeftType.TRAINABLE_TOKENS in without and PeftType.PROMPT_TUNING in without


# ----- a good registration -----
def test_a_new_method_is_registered_by_its_one_call(registry):
    register_shira(is_mixed_compatible=True, default_target_modules={"custom": ["lin"]})
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.SHIRA] is ShiraConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.SHIRA] is ShiraModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.SHIRA] == "shira_"
    from peftkit.tuners.mixed import COMPATIBLE_TUNER_TYPES

    assert COMPATIBLE_TUNER_TYPES[-1] is PeftType.SHIRA
    model = nn.Sequential()
    model.add_module("lin", nn.Linear(4, 4))
    tuner = ShiraModel(model, ShiraConfig(), "default")  # target_modules from the registered defaults
    assert tuner.peft_config["default"].target_modules == {"lin"}
    assert isinstance(tuner.model.lin, LoraLinear)


def test_registering_the_same_method_again_changes_nothing(registry):
    register_peft_method(
        name="lora",
        config_cls=LoraConfig,
        model_cls=LoraModel,
        is_mixed_compatible=True,
        default_target_modules=constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
    )
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.LORA] is LoraModel


def test_a_method_built_on_another_may_share_its_prefix(registry):
    class SharingModel(LoraModel):
        """Built on LoRA (like AdaLoRA): its tensors have LoRA's names."""

    register_shira(model_cls=SharingModel)
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.SHIRA] == "lora_"


def test_an_explicit_prefix_equal_to_the_class_attribute_is_accepted(registry):
    register_shira(prefix="shira_")
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.SHIRA] == "shira_"


# ----- bad registrations -----
class NoPrefixModel(BaseTuner):
    layer_classes = {nn.Linear: LoraLinear}


class BadPrefixModel(BaseTuner):
    prefix = "shira"
    layer_classes = {nn.Linear: LoraLinear}


class LoraPrefixModel(BaseTuner):
    prefix = "lora_"
    layer_classes = {nn.Linear: LoraLinear}


class NoDispatchModel(BaseTuner):
    prefix = "shira_"


class MistypedDispatchModel(BaseTuner):
    prefix = "shira_"
    layer_classes = {"Conv2D": LoraLinear}


class NotALayerDispatchModel(BaseTuner):
    prefix = "shira_"
    layer_classes = {nn.Linear: object}


class NotAModuleKeyModel(BaseTuner):
    prefix = "shira_"
    layer_classes = {int: LoraLinear}


class PlainModule(nn.Module):
    """Wraps a model its own way (like adaption prompt): no BaseTuner."""


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"name": "SHIRA"}, "lower case"),
        ({"name": "shira_"}, "without a trailing '_'"),
        (
            {"name": "no_such_method"},
            r"no PeftType.NO_SUCH_METHOD; add it to peftkit.utils.peft_types.PeftType",
        ),
        ({"config_cls": dict}, "is not a PeftConfig subclass"),
        ({"config_cls": LoraConfig}, r"has peft_type .*LORA.*not PeftType.SHIRA; set `self.peft_type"),
        ({"model_cls": NoPrefixModel}, r"NoPrefixModel.prefix = '' is not a valid parameter prefix.*ending"),
        ({"model_cls": BadPrefixModel}, r"BadPrefixModel.prefix = 'shira' is not a valid parameter prefix"),
        (
            {"prefix": "other_"},
            r"prefix='other_' differs from ShiraModel.prefix = 'shira_'.*leave prefix unset",
        ),
        ({"model_cls": LoraPrefixModel}, r"prefix 'lora_' is already used by PeftType.LORA.*choose a prefix"),
        ({"model_cls": NoDispatchModel}, r"NoDispatchModel.layer_classes must map each base-layer type"),
        (
            {"model_cls": MistypedDispatchModel},
            r"Unknown base-layer name 'Conv2D'.*give any other base layer",
        ),
        (
            {"model_cls": NotALayerDispatchModel},
            r"maps .*Linear.* to <class 'object'>, which is not a module",
        ),
        ({"model_cls": NotAModuleKeyModel}, r"key <class 'int'> is not a module class"),
        (
            {"model_cls": None},
            r"model_cls=None is only for prompt-learning methods.*pass the method's BaseTuner",
        ),
        ({"model_cls": "ShiraModel"}, r"is not a class; pass the method's BaseTuner subclass"),
        ({"model_cls": PlainModule, "is_mixed_compatible": True}, r"PlainModule is not a BaseTuner subclass"),
        (
            {"default_target_modules": ["q_proj"]},
            r"default_target_modules must map model_type to module names",
        ),
        ({"default_target_modules": {"llama": 5}}, r"default_target_modules\['llama'\] = 5 is not a list"),
        ({"model_cls": LoraModel}, r"already registered for PeftType.LORA; each method needs its own"),
    ],
)
def test_a_bad_registration_names_the_problem_and_the_fix(registry, overrides, message):
    with pytest.raises(ValueError, match=message):
        register_shira(**overrides)
    assert PeftType.SHIRA not in PEFT_TYPE_TO_CONFIG_MAPPING


def test_registering_a_type_again_with_other_classes_is_an_error(registry):
    @dataclass
    class OtherLoraConfig(LoraConfig):
        """Says it is LoRA, but is not LoRA's config."""

    with pytest.raises(
        ValueError, match=r"PeftType.LORA is already registered.*needs its own PeftType entry"
    ):
        register_peft_method(name="lora", config_cls=OtherLoraConfig, model_cls=LoraModel)
    with pytest.raises(ValueError, match="PeftType.LORA is already registered"):
        register_peft_method(name="lora", config_cls=LoraConfig, model_cls=LoraModel)  # mixed flag differs
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.LORA] is LoraConfig


def test_a_prompt_learning_method_registers_without_a_model_class(registry):
    @dataclass
    class ShiraPromptConfig(peftkit.PromptTuningConfig):
        def __post_init__(self) -> None:
            super().__post_init__()
            self.peft_type = PeftType.SHIRA

    register_shira(config_cls=ShiraPromptConfig, model_cls=None)  # prompt learning: no model class
    assert PeftType.SHIRA not in PEFT_TYPE_TO_PREFIX_MAPPING
    assert isinstance(PeftConfig.from_peft_type(peft_type="SHIRA"), ShiraPromptConfig)
