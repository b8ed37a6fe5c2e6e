"""The LoRA-family public API has peft's names, import paths, config fields and signatures."""

import dataclasses
import inspect

import pytest

import peftkit

TOP_LEVEL = [
    "BdLoraConfig",
    "EvaConfig",
    "LoftQConfig",
    "TrainableTokensConfig",
    "TrainableTokensModel",
    "get_eva_state_dict",
    "initialize_lora_eva_weights",
    "replace_lora_weights_loftq",
]


def test_top_level_names():
    import peft

    for name in TOP_LEVEL:
        assert hasattr(peft, name), name  # the oracle has it, so a drop-in must
        assert hasattr(peftkit, name), name


@pytest.mark.parametrize(
    "path, name",
    [
        ("tuners.lora.config", "CordaConfig"),
        ("tuners.lora.config", "EvaConfig"),
        ("tuners.lora.config", "LoftQConfig"),
        ("tuners.lora.config", "BdLoraConfig"),
        ("tuners.lora", "ParamWrapper"),
        ("tuners.lora.corda", "preprocess_corda"),
        ("tuners.lora.eva", "prepare_model_inputs_fn_language_modeling"),
        ("tuners.lora.eva", "prepare_layer_inputs_fn_language_modeling"),
        ("tuners.lora.eva", "forward_fn_dict"),
        ("optimizers", "create_loraplus_optimizer"),
        ("optimizers", "create_lorafa_optimizer"),
    ],
)
def test_module_paths(path, name):
    import importlib

    assert hasattr(importlib.import_module(f"peft.{path}"), name)
    assert hasattr(importlib.import_module(f"peftkit.{path}"), name)


def _fields(cls):
    return {
        f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        for f in dataclasses.fields(cls)
    }


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ("peftkit.BdLoraConfig", "peft.BdLoraConfig"),
        ("peftkit.EvaConfig", "peft.EvaConfig"),
        ("peftkit.LoftQConfig", "peft.LoftQConfig"),
        ("peftkit.tuners.lora.config.CordaConfig", "peft.tuners.lora.config.CordaConfig"),
        ("peftkit.TrainableTokensConfig", "peft.TrainableTokensConfig"),
    ],
)
def test_sub_config_fields_and_defaults(ours, theirs):
    import importlib

    def resolve(dotted):
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)

    assert _fields(resolve(ours)) == _fields(resolve(theirs))


@pytest.mark.parametrize(
    "name",
    ["get_eva_state_dict", "initialize_lora_eva_weights", "replace_lora_weights_loftq"],
)
def test_function_signatures(name):
    import peft

    ours, theirs = inspect.signature(getattr(peftkit, name)), inspect.signature(getattr(peft, name))
    assert list(ours.parameters) == list(theirs.parameters)
    for (pname, a), b in zip(ours.parameters.items(), theirs.parameters.values()):
        if not callable(b.default):  # default callables are each library's own functions
            assert a.default == b.default, pname


def test_preprocess_corda_signature():
    from peft.tuners.lora.corda import preprocess_corda as theirs

    from peftkit.tuners.lora.corda import preprocess_corda as ours

    assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters)
