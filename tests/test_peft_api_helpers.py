"""peft's smaller public API (issue 19): PeftModel queries and switches, base-model state dicts, the Mamba
target check, refused config fields, and the helper functions of peft.utils / peft.tuners.tuners_utils,
each compared with what peft 0.21.2 answers for the same input."""

from __future__ import annotations

import copy
import json
import warnings

import peft
import peft.tuners.tuners_utils as their_tuners_utils
import peft.utils as their_utils
import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama, tiny_llama_seq_cls
from torch import nn

import peftkit
import peftkit.tuners.tuners_utils as our_tuners_utils
import peftkit.utils as our_utils

CONFIG = dict(target_modules=["q_proj", "v_proj"])


def _pair(base_fn=tiny_llama, second_adapter: bool = True, **config):
    kwargs = CONFIG | config
    made = []
    for lib in (peft, peftkit):
        model = lib.get_peft_model(base_fn(), lib.LoraConfig(**kwargs))
        if second_adapter:
            model.add_adapter("other", lib.LoraConfig(**kwargs))
        made.append(model)
    return made


def _trainable(model) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


# ----- PeftModel -----
@pytest.mark.parametrize(
    ("names", "flag"), [("other", True), (["default", "other"], False), ("default", False)]
)
def test_set_requires_grad_as_peft(names, flag):
    theirs, ours = _pair(tiny_llama_seq_cls, task_type="SEQ_CLS")
    for model in (theirs, ours):
        model.set_requires_grad(names, requires_grad=flag)
    assert _trainable(ours) == _trainable(theirs)
    assert ours.active_adapters == theirs.active_adapters == ["default"]


def test_set_requires_grad_refuses_prompt_learning():
    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.PromptTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM")
    )
    with pytest.raises(TypeError, match="not supported for prompt learning"):
        model.set_requires_grad("default")


def test_has_active_enabled_adapter_and_dtype_as_peft():
    theirs, ours = _pair(second_adapter=False)
    assert ours.has_active_enabled_adapter is theirs.has_active_enabled_adapter is True
    with ours.disable_adapter(), theirs.disable_adapter():
        assert ours.has_active_enabled_adapter is theirs.has_active_enabled_adapter is False
    assert ours.has_active_enabled_adapter is True
    assert ours.base_model_torch_dtype == theirs.base_model_torch_dtype == torch.float32
    prompt = peftkit.get_peft_model(
        tiny_llama(), peftkit.PromptTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM")
    )
    assert prompt.has_active_enabled_adapter is True
    with prompt.disable_adapter():
        assert prompt.has_active_enabled_adapter is False


def test_prepare_model_for_gradient_checkpointing_makes_embeddings_output_require_grad():
    inputs = llama_inputs()
    for lib in (peft, peftkit):
        base = tiny_llama()
        model = lib.get_peft_model(base, lib.LoraConfig(**CONFIG))
        seen = []
        _watch_first_layer_input(base, seen)
        model(**inputs)
        model.prepare_model_for_gradient_checkpointing(base)
        model(**inputs)
        assert seen == [False, True], lib.__name__


def _watch_first_layer_input(llama, seen: list) -> None:
    """Record whether the hidden states entering the first decoder layer require grad."""

    def hook(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).requires_grad)

    llama.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)


def test_wrapping_a_checkpointing_model_prepares_it_as_peft_does():
    inputs = llama_inputs()
    for lib in (peft, peftkit):
        base = tiny_llama()
        base.gradient_checkpointing_enable()
        seen = []
        _watch_first_layer_input(base, seen)
        lib.get_peft_model(base, lib.LoraConfig(**CONFIG))(**inputs)
        assert seen == [True], lib.__name__


def test_base_model_prepare_inputs_for_generation_is_the_base_model_s():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(task_type="CAUSAL_LM", **CONFIG))
    method = model.base_model_prepare_inputs_for_generation
    assert method.__func__ is type(model.get_base_model()).prepare_inputs_for_generation
    assert method.__self__ is model.get_base_model()
    assert isinstance(model, peftkit.PeftModelForCausalLM)
    assert hasattr(peftkit.PeftModelForSeq2SeqLM, "base_model_prepare_inputs_for_generation")


