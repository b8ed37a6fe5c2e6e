"""CPT against peft: the prompted forward, CPT's labels, token-role masks and (decayed) loss, gradients
and the projection equal peft's; files move both ways; generation; training lowers the loss."""

import copy
import json

import peft
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import llama_inputs, tiny_llama
from tests.prompt_learning.helpers import assert_close
from tests.tuners import method_checks as checks

import peftkit
from peftkit.tuners.tuners_utils import BaseTunerLayer
from peftkit.utils.warnings import AdapterLoadError

METHOD = "CPTConfig"
GRAD_ATOL = 1e-5  # gradients of the same loss on the same weights (fp32)
# a context of two examples: input template, input, output template, label (roles 1-4, then 5-8)
CONTEXT = {
    "cpt_token_ids": [5, 6, 7, 8, 9, 10, 11, 12],
    "cpt_mask": [1] * 8,
    "cpt_tokens_type_mask": [1, 2, 3, 4, 5, 6, 7, 8],
}
BATCH_ROLES = torch.tensor([[0, 0, 1, 2, 3, 4, 4], [1, 2, 2, 3, 4, 8, 8]])


def _config(lib, **overrides):
    return lib.CPTConfig(task_type="CAUSAL_LM", **{**CONTEXT, **overrides})


def _pair(**overrides):
    """peft's and peftkit's CPT on the same tiny Llama, the trained change moved off zero (the same in both)."""
    base = tiny_llama()
    models = []
    for lib in (peft, peftkit):
        model = lib.get_peft_model(copy.deepcopy(base), _config(lib, **overrides))
        with torch.no_grad():
            delta = model.prompt_encoder["default"].delta_embedding.weight
            delta.copy_(torch.randn(delta.shape, generator=torch.Generator().manual_seed(1)) * 0.01)
        models.append(model)
    return base, *models


def _run(model, roles: torch.Tensor | None, labels: bool = True):
    inputs = llama_inputs()
    if labels:
        inputs["labels"] = inputs["input_ids"].clone()
    if roles is not None:
        inputs["input_type_mask"] = roles.clone()
    return model(**inputs)


@pytest.mark.parametrize(
    ("loss_type", "roles"),
    [("none", BATCH_ROLES), ("decay", BATCH_ROLES), ("decay", None)],
    ids=["plain_loss", "decayed_loss", "default_roles"],
)
def test_loss_logits_and_gradients_equal_peft(loss_type, roles):
    _, theirs, ours = _pair(opt_weighted_loss_type=loss_type, opt_loss_decay_factor=0.8)
    expected, actual = _run(theirs, roles), _run(ours, roles)
    assert torch.isfinite(actual.loss)
    assert_close(actual.logits, expected.logits, 1e-6)
    assert_close(actual.loss, expected.loss, 1e-6)
    expected.loss.backward()
    actual.loss.backward()
    grads = [m.prompt_encoder["default"].delta_embedding.weight.grad for m in (theirs, ours)]
    assert grads[0].abs().max() > 1e-4
    checks.assert_close(grads[1], grads[0], GRAD_ATOL, "delta gradient")
    # the projection ran in the forward: the same change in both
    weights = [m.prompt_encoder["default"].delta_embedding.weight for m in (theirs, ours)]
    checks.assert_close(weights[1], weights[0], 0.0, "projected change")


def test_label_tokens_get_no_gradient_and_the_change_stays_in_its_ball():
    _, _, ours = _pair()
    encoder = ours.prompt_encoder["default"]
    _run(ours, BATCH_ROLES).loss.backward()
    grad = encoder.delta_embedding.weight.grad
    label_rows = torch.tensor(CONTEXT["cpt_tokens_type_mask"]) % 4 == 0
    assert grad[label_rows].abs().max() == 0 and grad[~label_rows].abs().max() > 0
    with torch.no_grad():
        encoder.delta_embedding.weight.mul_(100.0)  # far outside every ball
        encoder(torch.arange(8))
    norms = encoder.delta_embedding.weight.norm(dim=1)
    assert (norms <= encoder.get_epsilon() * (1 + 1e-6)).all()
    assert torch.equal(encoder.get_epsilon(), peft.tuners.cpt.CPTEmbedding.get_epsilon(encoder))


def test_the_caller_s_input_type_mask_is_left_unchanged():
    """peft 0.21.2 shifts the caller's `input_type_mask` in place (a second call then sees other roles);
    peftkit leaves it as it was (a deliberate difference)."""
    _, _, ours = _pair()
    roles = BATCH_ROLES.clone()
    inputs = {**llama_inputs(), "labels": llama_inputs()["input_ids"], "input_type_mask": roles}
    first = ours(**inputs).loss
    assert torch.equal(roles, BATCH_ROLES)
    assert_close(ours(**inputs).loss, first, 0.0)


def test_without_labels_the_prompted_logits_equal_peft_and_disable_gives_the_base():
    base, theirs, ours = _pair()
    inputs = llama_inputs()
    with torch.no_grad():
        logits = ours(**inputs).logits
        assert logits.shape[1] == 8 + inputs["input_ids"].shape[1]
        assert_close(logits, theirs(**inputs).logits, 1e-6)
        with ours.disable_adapter():
            assert_close(ours(**inputs).logits, base(**inputs).logits, 1e-6)
    with pytest.raises(ValueError, match="virtual tokens"):
        ours.merge_and_unload()


