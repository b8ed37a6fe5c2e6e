"""Bad adapter folders fail loudly, naming the file, key or shapes, and leave the base model untouched."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
from tests.conftest import tiny_llama
from tests.persistence.helpers import file_tensors, fresh, read_config, save_both

import peftkit
from peftkit.tuners.tuners_utils import BaseTunerLayer
from peftkit.utils.warnings import AdapterLoadError, PeftWarning

_CFG = {"target_modules": ["q_proj", "v_proj"]}


@pytest.fixture
def saved(tmp_path):
    base, _theirs, _ours, _peft_dir, kit_dir = save_both(tmp_path, tiny_llama, _CFG, "CAUSAL_LM")
    return base, kit_dir


def _no_adapter_layers(model) -> bool:
    return not any(isinstance(m, BaseTunerLayer) for m in model.modules())


def test_truncated_safetensors_names_the_file(saved):
    base, folder = saved
    path = folder / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    model = fresh(base)
    with pytest.raises(AdapterLoadError, match=r"adapter_model\.safetensors.*truncated or corrupt"):
        peftkit.PeftModel.from_pretrained(model, folder)
    assert _no_adapter_layers(model)  # read before anything was injected


def test_corrupted_safetensors_header_names_the_file(saved):
    base, folder = saved
    path = folder / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:24] = b"\x00garbage-garbage"  # inside the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(AdapterLoadError, match=r"adapter_model\.safetensors"):
        peftkit.PeftModel.from_pretrained(fresh(base), folder)


def test_adapter_for_another_base_names_key_and_shapes(saved):
    _, folder = saved
    other_base = tiny_llama(hidden_size=48, intermediate_size=96)
    untouched = copy.deepcopy(other_base)
    with pytest.raises(AdapterLoadError, match=r"q_proj\.lora_A.*expects \(8, 48\).*holds \(8, 32\)"):
        peftkit.PeftModel.from_pretrained(other_base, folder)
    # the failed load took its adapter layers out again
    assert _no_adapter_layers(other_base)
    assert all(
        torch.equal(a, b) for a, b in zip(other_base.state_dict().values(), untouched.state_dict().values())
    )


def test_adapter_with_other_module_names_is_an_error(saved, tmp_path):
    base, folder = saved
    renamed = {k.replace(".layers.", ".blocks."): v for k, v in file_tensors(folder).items()}
    from safetensors.torch import save_file

    save_file(renamed, str(folder / "adapter_model.safetensors"))
    with pytest.raises(AdapterLoadError, match=r"None of the 8 tensors.*blocks"):
        peftkit.PeftModel.from_pretrained(fresh(base), folder)


def test_partially_matching_adapter_is_an_error_naming_missing_keys(saved):
    base, folder = saved
    tensors = file_tensors(folder)
    dropped = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    del tensors[dropped]
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(AdapterLoadError, match=r"layers\.1\.self_attn\.v_proj\.lora_B\.default\.weight"):
        peftkit.PeftModel.from_pretrained(fresh(base), folder)  # stricter than peft: an error by default
    with pytest.warns(PeftWarning, match=r"layers\.1\.self_attn\.v_proj\.lora_B\.default\.weight"):
        peftkit.PeftModel.from_pretrained(fresh(base), folder, allow_missing_keys=True)  # peft's behaviour
    with pytest.raises(AdapterLoadError, match="low_cpu_mem_usage"):  # meta tensors cannot stay unfilled
        peftkit.PeftModel.from_pretrained(fresh(base), folder, low_cpu_mem_usage=True)


def test_folder_without_config_is_a_clear_error(saved):
    base, folder = saved
    (folder / "adapter_config.json").unlink()
    with pytest.raises(ValueError, match=r"adapter_config\.json"):
        peftkit.PeftModel.from_pretrained(fresh(base), folder)


def test_folder_without_weights_is_a_clear_error(saved):
    base, folder = saved
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterLoadError, match=r"adapter_model\.safetensors.*adapter_model\.bin"):
        peftkit.PeftModel.from_pretrained(fresh(base), folder)


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        peftkit.PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "nowhere"))


def test_invalid_json_config_is_a_clear_error(saved):
    base, folder = saved
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        peftkit.PeftModel.from_pretrained(fresh(base), folder)


def test_rank_in_config_disagreeing_with_file_names_shapes(saved):
    base, folder = saved
    config = read_config(folder)
    config["r"] = 4
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterLoadError, match=r"expects \(4, 32\).*holds \(8, 32\)"):
        peftkit.PeftModel.from_pretrained(fresh(base), folder)


def test_failed_load_adapter_removes_the_new_adapter(saved):
    base, folder = saved
    model = peftkit.PeftModel.from_pretrained(fresh(base), folder)
    config = read_config(folder)
    config["r"] = 4
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterLoadError):
        model.load_adapter(folder, "second")
    assert list(model.peft_config) == ["default"]
    assert not [n for n, _ in model.named_parameters() if ".second." in n]


class _Payload:
    """Unpickling this would run code (a classic malicious .bin)."""

    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True
    return {}


def test_pickle_with_code_in_bin_is_refused(saved):
    base, folder = saved
    (folder / "adapter_model.safetensors").unlink()
    with open(folder / "adapter_model.bin", "wb") as f:
        pickle.dump({"x": _Payload()}, f)
    with pytest.raises(AdapterLoadError, match=r"adapter_model\.bin"):
        peftkit.PeftModel.from_pretrained(fresh(base), folder)
    assert not _Payload.ran


def test_set_state_dict_with_no_fitting_key_is_an_error():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(**_CFG))
    state = {
        k.replace("base_model.model.", ""): v for k, v in peftkit.get_peft_model_state_dict(model).items()
    }
    with pytest.raises(AdapterLoadError, match="base_model.model"):
        peftkit.set_peft_model_state_dict(model, state)
