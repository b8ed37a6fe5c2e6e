"""The opt-in `peft` alias (peftkit.compat): `import peft` gives peftkit where the real peft is not
installed, with the version and symbols transformers, accelerate and TRL need, and transformers' own
adapter methods then run on peftkit. Children run without the real peft (see alias_env)."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama
from tests.integrations.alias_env import make_site_without_peft, run_python

import peftkit.compat

# every `from peft... import X` in transformers 5.23, accelerate 1.15 and TRL 1.16 (grep of their sources)
IMPORTED_BY_INTEGRATIONS = {
    "peft": [
        "AutoPeftModelForCausalLM",
        "LoraConfig",
        "PeftConfig",
        "PeftMixedModel",
        "PeftModel",
        "PeftType",
        "PrefixTuningConfig",
        "PromptLearningConfig",
        "get_peft_model",
        "get_peft_model_state_dict",
        "inject_adapter_in_model",
        "prepare_model_for_kbit_training",
        "set_peft_model_state_dict",
    ],
    "peft.functional": ["delete_adapter"],
    "peft.tuners.lora": ["LoraLayer"],
    "peft.tuners.tuners_utils": ["BaseTunerLayer"],
    "peft.utils": ["ModulesToSaveWrapper"],
    "peft.utils.other": ["AuxiliaryTrainingWrapper", "fsdp_auto_wrap_policy"],
    "peft.utils.transformers_weight_conversion": ["build_peft_weight_mapping"],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return make_site_without_peft(tmp_path_factory.mktemp("no_peft"))


def test_refuses_while_the_real_peft_is_importable():
    assert peftkit.compat.real_peft_location() is not None  # this environment has the oracle
    with pytest.raises(peftkit.compat.PeftAliasError, match="real `peft` package is importable"):
        peftkit.compat.install_peft_alias()
    assert not peftkit.compat.is_peft_alias_installed()
    import peft

    assert "peftkit" not in peft.__file__  # the oracle is still the real peft


def test_import_peft_gives_peftkit_with_a_compatible_version(site):
    values = run_python(
        site,
        f"""
        import importlib, importlib.metadata, importlib.util
        report(visible_before=importlib.util.find_spec("peft") is not None)
        import peftkit, peftkit.compat
        peftkit.compat.install_peft_alias()
        peftkit.compat.install_peft_alias()  # twice is harmless
        import peft
        import peft.tuners.lora.layer
        from packaging.version import Version
        from transformers.utils import is_peft_available
        from transformers.utils.import_utils import is_peft_greater_or_equal
        from transformers.utils.peft_utils import check_peft_version
        from transformers.integrations.peft import MIN_PEFT_VERSION
        check_peft_version(MIN_PEFT_VERSION)  # transformers' own gate before every adapter method: raises when too old
        missing = [
            f"{{module}}.{{name}}"
            for module, names in {IMPORTED_BY_INTEGRATIONS!r}.items()
            for name in names
            if not hasattr(importlib.import_module(module), name)
        ]
        report(
            version=peft.__version__,
            metadata=importlib.metadata.version("peft"),
            at_least_0_21=Version(peft.__version__) >= Version("0.21.0"),
            gate=MIN_PEFT_VERSION,
            transformers_sees_peft=is_peft_available() and is_peft_greater_or_equal("0.21.0"),
            same_classes=peft.LoraConfig is peftkit.LoraConfig and peft.PeftModel is peftkit.PeftModel,
            same_module=peft.tuners.lora.layer is importlib.import_module("peftkit.tuners.lora.layer"),
            missing=missing,
            unknown_raises=not hasattr(peft, "NoSuchThing"),
        )
        peftkit.compat.uninstall_peft_alias()
        report(after_uninstall=importlib.util.find_spec("peft") is None and "peft" not in __import__("sys").modules)
        """,
    )
    assert values["visible_before"] is False
    assert values["version"] == values["metadata"] == peftkit.compat.alias_version()
    assert values["version"].startswith("0.22.0+peftkit.")
    assert values["at_least_0_21"] and values["transformers_sees_peft"]
    # the alias passes the installed transformers' gate (0.20.0 up to 5.23, 0.22.0 from 5.24: the `cache`
    # rename, which peftkit takes under both names); a higher gate must be studied before it is claimed
    assert values["gate"] in ("0.20.0", "0.22.0"), f"transformers now asks for peft>={values['gate']}"
    assert values["same_classes"] and values["same_module"]
    assert values["missing"] == []
    assert values["unknown_raises"]
    assert values["after_uninstall"]


def test_installing_after_transformers_decided_there_is_no_peft_is_refused(site):
    values = run_python(
        site,
        """
        from transformers.utils import is_peft_available
        before = is_peft_available()  # cached: False
        import peftkit.compat
        try:
            peftkit.compat.install_peft_alias()
            error = ""
        except peftkit.compat.PeftAliasError as err:
            error = str(err)
        report(before=before, error=error, installed=peftkit.compat.is_peft_alias_installed())
        """,
    )
    assert values["before"] is False and not values["installed"]
    assert (
        "before importing transformers" in values["error"]
        and "python -m peftkit.compat install" in values["error"]
    )


@pytest.mark.slow
def test_environment_wide_install_with_a_pth_file(tmp_path):
    site = make_site_without_peft(tmp_path)
    check = """
        import importlib.metadata, sys
        from peftkit.compat import is_peft_alias_installed
        active = is_peft_alias_installed()
        report(active=active, torch_at_start=%s, version=importlib.metadata.version("peft") if active else None)
    """
    # the .pth line loads the finder without importing peftkit (hence torch) at interpreter start
    started = run_python(site, check % "False")
    assert started["active"] is False
    installed = run_python(
        site,
        f"""
        from peftkit.compat.__main__ import main
        report(rc=main(["install", "--site-dir", {str(site)!r}]))
        """,
    )
    assert installed["rc"] == 0 and (site / "peftkit_peft_alias.pth").is_file()
    light = run_python(
        site,
        'import sys\nreport(torch_loaded="torch" in sys.modules, alias=any(getattr(f, "_peftkit_peft_alias", False) for f in sys.meta_path))',
    )
    assert light == {"torch_loaded": False, "alias": True}
    active = run_python(site, check % "False")
    assert active["active"] is True and active["version"].startswith("0.22.0+peftkit.")
    switched_off = run_python(site, check % "False", env={"PEFTKIT_PEFT_ALIAS": "0"})
    assert switched_off["active"] is False
    removed = run_python(
        site,
        f"""
        from peftkit.compat.__main__ import main
        report(rc=main(["uninstall", "--site-dir", {str(site)!r}]))
        """,
    )
    assert removed["rc"] == 0 and not (site / "peftkit_peft_alias.pth").exists()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A saved tiny Llama and adapters written by the real peft, with the logits peft computes."""
    import peft
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    tiny_llama().save_pretrained(root / "base")
    base = AutoModelForCausalLM.from_pretrained(root / "base")
    configs = {
        "lora": dict(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        "dora": dict(target_modules=["q_proj"], use_dora=True),
        "with_head": dict(target_modules=["q_proj"], modules_to_save=["lm_head"]),
    }
    for name, config in configs.items():
        model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**config))
        perturb_adapter_weights(model)
        model.save_pretrained(root / name)
        with torch.no_grad():
            torch.save(model(**llama_inputs()).logits, root / f"{name}.pt")
    return root


