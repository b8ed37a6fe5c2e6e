"""Every registered method on a bitsandbytes 4-bit (nf4) and 8-bit base, on the CPU.

For each method and each base:
- the forward equals the same adapter on a dequantized copy of the base (a plain floating-point model
  whose linear weights are the quantized layers' numbers): 1e-5 on 4-bit (bitsandbytes' CPU 4-bit
  kernel dequantizes, then multiplies in fp32); on 8-bit, LLM.int8() also quantizes the activations to
  int8 (rounding each row to 1/127 of its largest value), so the bound is three times the base model's
  own distance from its dequantized copy plus 5% of the adapter's effect (a method that read the int8
  values without their scales, as peft's HRA does, is off by about the whole effect);
- merging equals the dequantize-merge-requantize reference: merge on the dequantized copy, requantize
  each merged weight with the layer's own settings; the quantized model's merged weights are those
  numbers exactly (a method that cannot merge on a plain base raises the same error on a quantized one);
- where peft 0.21.2 runs the method right on that base, adapter files move both ways with the same
  outputs (1e-5). `PEFT` below says where it does not: it fails ("fails"), or it runs but reads the
  packed integers as if they were the weight ("wrong"); peftkit's numbers are then the reference's, and
  training on the 4-bit base lowers the loss.
The prompt-learning methods (`PROMPT_CONFIGS`) leave the base layers alone: their forward and one training
step equal the same prompt encoder on the dequantized copy, within the same bounds.
The README's table of methods on quantized bases is this table.
"""

from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights
from tests.quantization.helpers import dequantized_copy, quantizable_llama, quantize_linears

import peftkit
from peftkit.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peftkit.tuners._bnb import dequantized_weight, is_bnb_layer, requantized_weight
from peftkit.tuners._linear_kind import UnsupportedLayerError