def test_get_peft_type_reads_the_folder_as_peft(tmp_path):
    peftkit.get_peft_model(tiny_llama(), peftkit.LoHaConfig(**CONFIG)).save_pretrained(tmp_path)
    assert (
        peftkit.PeftConfig._get_peft_type(tmp_path) == peft.PeftConfig._get_peft_type(str(tmp_path)) == "LOHA"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    assert peftkit.LoraConfig._get_peft_type(tmp_path, subfolder="sub") == "IA3"
    (tmp_path / "empty").mkdir()
    for lib in (peft, peftkit):
        with pytest.raises(ValueError, match="Can't find 'adapter_config.json'"):
            lib.PeftConfig._get_peft_type(str(tmp_path / "empty"))


# ----- base-model state dicts -----
@pytest.mark.parametrize(
    "config",
    [
        peftkit.LoraConfig(target_modules=["q_proj", "v_proj"], use_dora=True, task_type="SEQ_CLS"),
        peftkit.LoraConfig(target_modules=["q_proj"], trainable_token_indices=[1, 2], task_type="SEQ_CLS"),
        peftkit.LoHaConfig(target_modules=["q_proj", "up_proj"], task_type="SEQ_CLS"),
    ],
    ids=["dora+classifier", "trainable-tokens", "loha"],
)
def test_get_base_model_state_dict_equals_peft_and_the_original(config):
    original = tiny_llama_seq_cls()
    peft_config = getattr(peft, type(config).__name__)(**config.to_dict() | {"peft_type": None})
    theirs = peft.get_peft_model(copy.deepcopy(original), peft_config)
    ours = peftkit.get_peft_model(copy.deepcopy(original), copy.deepcopy(config))
    ours_sd, theirs_sd = peftkit.get_base_model_state_dict(ours), peft.get_base_model_state_dict(theirs)
    assert list(ours_sd) == list(theirs_sd) == list(original.state_dict())
    assert all(torch.equal(ours_sd[k], v) for k, v in original.state_dict().items())


def test_set_base_model_state_dict_loads_under_original_keys_and_reports_like_peft():
    original, other = tiny_llama_seq_cls(seed=0), tiny_llama_seq_cls(seed=1)
    ours = peftkit.get_peft_model(copy.deepcopy(original), peftkit.LoraConfig(task_type="SEQ_CLS", **CONFIG))
    theirs = peft.get_peft_model(copy.deepcopy(original), peft.LoraConfig(task_type="SEQ_CLS", **CONFIG))
    perturb_adapter_weights(ours)
    adapter = {k: v.clone() for k, v in peftkit.get_peft_model_state_dict(ours).items()}
    result = peftkit.set_base_model_state_dict(ours, other.state_dict())
    assert result.missing_keys == result.unexpected_keys == []
    assert all(
        torch.equal(v, other.state_dict()[k]) for k, v in peftkit.get_base_model_state_dict(ours).items()
    )
    assert all(torch.equal(v, adapter[k]) for k, v in peftkit.get_peft_model_state_dict(ours).items())
    partial = dict(list(other.state_dict().items())[1:]) | {"not.a.key": torch.zeros(1)}
    for lib, model in ((peft, theirs), (peftkit, ours)):
        with pytest.raises(RuntimeError, match="(?s)Missing key.*Unexpected key"):
            lib.set_base_model_state_dict(model, partial)
    ours_result = peftkit.set_base_model_state_dict(ours, partial, strict=False)
    theirs_result = peft.set_base_model_state_dict(theirs, partial, strict=False)
    assert ours_result == tuple(theirs_result)


def test_base_model_state_dict_of_lora_on_attention():
    torch.manual_seed(0)
    original = nn.Sequential(nn.MultiheadAttention(8, 2))
    model = peftkit.get_peft_model(copy.deepcopy(original), peftkit.LoraConfig(target_modules=["0"]))
    assert list(peftkit.get_base_model_state_dict(model)) == list(original.state_dict())


# ----- checks on configs and targets -----
@pytest.mark.parametrize("target", ["out_proj", "conv1d"])
def test_mamba_out_proj_and_conv1d_are_refused_as_in_peft(target):
    from transformers import MambaConfig, MambaForCausalLM

    def mamba():
        torch.manual_seed(0)
        return MambaForCausalLM(MambaConfig(hidden_size=16, num_hidden_layers=1, vocab_size=50, state_size=4))

    with pytest.raises(ValueError, match=f"Module '{target}' is incompatible with Mamba"):
        peft.get_peft_model(mamba(), peft.LoraConfig(target_modules=[target]))
    model = mamba()
    with pytest.raises(ValueError, match=f"Module '{target}' .* is incompatible with Mamba"):
        peftkit.get_peft_model(model, peftkit.LoraConfig(target_modules=[target, "in_proj"]))
    assert not any(isinstance(m, peftkit.tuners.tuners_utils.BaseTunerLayer) for m in model.modules())
    peftkit.get_peft_model(mamba(), peftkit.LoraConfig(target_modules=["in_proj", "x_proj"]))  # the fix works
    peftkit.get_peft_model(mamba(), peftkit.LoHaConfig(target_modules=["out_proj"]))  # only LoRA-like methods


@pytest.mark.parametrize(
    ("field", "value"),
    [("megatron_config", {"tensor_model_parallel_size": 2}), ("ensure_weight_tying", True)],
)
def test_lora_fields_peftkit_does_not_implement_are_refused_by_name(field, value, tmp_path):
    with pytest.raises(ValueError, match=f"{field}=.* is not supported"):
        peftkit.LoraConfig(**{field: value})
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", field: value}))
    with pytest.raises(ValueError, match=field):
        peftkit.PeftConfig.from_pretrained(tmp_path)
    assert peftkit.LoraConfig(megatron_core="other.core").megatron_config is None  # only used with a config


# ----- peft.utils helpers -----
def test_small_utils_answer_as_peft():
    ids = torch.tensor([[5, -100, 7], [1, 2, -100]])
    assert torch.equal(our_utils.shift_tokens_right(ids, 0, 9), their_utils.shift_tokens_right(ids, 0, 9))
    with pytest.raises(ValueError, match="pad_token_id"):
        our_utils.shift_tokens_right(ids, None, 9)
    weight = nn.Parameter(torch.randn(3, 4))
    for flag in (True, False):
        ours, theirs = our_utils.transpose(weight, flag), their_utils.transpose(weight, flag)
        assert type(ours) is type(theirs) and torch.equal(ours, theirs)
    embeds = torch.zeros(4, 2, 3)
    assert our_utils._get_batch_size(None, embeds) == their_utils._get_batch_size(None, embeds) == 4
    with pytest.raises(ValueError, match="input_ids or inputs_embeds"):
        our_utils._get_batch_size(None, None)
    for key, target in [
        ("a.b.q_proj", "q_proj"),
        ("a.bq_proj", "q_proj"),
        ("q_proj", "q_proj"),
        ("x", "q_proj"),
    ]:
        assert our_utils._is_valid_match(key, target) == their_utils._is_valid_match(key, target)
    shared = torch.zeros(6)
    assert our_utils.id_tensor_storage(shared[2:]) == their_utils.id_tensor_storage(shared[2:])
    assert our_utils.id_tensor_storage(shared[2:]) == our_utils.id_tensor_storage(shared)
    llama = tiny_llama()
    assert our_utils._get_input_embeddings_name(llama) == their_utils._get_input_embeddings_name(llama)
    assert our_utils._get_input_embeddings_name(nn.Linear(2, 2), "x") == "x"
    blocks = tuple(torch.randn(2, 3, 2, 4, 5) for _ in range(2))  # 4 layers' keys+values, batch 3
    for a, b in zip(
        our_utils.bloom_model_postprocess_past_key_value(blocks),
        their_utils.bloom_model_postprocess_past_key_value(blocks),
    ):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert (
        our_utils.TRANSFORMERS_MODELS_TO_PREFIX_TUNING_POSTPROCESS_MAPPING
        == their_utils.TRANSFORMERS_MODELS_TO_PREFIX_TUNING_POSTPROCESS_MAPPING
    )
    assert our_utils.ALLOWED_COMPUTE_DTYPES == their_utils.ALLOWED_COMPUTE_DTYPES
    assert our_utils.UPCAST_DTYPES == their_utils.UPCAST_DTYPES


def _normalise(table: dict) -> dict:
    return {k: sorted(v) if isinstance(v, (list, set)) else v for k, v in table.items()}


def test_constants_tables_equal_peft_s():
    names = [
        n for n in their_utils.__all__ if n.startswith("TRANSFORMERS_MODELS_TO") and hasattr(our_utils, n)
    ]
    assert len(names) >= 30
    for name in names:
        ours, theirs = getattr(our_utils, name), getattr(their_utils, name)
        assert _normalise(ours) == _normalise(theirs), name


def test_freeze_adapter_and_get_quantization_config_as_peft():
    theirs, ours = _pair()
    for model, utils in ((theirs, their_utils), (ours, our_utils)):
        model.set_requires_grad(["default", "other"])
        utils._freeze_adapter(model, "other")
    assert _trainable(ours) == _trainable(theirs)
    base = tiny_llama()
    base.quantization_method = "gptq"
    base.config.quantization_config = {"bits": 4}
    for method in ("gptq", "awq"):
        assert our_utils.get_quantization_config(base, method) == their_utils.get_quantization_config(
            base, method
        )


def test_set_trainable_and_additional_modules_as_peft():
    made = []
    for lib, utils in ((peft, their_utils), (peftkit, our_utils)):
        model = lib.get_peft_model(tiny_llama(), lib.LoraConfig(**CONFIG))
        inner = model.base_model.model
        utils._set_trainable(inner, "default", ["lm_head"], inference_mode=False)
        config = lib.LoraConfig(**CONFIG, modules_to_save=["model.norm"], trainable_token_indices=[3, 4])
        utils.set_additional_trainable_modules(inner, config, inner.config.to_dict(), "default")
        utils._set_adapter(inner, "default")
        made.append(model)
    theirs, ours = made
    assert _trainable(ours) == _trainable(theirs)
    assert sorted(n for n, _ in ours.named_modules()) == sorted(n for n, _ in theirs.named_modules())
    with pytest.raises(ValueError, match="already marked to be trained fully"):
        bad = peftkit.LoraConfig(
            **CONFIG, modules_to_save=["embed_tokens"], trainable_token_indices={"embed_tokens": [1]}
        )
        our_utils.set_additional_trainable_modules(tiny_llama(), bad, {}, "default")


def test_prepare_prompt_learning_config_fills_the_same_fields_as_peft():
    llama = tiny_llama()
    for config_of in (lambda: llama.config, lambda: llama.config.to_dict()):
        answers = []
        for lib, utils in ((peft, their_utils), (peftkit, our_utils)):
            config = lib.PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM")
            filled = utils._prepare_prompt_learning_config(config, config_of())
            answers.append((filled.num_layers, filled.token_dim, filled.num_attention_heads))
        assert answers[0] == answers[1]


def test_map_cache_to_layer_device_map_moves_each_layer():
    from transformers import DynamicCache

    class Dispatched(nn.Module):
        # layer 1 is offloaded to the CPU: it runs on the main device ("meta" stands for an accelerator)
        hf_device_map = {"model.embed_tokens": "meta", "model.layers.0": "meta", "model.layers.1": "cpu"}
        config = type("Config", (), {"num_hidden_layers": 2})()

    devices = []
    for utils in (their_utils, our_utils):
        cache = DynamicCache()
        for layer in range(2):
            cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), layer)
        utils.map_cache_to_layer_device_map(Dispatched(), cache)
        devices.append([(layer.keys.device.type, layer.values.device.type) for layer in cache.layers])
    assert devices[0] == devices[1] == [("meta", "meta"), ("meta", "meta")]
    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), 0)
    our_utils.map_cache_to_layer_device_map(tiny_llama(), cache)  # not dispatched: nothing moves
    assert cache.layers[0].keys.device.type == "cpu"


