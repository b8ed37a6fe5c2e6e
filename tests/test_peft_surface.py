"""The smaller public names peft code reaches for, each compared with what peft 0.21.2 answers."""

from __future__ import annotations

import importlib
import json
import warnings

import pytest
import torch
from torch import nn

import peftkit

# module path -> names that peft has there and user code or other libraries import
PATHS = {
    "utils": ["infer_device", "PeftError", "NoMatchingPeftModuleError", "AuxiliaryTrainingWrapper",
              "TrainableTokensWrapper", "ModulesToSaveWrapper", "_get_submodules"],
    "utils.other": ["ModulesToSaveWrapper", "AuxiliaryTrainingWrapper", "TrainableTokensWrapper", "infer_device"],
    "tuners.tuners_utils": ["NoMatchingPeftModuleError", "BaseTunerLayer", "BaseTuner"],
    "tuners.lora.layer": ["ParamWrapper", "LoraLayer", "Linear"],
    "tuners.lora.variants": ["DoraLinearVariant"] if False else [],
    "tuners._buffer_dict": ["BufferDict"],
    "config": ["__version__", "PeftConfig"],
}  # fmt: skip


@pytest.mark.parametrize("path, name", [(p, n) for p, names in PATHS.items() for n in names])
def test_name_is_where_peft_has_it(path, name):
    theirs = importlib.import_module(f"peft.{path}")
    ours = importlib.import_module(f"peftkit.{path}")
    assert hasattr(theirs, name), f"peft.{path} has no {name}: the list is wrong"
    assert hasattr(ours, name), f"peftkit.{path} lacks {name}"


def test_lora_variants_is_a_module():
    assert importlib.import_module("peftkit.tuners.lora.variants").__name__ == "peftkit.tuners.lora.variants"


def test_wrappers_share_the_base_class_as_in_peft():
    from peftkit.utils import AuxiliaryTrainingWrapper, ModulesToSaveWrapper, TrainableTokensWrapper

    assert issubclass(ModulesToSaveWrapper, AuxiliaryTrainingWrapper)
    assert issubclass(TrainableTokensWrapper, AuxiliaryTrainingWrapper)
    assert ModulesToSaveWrapper is not AuxiliaryTrainingWrapper


def test_infer_device_matches_peft():
    import peft

    assert peftkit.utils.infer_device() == peft.utils.infer_device()


def test_import_utils_answer_as_peft():
    import peft.import_utils as theirs

    import peftkit.import_utils as ours

    # a transformers-internal tensor-parallel probe peft keeps for itself
    not_offered = {"is_transformers_dtensor_tp"}
    names = sorted(n for n in dir(theirs) if n.startswith("is_") and n not in not_offered)
    missing = [n for n in names if not hasattr(ours, n)]
    assert not missing, f"peftkit.import_utils lacks {missing}"
    for name in names:
        a, b = getattr(ours, name), getattr(theirs, name)
        assert callable(a) == callable(b), f"{name}: peft's is {'a function' if callable(b) else 'a bool'}"
        assert (a() if callable(a) else a) == (b() if callable(b) else b), name


def test_config_version_and_recorded_peft_version(tmp_path):
    import peft

    assert peftkit.config.__version__ == peftkit.__version__
    assert peftkit.LoraConfig().peft_version == peft.LoraConfig().peft_version == "0.21.2"
    # a loaded config keeps the version it was written with, through a re-save, as peft does
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "peft_version": "0.13.0"}))
    for lib, side in ((peft, "theirs"), (peftkit, "ours")):
        lib.PeftConfig.from_pretrained(folder).save_pretrained(tmp_path / side)
    ours, theirs = (
        json.loads((tmp_path / s / "adapter_config.json").read_text()) for s in ("ours", "theirs")
    )
    assert ours["peft_version"] == theirs["peft_version"] == "0.13.0"