QV = {"target_modules": ["q_proj", "v_proj"]}
# method -> (config class, config kwargs, task type)
CONFIGS = {
    "adalora": ("AdaLoraConfig", {**QV, "init_r": 4, "target_r": 2, "total_step": 10}, None),
    "adamss": ("AdamssConfig", {**QV, "r": 16, "num_subspaces": 2, "subspace_rank": 2}, None),
    "adaption_prompt": ("AdaptionPromptConfig", {"adapter_len": 4, "adapter_layers": 1}, "CAUSAL_LM"),
    "beft": ("BeftConfig", {}, "CAUSAL_LM"),
    "boft": ("BOFTConfig", {**QV, "boft_block_size": 4}, None),
    "c3a": ("C3AConfig", {**QV, "block_size": 8}, None),
    "deft": ("DeftConfig", {**QV, "r": 4}, None),
    "delora": ("DeloraConfig", {**QV, "r": 4}, None),
    "fourierft": ("FourierFTConfig", {**QV, "n_frequency": 10}, None),
    "frod": ("FrodConfig", {**QV, "sparse_rate": 0.05, "progressbar": False}, None),
    "glora": ("GloraConfig", {**QV, "r": 2}, None),
    "gralora": ("GraloraConfig", {**QV, "r": 4}, None),
    "hira": ("HiraConfig", {**QV, "r": 4}, None),
    "hra": ("HRAConfig", {**QV, "r": 4}, None),
    "ia3": (
        "IA3Config",
        {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
        None,
    ),
    "lily": ("LilyConfig", {"r": 4}, "CAUSAL_LM"),
    "ln_tuning": ("LNTuningConfig", {}, "CAUSAL_LM"),
    "loha": ("LoHaConfig", {**QV, "r": 4, "alpha": 6}, None),
    "lokr": ("LoKrConfig", {**QV, "r": 2, "alpha": 3}, None),
    "lora": ("LoraConfig", {**QV, "target_modules": ["q_proj", "down_proj"]}, None),
    "dora": ("LoraConfig", {**QV, "use_dora": True}, None),
    "miss": ("MissConfig", {**QV, "r": 4}, None),
    "oft": ("OFTConfig", {**QV, "oft_block_size": 8, "r": 0}, None),
    "osf": ("OSFConfig", QV, None),
    "peanut": ("PeanutConfig", {**QV, "r": 4}, None),
    "poly": ("PolyConfig", {**QV, "r": 2, "n_tasks": 3, "n_skills": 2}, "CAUSAL_LM"),
    "psoft": ("PsoftConfig", {**QV, "r": 4}, None),
    "pvera": ("PveraConfig", {**QV, "r": 4}, None),
    "randlora": ("RandLoraConfig", {**QV, "r": 4}, None),
    "road": ("RoadConfig", {**QV, "group_size": 8}, None),
    "shadow": ("ShadowConfig", {}, "CAUSAL_LM"),
    "shira": ("ShiraConfig", {**QV, "r": 2}, None),
    "supertuning": ("SupertuningConfig", {**QV, "sparsity": 0.9}, None),
    "tinylora": ("TinyLoraConfig", {**QV, "r": 2, "u": 4}, None),
    "trainable_tokens": (
        "TrainableTokensConfig",
        {"target_modules": ["embed_tokens"], "token_indices": list(range(0, 128, 3))},
        None,
    ),
    "unilora": ("UniLoraConfig", {**QV, "r": 2, "theta_d_length": 64}, None),
    "vblora": ("VBLoRAConfig", {**QV, "r": 2, "num_vectors": 16, "vector_length": 8}, None),
    "vera": ("VeraConfig", {**QV, "r": 4}, None),
    "waveft": ("WaveFTConfig", {**QV, "n_frequency": 40}, None),
}
# where peft 0.21.2 does not run a method right: (method, bits) -> "fails" or "wrong"
PEFT = {
    # peft's AdaMSS imports scikit-learn, not a test dependency: seen failing where it is installed (it makes
    # its parameters in the packed weight's integer dtype); peftkit's numbers are the dequantized reference's
    ("adamss", 4): "fails",
    ("adamss", 8): "fails",
    ("deft", 4): "fails",
    ("deft", 8): "wrong",  # its no-op initialisation and its merge read the int8 values without their scales
    ("delora", 4): "fails",
    ("delora", 8): "fails",
    ("glora", 4): "fails",  # refuses every layer but a plain nn.Linear
    ("glora", 8): "fails",
    ("hra", 4): "fails",
    ("hra", 8): "wrong",  # its forward multiplies by the int8 values without their scales
    ("loha", 4): "fails",
    ("lokr", 4): "fails",
    ("osf", 4): "fails",  # sizes its SVD from the packed weight
    ("osf", 8): "fails",  # makes its factors in the weight's int8 dtype
    ("peanut", 4): "fails",
    ("peanut", 8): "wrong",  # its network reads the int8 values without their scales
    ("psoft", 4): "fails",  # refuses a weight that is not floating point
    ("psoft", 8): "fails",
    ("supertuning", 4): "fails",
    ("supertuning", 8): "fails",
    ("tinylora", 4): "fails",
    ("tinylora", 8): "fails",
    (
        "unilora",
        4,
    ): "wrong",  # casts its scales to the packed integer dtype: zero, so the adapter does nothing
    ("unilora", 8): "wrong",
}
# prompt-learning methods (their prompt encoders are the tuners in PEFT_TYPE_TO_TUNER_MAPPING): they add virtual
# tokens or key/value prefixes and leave the base layers alone, so they get their own check,
# test_prompt_learning_forward_and_training_step_equal_the_dequantized_reference
PROMPT_CONFIGS = {
    "cartridge": ("CartridgeConfig", {"num_virtual_tokens": 4, "num_frozen_tokens": 1}),
    "cpt": (
        "CPTConfig",
        {"cpt_token_ids": [5, 6, 7, 8], "cpt_mask": [1] * 4, "cpt_tokens_type_mask": [1, 2, 3, 4]},
    ),
    "multitask_prompt_tuning": ("MultitaskPromptTuningConfig", {"num_virtual_tokens": 4, "num_tasks": 3}),
    "p_tuning": ("PromptEncoderConfig", {"num_virtual_tokens": 4, "encoder_hidden_size": 16}),
    "prefix_tuning": ("PrefixTuningConfig", {"num_virtual_tokens": 4}),
    "prompt_tuning": ("PromptTuningConfig", {"num_virtual_tokens": 4}),
}
# methods peftkit refuses on a quantized base, with the error's text (peft fails on them as well)
REFUSED = {"frod": "FRoD cannot adapt"}
# adapted separately (it needs saved LoRA experts): see test_xlora_over_4bit_equals_the_dequantized_reference
SEPARATE = {"xlora"}
BITS = {"nf4": dict(bits=4, quant_type="nf4"), "int8": dict(bits=8)}
METHODS = sorted(set(CONFIGS) - set(REFUSED))


def _inputs(method: str) -> dict:
    inputs = llama_inputs()
    if method in ("poly", "multitask_prompt_tuning"):
        inputs["task_ids"] = torch.tensor([0, 2])
    return inputs


def _config(lib, method: str):
    if method in PROMPT_CONFIGS:
        cls, kwargs = PROMPT_CONFIGS[method]
        return getattr(lib, cls)(task_type="CAUSAL_LM", **copy.deepcopy(kwargs))
    cls, kwargs, task_type = CONFIGS[method]
    return getattr(lib, cls)(task_type=task_type, **copy.deepcopy(kwargs))


def _quantized_base(case: str):
    return quantize_linears(quantizable_llama(), **BITS[case])


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _ours(method: str, base):
    model = peftkit.get_peft_model(copy.deepcopy(base), _config(peftkit, method))
    perturb_adapter_weights(model, scale=0.3)
    return model.eval()


def _on_dequantized_copy(method: str, ours, base):
    """The same adapter (its saved tensors) on a dequantized copy of `base`."""
    reference = peftkit.get_peft_model(dequantized_copy(base), _config(peftkit, method)).eval()
    state = peftkit.get_peft_model_state_dict(ours)
    result = peftkit.set_peft_model_state_dict(reference, state)
    assert not result.unexpected_keys
    return reference


def test_every_registered_method_is_in_the_table():
    registered = {peft_type.value.lower() for peft_type in PEFT_TYPE_TO_TUNER_MAPPING}
    covered = set(CONFIGS) | set(PROMPT_CONFIGS) | SEPARATE
    assert registered <= covered, f"add {sorted(registered - covered)} to CONFIGS (and the README's table)"


@pytest.mark.parametrize("case", list(BITS))
@pytest.mark.parametrize("method", METHODS)
def test_forward_equals_the_dequantized_reference(method, case):
    base = _quantized_base(case)
    inputs = _inputs(method)
    ours = _ours(method, base)
    reference = _on_dequantized_copy(method, ours, base)
    got, expected = _logits(ours, inputs), _logits(reference, inputs)
    with ours.disable_adapter():
        base_out = _logits(ours, inputs)
    assert (got - base_out).abs().max() > 1e-2, "the perturbed adapter must change the output"
    assert (got - expected).abs().max().item() <= _tolerance(case, ours, reference, inputs, expected)


def _tolerance(case: str, ours, reference, inputs: dict, expected: torch.Tensor) -> float:
    """The bound on |ours - reference| for the reference's adapted logits `expected` (module docstring)."""
    if case == "nf4":
        return 1e-5
    # LLM.int8() quantizes activations too (the adapter's among them)
    with ours.disable_adapter(), reference.disable_adapter():
        base_out, reference_base = _logits(ours, inputs), _logits(reference, inputs)
    base_gap = (base_out - reference_base).abs().max().item()
    # a prompt method's logits also cover its virtual tokens, before the input's
    effect = (expected[:, -reference_base.shape[1] :] - reference_base).abs().max().item()
    return 3 * base_gap + 0.05 * effect


def _requantized_reference(reference, ours) -> dict[str, torch.Tensor]:
    """name -> the numbers each quantized layer of `ours` should hold after merging: the reference's
    merged weight, requantized with that layer's settings."""
    expected = {}
    dense = dict(reference.named_modules())
    for name, module in ours.named_modules():
        if is_bnb_layer(module):
            layer = copy.deepcopy(module)
            layer.weight = requantized_weight(layer, dense[name].weight.data)
            expected[name] = dequantized_weight(layer)
    return expected


@pytest.mark.parametrize("case", list(BITS))
@pytest.mark.parametrize("method", METHODS)
def test_merge_equals_dequantize_merge_requantize(method, case):
    base = _quantized_base(case)
    ours = _ours(method, base)
    reference = _on_dequantized_copy(method, ours, base)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference.merge_adapter()
    except (ValueError, NotImplementedError, TypeError) as error:  # cannot merge on a plain base either
        with pytest.raises(type(error)):
            ours.merge_adapter()
        return
    adapted_quantized = any(is_bnb_layer(m.get_base_layer()) for m in ours.modules() if hasattr(m, "merged"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours.merge_adapter()
    if adapted_quantized:
        assert any("requantizes the merged weight" in str(w.message) for w in caught)
    expected = _requantized_reference(reference, ours)
    assert expected
    for name, module in ours.named_modules():
        if name in expected:
            assert torch.equal(dequantized_weight(module), expected[name]), name


PEFT_RUNS_RIGHT = [(m, c) for m in METHODS for c, spec in BITS.items() if (m, spec["bits"]) not in PEFT]


@pytest.mark.parametrize(("method", "case"), PEFT_RUNS_RIGHT)
def test_files_move_both_ways_with_peft(method, case, tmp_path):
    base = _quantized_base(case)
    inputs = _inputs(method)
    theirs = peft.get_peft_model(copy.deepcopy(base), _config(peft, method))
    perturb_adapter_weights(theirs, scale=0.3)
    theirs.eval().save_pretrained(tmp_path / "theirs")
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "theirs").eval()
    torch.testing.assert_close(_logits(loaded, inputs), _logits(theirs, inputs), atol=1e-5, rtol=0)
    ours = _ours(method, base)
    ours.save_pretrained(tmp_path / "ours")
    in_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ours")).eval()
    torch.testing.assert_close(_logits(in_peft, inputs), _logits(ours, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", list(BITS))
@pytest.mark.parametrize("method", sorted(REFUSED))
def test_refused_methods_name_the_problem(method, case):
    base = _quantized_base(case)
    with pytest.raises(UnsupportedLayerError, match=REFUSED[method]):
        peftkit.get_peft_model(base, _config(peftkit, method))


@pytest.mark.parametrize(
    "method",
    [
        *("adamss", "deft", "delora", "glora", "hra", "loha", "lokr", "osf", "peanut", "psoft"),
        *("supertuning", "tinylora", "vera", "ia3"),
    ],
)
def test_training_lowers_the_loss_where_peft_fails_or_was_wrong(method):
    model = peftkit.get_peft_model(_quantized_base("nf4"), _config(peftkit, method)).train()
    inputs = llama_inputs(batch=4, length=8)
    labels = inputs["input_ids"].clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses


def test_xlora_over_4bit_equals_the_dequantized_reference(tmp_path):
    """X-LoRA's layers are LoRA layers: over a 4-bit base they are LoRA's bitsandbytes layers. The
    classifier and the experts give the dequantized copy's logits (1e-5). peft 0.21's X-LoRA fails there
    (it hands its `scalings` keyword to bitsandbytes' forward)."""
    adapters = {}
    for number, targets in enumerate((["q_proj", "v_proj"], ["q_proj", "down_proj"])):
        torch.manual_seed(number)
        config = peftkit.LoraConfig(r=4, target_modules=targets, init_lora_weights=False)
        peftkit.get_peft_model(quantizable_llama(), config).save_pretrained(tmp_path / str(number))
        adapters[str(number)] = str(tmp_path / str(number))
    base = _quantized_base("nf4")
    base.config.use_cache = False

    def config(lib):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return lib.XLoraConfig(task_type="CAUSAL_LM", hidden_size=64, adapters=adapters)

    inputs = llama_inputs()
    theirs = peft.get_peft_model(copy.deepcopy(base), config(peft)).eval()
    with pytest.raises(TypeError, match="scalings"):
        _logits(theirs, inputs)
    ours = peftkit.get_peft_model(copy.deepcopy(base), config(peftkit)).eval()
    perturb_adapter_weights(ours, scale=0.3)
    layer = ours.base_model.lora_model.model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "Linear4bit" and is_bnb_layer(layer.get_base_layer())
    reference = peftkit.get_peft_model(dequantized_copy(base), config(peftkit)).eval()
    adapter = {
        k: v for k, v in ours.state_dict().items() if ".lora_A." in k or ".lora_B." in k or "classifier" in k
    }
    result = reference.load_state_dict(adapter, strict=False)
    assert not result.unexpected_keys
    torch.testing.assert_close(_logits(ours, inputs), _logits(reference, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", list(BITS))
@pytest.mark.parametrize("method", sorted(PROMPT_CONFIGS))
def test_prompt_learning_forward_and_training_step_equal_the_dequantized_reference(method, case):
    """A prompt-learning adapter on a quantized base: its forward, and one training step (loss, then the
    forward after an SGD step), equal the same prompt encoder (copied) on the dequantized copy, within the
    bound of the layer methods' forward. The step is large (prompt gradients are ~1e-2) so that it moves the
    output by more than that bound: the comparison after it then checks the gradients."""
    base = _quantized_base(case)
    inputs = _inputs(method)
    ours = _ours(method, base)
    reference = peftkit.get_peft_model(dequantized_copy(base), _config(peftkit, method)).eval()
    reference.prompt_encoder.load_state_dict(ours.prompt_encoder.state_dict(), strict=True)
    before = _logits(ours, inputs)
    expected = _logits(reference, inputs)
    with ours.disable_adapter():
        base_out = _logits(ours, inputs)
    assert (before[:, -base_out.shape[1] :] - base_out).abs().max() > 1e-2, (
        "the prompt must change the output"
    )
    atol = _tolerance(case, ours, reference, inputs, expected)
    assert (before - expected).abs().max().item() <= atol
    losses = []
    for model in (ours, reference):
        model.train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=100.0)
        loss = model(**inputs, labels=inputs["input_ids"].clone()).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        model.eval()
    assert abs(losses[0] - losses[1]) <= atol, losses
    after = _logits(ours, inputs)
    assert (after - before).abs().max().item() > 2 * atol, "the step must move the output beyond the bound"
    assert (after - _logits(reference, inputs)).abs().max().item() <= atol