# ----- peft.utils.save_and_load, merge_utils, hotswap -----
def test_save_and_load_helpers_as_peft(tmp_path):
    import peft.utils.save_and_load as theirs

    import peftkit.utils.save_and_load as ours

    torch.save({"x": torch.ones(2)}, tmp_path / "t.bin")
    assert torch.equal(ours.torch_load(tmp_path / "t.bin")["x"], theirs.torch_load(tmp_path / "t.bin")["x"])
    model = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(target_modules=["embed_tokens"]))
    layer = model.base_model.model.model.embed_tokens
    for flag in (True, False):
        assert ours.get_embedding_layer_name(model, layer, flag) == theirs.get_embedding_layer_name(
            model, layer, flag
        )
    assert ours.has_valid_embedding_base_layer(layer) == theirs.has_valid_embedding_base_layer(layer) is True
    assert ours.has_valid_embedding_base_layer(nn.Linear(2, 2)) is False


def test_reshape_weight_task_tensors_and_hotswap_keys_as_peft():
    from peft.utils import hotswap as their_hotswap
    from peft.utils import merge_utils as theirs

    from peftkit.utils import hotswap as our_hotswap
    from peftkit.utils import merge_utils as ours

    tensors, weights = torch.randn(3, 4, 5), torch.tensor([0.2, 0.3, 0.5])
    assert torch.equal(
        ours.reshape_weight_task_tensors(tensors, weights),
        theirs.reshape_weight_task_tensors(tensors, weights),
    )
    # peftkit lets rsLoRA and alpha differ in a hot-swap (README); the structural keys are peft's and lora_bias
    assert set(our_hotswap.CONFIG_KEYS_TO_CHECK) == set(their_hotswap.CONFIG_KEYS_TO_CHECK)
    ours_keys = set(our_hotswap.CONFIG_KEYS_TO_CHECK[peftkit.PeftType.LORA])
    assert ours_keys == {"use_dora", "lora_dropout", "lora_bias"}
    a = peftkit.LoraConfig(**CONFIG)
    with pytest.raises(ValueError, match="lora_bias"):
        our_hotswap.check_hotswap_configs_compatible(a, peftkit.LoraConfig(**CONFIG, lora_bias=True))