def test_files_are_peft_s_and_load_both_ways(tmp_path):
    base, theirs, ours = _pair()
    inputs = llama_inputs()
    with torch.no_grad():
        expected = ours(**inputs).logits
    theirs.save_pretrained(tmp_path / "peft")
    ours.save_pretrained(tmp_path / "peftkit")
    files = [load_file(tmp_path / side / "adapter_model.safetensors") for side in ("peft", "peftkit")]
    assert list(files[1]) == ["prompt_embeddings"] == list(files[0])
    assert_close(files[1]["prompt_embeddings"], files[0]["prompt_embeddings"], 1e-6)
    configs = [
        json.loads((tmp_path / side / "adapter_config.json").read_text()) for side in ("peft", "peftkit")
    ]
    assert configs[1] == configs[0]
    for lib, side in ((peftkit, "peft"), (peft, "peftkit")):
        loaded = lib.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / side).eval()
        with torch.no_grad():
            assert_close(loaded(**inputs).logits, expected, 1e-5)


def test_generate_is_greedy_decoding_of_the_forward_and_equals_prompt_tuning():
    """peft 0.21.2's prompt-learning generation is broken on transformers >= 5.24 (see tests/oracle.py:
    here its greedy tokens differ from greedy decoding of its own forward), so it is no reference. CPT's
    generation equals greedy decoding by repeated forwards (whose logits equal peft's, tested above), and
    on a left-padded batch what prompt tuning (checked against recorded peft answers) generates with the
    same virtual tokens."""
    base, _, ours = _pair()
    kwargs = {"max_new_tokens": 4, "do_sample": False}
    ids = llama_inputs()["input_ids"][1:]
    decoded = ids
    with torch.no_grad():
        for _ in range(4):
            decoded = torch.cat([decoded, ours(input_ids=decoded).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(ours.generate(input_ids=ids, **kwargs), decoded)
    prompt_tuning = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8)
    )
    with torch.no_grad():
        tokens = ours.prompt_encoder["default"](torch.arange(8))
        prompt_tuning.prompt_encoder["default"].embedding.weight.copy_(tokens)
    padded = llama_inputs()
    assert torch.equal(ours.generate(**padded, **kwargs), prompt_tuning.generate(**padded, **kwargs))


def test_training_lowers_the_cpt_loss():
    torch.manual_seed(0)
    model = peftkit.get_peft_model(tiny_llama(), _config(peftkit, opt_projection_epsilon=1.0))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_encoder.default.delta_embedding.weight"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(6):
        loss = _run(model.train(), BATCH_ROLES).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_a_second_adapter_uses_its_own_config():
    """peft 0.21.2 computes the CPT loss with the config named "default" whatever adapter is active (an
    adapter with another name fails); peftkit uses the active adapter's config."""
    _, _, ours = _pair()
    ours.add_adapter("decayed", _config(peftkit, opt_weighted_loss_type="decay", opt_loss_decay_factor=0.5))
    plain = _run(ours, BATCH_ROLES).loss
    ours.set_adapter("decayed")
    decayed = _run(ours, BATCH_ROLES).loss
    assert torch.isfinite(decayed) and (plain - decayed).abs() > 1e-4


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="only supports task_type = CAUSAL_LM"):
        peftkit.CPTConfig(task_type="SEQ_CLS")
    with pytest.raises(ValueError, match="must have the same length.*3, 2 and 3"):
        peftkit.CPTConfig(
            task_type="CAUSAL_LM", cpt_token_ids=[1, 2, 3], cpt_mask=[1, 1], cpt_tokens_type_mask=[1, 2, 3]
        )
    with pytest.raises(ValueError, match="non-negative integers"):
        peftkit.CPTConfig(task_type="CAUSAL_LM", cpt_token_ids=[1], cpt_tokens_type_mask=[-1])
    with pytest.raises(ValueError, match="opt_weighted_loss_type must be one of"):
        peftkit.CPTConfig(task_type="CAUSAL_LM", opt_weighted_loss_type="linear")


def test_config_defaults_are_peft_s():
    checks.check_config_fields(METHOD)
    theirs, ours = peft.CPTConfig(task_type="CAUSAL_LM"), peftkit.CPTConfig(task_type="CAUSAL_LM")
    for name in (
        "cpt_token_ids",
        "cpt_mask",
        "cpt_tokens_type_mask",
        "num_virtual_tokens",
        "num_transformer_submodules",
    ):
        assert getattr(ours, name) == getattr(theirs, name), name


def test_truncated_file_is_a_clear_error(tmp_path):
    """As for every method: a cut-off weights file names the file, and the model is left without adapter layers."""
    base = tiny_llama()
    peftkit.get_peft_model(copy.deepcopy(base), _config(peftkit)).save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    model = copy.deepcopy(base)
    with pytest.raises(AdapterLoadError, match=r"adapter_model\.safetensors.*truncated or corrupt"):
        peftkit.PeftModel.from_pretrained(model, tmp_path)
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