def test_config_from_a_non_peft_json_raises_type_error_naming_the_file(tmp_path):
    import peft

    (tmp_path / "adapter_config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(TypeError):
        peft.PeftConfig.from_pretrained(tmp_path)
    for cls in (peftkit.PeftConfig, peftkit.LoraConfig):
        with pytest.raises(TypeError, match="missing required keys") as caught:
            cls.from_pretrained(tmp_path)
        assert str(tmp_path / "adapter_config.json") in str(caught.value)
        assert isinstance(caught.value, peftkit.utils.PeftError)


def test_unknown_peft_type_names_the_supported_ones(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "NOT_A_METHOD"}))
    # peft raises a bare KeyError('NOT_A_METHOD'); the README lists this difference
    with pytest.raises(ValueError, match="NOT_A_METHOD.*supported types: .*LORA"):
        peftkit.PeftConfig.from_pretrained(tmp_path)


def test_get_submodules_of_the_root_as_peft():
    import peft

    model = nn.Sequential(nn.Linear(2, 2))
    for key in ("", "0"):
        assert peftkit.utils._get_submodules(model, key) == peft.utils._get_submodules(model, key)
    assert peftkit.utils._get_submodules(model, "") == (model, model, "")


def _two_adapter_models():
    import peft

    made = []
    for lib in (peft, peftkit):
        torch.manual_seed(0)
        base = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
        model = lib.get_peft_model(base, lib.LoraConfig(target_modules=["0"], modules_to_save=["2"]))
        model.add_adapter("other", lib.LoraConfig(target_modules=["0"], r=2, modules_to_save=["2"]))
        made.append(model)
    return made


def test_all_available_adapter_names_as_peft():
    theirs, ours = _two_adapter_models()
    layer_theirs = theirs.base_model.model[0]
    layer_ours = ours.base_model.model[0]
    assert layer_ours._all_available_adapter_names() == layer_theirs._all_available_adapter_names()
    assert layer_ours._all_available_adapter_names() == ["default", "other"]


def test_modules_to_save_wrapper_forwards_attributes_like_peft():
    theirs, ours = _two_adapter_models()
    for model in (theirs, ours):
        head = model.base_model.model[2]
        head.modules_to_save["other"].custom_flag = "other's copy"
        head.original_module.custom_flag = "original"
    answers = []
    for model in (theirs, ours):
        head = model.base_model.model[2]
        seen = [head.out_features, head.weight is head.modules_to_save["default"].weight]
        model.set_adapter("other")
        seen += [head.custom_flag, head.weight is head.modules_to_save["other"].weight]
        with model.disable_adapter():
            seen += [head.custom_flag, head.weight is head.original_module.weight]
        answers.append(seen)
    assert answers[1] == answers[0] == [3, True, "other's copy", True, "original", True]
    with pytest.raises(AttributeError, match="no_such_attribute"):
        ours.base_model.model[2].no_such_attribute  # noqa: B018


def test_buffer_dict_update_from_a_mapping_and_from_pairs():
    from peftkit.tuners._buffer_dict import BufferDict

    buffers = BufferDict({"a": torch.zeros(1)}, persistent=True)
    buffers.update({"b": torch.ones(2)})
    buffers.update([("c", torch.full((3,), 2.0)), ("a", torch.ones(1))])
    assert list(buffers) == ["a", "b", "c"]
    assert torch.equal(buffers["a"], torch.ones(1)) and buffers["c"].shape == (3,)
    assert set(buffers.state_dict()) == {"a", "b", "c"}  # persistent: saved
    assert BufferDict({"x": torch.zeros(1)}).state_dict() == {}  # the default: never saved


def test_merge_and_unmerge_twice_warn_as_peft_does():
    theirs, ours = _two_adapter_models()
    for model in (theirs, ours):
        model.merge_adapter()
        with pytest.warns(UserWarning, match="[Aa]lready .*merged"):
            model.merge_adapter()
        model.unmerge_adapter()
        with pytest.warns(UserWarning, match="Already unmerged"):
            model.unmerge_adapter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours.merge_adapter()  # a first merge is silent