@pytest.mark.slow
def test_transformers_adapter_methods_run_on_peftkit(site, adapters):
    values = run_python(
        site,
        f"""
        import peftkit.compat
        peftkit.compat.install_peft_alias()
        import torch, peft, peftkit
        from transformers import AutoModelForCausalLM
        from tests.conftest import llama_inputs
        root = {str(adapters)!r}
        x = llama_inputs()

        def logits(model):
            with torch.no_grad():
                return model(**x).logits

        def diff(model, name):
            return (logits(model) - torch.load(f"{{root}}/{{name}}.pt")).abs().max().item()

        # load_adapter on a bare transformers model, for files written by the real peft
        for name in ("lora", "dora", "with_head"):
            model = AutoModelForCausalLM.from_pretrained(root + "/base")
            info = model.load_adapter(f"{{root}}/{{name}}", adapter_name=name)
            report(**{{
                name: diff(model, name),
                name + "_active": model.active_adapters(),
                name + "_keys": sorted(info.missing_keys) + sorted(info.unexpected_keys),
                name + "_layers": type(model.model.layers[0].self_attn.q_proj).__module__,
            }})

        # from_pretrained on an adapter folder: the base comes from base_model_name_or_path
        import json
        config_path = root + "/lora/adapter_config.json"
        config = json.load(open(config_path))
        config["base_model_name_or_path"] = root + "/base"
        json.dump(config, open(config_path, "w"))
        model = AutoModelForCausalLM.from_pretrained(root + "/lora")
        report(from_pretrained=diff(model, "lora"), from_pretrained_adapters=list(model.peft_config))

        # the rest of transformers' adapter API
        base_logits = logits(AutoModelForCausalLM.from_pretrained(root + "/base"))
        model.add_adapter(peft.LoraConfig(target_modules=["k_proj"], init_lora_weights=False), adapter_name="new")
        report(after_add=model.active_adapters(), configs=sorted(model.peft_config),
               trainable=sorted({{n.split(".")[-2] for n, p in model.named_parameters() if p.requires_grad}}))
        model.set_adapter("default")
        report(set_back=diff(model, "lora"))
        model.disable_adapters()
        report(disabled=(logits(model) - base_logits).abs().max().item())
        model.enable_adapters()
        report(enabled=diff(model, "lora"))
        state = model.get_adapter_state_dict("default")
        report(state_keys=sorted(state)[:2], state_len=len(state))
        model.save_pretrained(root + "/resaved")  # transformers writes the active adapter, PEFT format
        model.delete_adapter("new")
        report(after_delete=sorted(model.peft_config))
        """,
    )
    for name in ("lora", "dora", "with_head"):
        assert values[name] <= 1e-6, name
        assert values[name + "_active"] == [name]
        assert values[name + "_keys"] == []
        assert values[name + "_layers"].startswith("peftkit.")
    assert values["from_pretrained"] <= 1e-6 and values["from_pretrained_adapters"] == ["default"]
    assert values["after_add"] == ["new"] and values["configs"] == ["default", "new"]
    assert values["trainable"] == ["new"]
    assert values["set_back"] <= 1e-6 and values["enabled"] <= 1e-6 and values["disabled"] <= 1e-6
    assert values["state_len"] == 8 and values["state_keys"][0].endswith("lora_A.weight")
    assert values["after_delete"] == ["default"]
    # transformers' save of an adapter-carrying model is a PEFT adapter folder the real peft loads
    import json

    import peft

    saved_config = json.loads((adapters / "resaved" / "adapter_config.json").read_text())
    assert saved_config["peft_type"] == "LORA" and sorted(saved_config["target_modules"]) == [
        "q_proj",
        "v_proj",
    ]
    from transformers import AutoModelForCausalLM

    reloaded = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(adapters / "base"), str(adapters / "resaved")
    )
    with torch.no_grad():
        got = reloaded(**llama_inputs()).logits
    torch.testing.assert_close(got, torch.load(adapters / "lora.pt"), atol=1e-6, rtol=0)