# ----- peft.tuners.tuners_utils helpers -----
def test_tuner_functions_as_peft():
    theirs, ours = _pair()
    for model, utils in ((theirs, their_tuners_utils), (ours, our_tuners_utils)):
        utils.set_adapter(model.base_model.model, "other")
        model.base_model.active_adapter = "other"
    assert _trainable(ours) == _trainable(theirs)
    for model, utils in ((theirs, their_tuners_utils), (ours, our_tuners_utils)):
        model.set_requires_grad("default")
        utils.set_requires_grad(model.base_model.model, "default", False)
    assert _trainable(ours) == _trainable(theirs)
    their_new = their_tuners_utils.delete_adapter(theirs.base_model.model, "other", "lora_")
    our_new = our_tuners_utils.delete_adapter(ours.base_model.model, "other", "lora_")
    assert our_new == their_new == ["default"]
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    their_layer = theirs.base_model.model.model.layers[0].self_attn.q_proj
    assert our_tuners_utils.find_parameter_name_by_module(
        ours, layer
    ) == their_tuners_utils.find_parameter_name_by_module(theirs, their_layer)
    assert our_tuners_utils.find_parameter_name_by_module(ours, nn.Linear(1, 1)) == ""
    assert (
        our_tuners_utils.get_device_map(ours)
        == their_tuners_utils.get_device_map(theirs)
        == {"": torch.device("cpu")}
    )
    assert our_tuners_utils.inspect_matched_modules(
        ours.base_model
    ) == their_tuners_utils.inspect_matched_modules(theirs.base_model)
    assert our_tuners_utils.warn_msg_weight_tying == their_tuners_utils.warn_msg_weight_tying


