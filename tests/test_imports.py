"""The package stands alone (no `peft` import) and exposes PEFT's public names with PEFT's signatures."""

import inspect
import subprocess
import sys

import pytest


def test_import_peftkit_does_not_import_peft():
    code = "import sys, peftkit, peftkit.tuners.lora, peftkit.utils; print('peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_all_linear_on_an_unquantized_model_does_not_import_bitsandbytes():
    """bitsandbytes is an optional extra: slow to import, and noisy on CPU; only quantized models need it."""
    code = (
        "import sys, torch, peftkit\n"
        "model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))\n"
        "peftkit.get_peft_model(model, peftkit.LoraConfig(target_modules='all-linear'))\n"
        "print('bitsandbytes' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


CORE_NAMES = [
    "get_peft_model",
    "get_peft_config",
    "inject_adapter_in_model",
    "PeftConfig",
    "PeftType",
    "TaskType",
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "PeftModelForQuestionAnswering",
    "PeftModelForFeatureExtraction",
    "LoraConfig",
    "LoraModel",
    "get_peft_model_state_dict",
    "set_peft_model_state_dict",
    "load_peft_weights",
    "get_layer_status",
    "get_model_status",
    "PeftWarning",
]


@pytest.mark.parametrize("name", CORE_NAMES)
def test_public_name_exists(name):
    import peft

    import peftkit

    assert hasattr(peftkit, name), f"peftkit lacks {name}"
    assert hasattr(peft, name)


@pytest.mark.parametrize(
    "path",
    [
        "get_peft_model",
        "inject_adapter_in_model",
        "PeftModel.__init__",
        "PeftModel.add_adapter",
        "PeftModel.set_adapter",
        "PeftModel.delete_adapter",
        "LoraModel.merge_and_unload",
        "LoraModel.__init__",
        "PeftModel.save_pretrained",
        "PeftModel.from_pretrained",
        "get_peft_model_state_dict",
        "set_peft_model_state_dict",
    ],
)
def test_signatures_match_peft(path):
    """Same parameter names, order and defaults (peftkit may add keyword-only extras at the end)."""
    import peft

    import peftkit

    def resolve(module, dotted):
        obj = module
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return inspect.signature(obj)

    theirs = [(p.name, p.default) for p in resolve(peft, path).parameters.values() if p.kind != p.VAR_KEYWORD]
    ours = [
        (p.name, p.default) for p in resolve(peftkit, path).parameters.values() if p.kind != p.VAR_KEYWORD
    ]
    assert ours[: len(theirs)] == theirs


def test_module_paths_other_libraries_import():
    from peftkit.tuners.lora import Linear, LoraLayer, LoraModel  # noqa: F401
    from peftkit.tuners.tuners_utils import BaseTuner, BaseTunerLayer
    from peftkit.utils import ModulesToSaveWrapper, PeftType, TaskType, get_peft_model_state_dict  # noqa: F401

    assert issubclass(Linear, BaseTunerLayer)
    assert issubclass(LoraModel, BaseTuner)