def test_check_adapters_to_merge_and_cast_adapter_dtype_as_peft():
    theirs, ours = _pair()
    answers = []
    for model, utils in ((theirs, their_tuners_utils), (ours, our_tuners_utils)):
        layer = model.base_model.model.model.layers[0].self_attn.q_proj
        first = utils.check_adapters_to_merge(layer, ["default", "other"])
        layer.merge(adapter_names=["default"])
        with pytest.warns(UserWarning, match="Already following adapters were merged default"):
            second = utils.check_adapters_to_merge(layer, ["default", "other"])
        with pytest.raises(TypeError, match="list of strings"):
            utils.check_adapters_to_merge(layer, "default")
        answers.append((first, second))
    assert answers[0] == answers[1] == (["default", "other"], ["other"])
    for model, utils in ((theirs, their_tuners_utils), (ours, our_tuners_utils)):
        model.to(torch.bfloat16)
        utils.cast_adapter_dtype(model, "other", autocast_adapter_dtype=False)
        utils.cast_adapter_dtype(model, "default")
    dtypes = lambda m: {n: p.dtype for n, p in m.named_parameters()}  # noqa: E731
    assert dtypes(ours) == dtypes(theirs)
    assert {d for n, d in dtypes(ours).items() if "lora_A.default" in n} == {torch.float32}


def test_clone_module_and_replicate_layers_as_peft():
    layer = tiny_llama().model.layers[0]
    for share in (True, False):
        ours, theirs = (
            our_tuners_utils.clone_module(layer, share),
            their_tuners_utils.clone_module(layer, share),
        )
        assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
        assert (ours.self_attn.q_proj.weight is layer.self_attn.q_proj.weight) is share
    deep, their_deep = tiny_llama(), tiny_llama()
    our_tuners_utils.replicate_layers(deep, [[0, 2], [1, 2]])
    their_tuners_utils.replicate_layers(their_deep, [[0, 2], [1, 2]])
    assert len(deep.model.layers) == len(their_deep.model.layers) == 3
    assert deep.config.num_hidden_layers == their_deep.config.num_hidden_layers == 3


def test_onload_layer_brings_offloaded_weights_in_and_keeps_a_merge():
    from accelerate import cpu_offload

    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj"], init_lora_weights=False)
    )
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    expected = layer.base_layer.weight.detach().clone() + layer.get_delta_weight("default")
    cpu_offload(layer.base_layer, execution_device=torch.device("cpu"))
    assert layer.base_layer.weight.device.type == "meta"
    with our_tuners_utils.onload_layer(layer):
        assert layer.base_layer.weight.device.type == "cpu"
        layer.merge()
    assert layer.base_layer.weight.device.type == "meta"
    with our_tuners_utils.onload_layer(layer):
        assert torch.allclose(layer.base_layer.weight, expected, atol=1e-6)


def test_prompt_encoders_share_peft_s_base_class():
    for encoder in (
        peftkit.PromptEmbedding,
        peftkit.PrefixEncoder,
        peftkit.PromptEncoder,
        peftkit.CPTEmbedding,
    ):
        assert issubclass(encoder, our_tuners_utils.BasePromptEncoder)
        assert issubclass(getattr(peft, encoder.__name__), their_tuners_utils.BasePromptEncoder)


def test_errors_peft_exports_are_peftkit_s():
    assert peftkit.PeftError is our_utils.PeftError
    assert issubclass(peftkit.NoMatchingPeftModuleError, peftkit.PeftError)
    with pytest.raises(peftkit.NoMatchingPeftModuleError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(target_modules=["nothing_here"]))
