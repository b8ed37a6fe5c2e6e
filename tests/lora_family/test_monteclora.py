"""MonteCLoRA (`monteclora_config`): peft's noise draws, training outputs, gradients and variational loss;
plain LoRA in evaluation and merging; the same files."""

import copy
import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama, trainable_names
from tests.lora_family.helpers import max_diff

import peftkit
from peftkit.helpers import MontecloraTrainerMixin
from peftkit.tuners.lora.monteclora import MontecloraSampler, wishart_identity_draw

ATOL = 1e-5
TARGETS = ["q_proj", "v_proj", "down_proj"]
MONTE = {"num_samples": 3, "buffer_size": 2, "use_entropy": True, "sample_scaler": 0.05}


def _pair(base, **extra):
    import peft

    kwargs = dict(r=4, target_modules=TARGETS, monteclora_config=MONTE, **extra)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**kwargs))
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _share_peft_noise(theirs, ours):
    """Give each of our samplers the noise peft's sampler drew at creation (peft keeps it in a list)."""
    mine = {n: m for n, m in ours.named_modules() if isinstance(m, MontecloraSampler)}
    for name, module in theirs.named_modules():
        if type(module).__name__ == "MontecloraSampler":
            buffer = module.sampler.buffer
            mine[name]._noise = tuple(
                torch.stack([s[k] for s in buffer]) for k in ("z_mvn", "z_dirichlet", "z_wishart")
            )
            mine[name]._next = module.sampler.index
    assert len(mine) == 6


def test_config_fields_and_defaults_are_peft_s():
    from peft.tuners.lora.config import MontecloraConfig as Theirs

    def defaults(cls):
        return {f.name: f.default for f in dataclasses.fields(cls)}

    assert defaults(peftkit.MontecloraConfig) == defaults(Theirs)
    for bad in ({"num_samples": 0}, {"dirichlet_prior": 0.0}, {"buffer_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            peftkit.MontecloraConfig(**bad)


def test_noise_is_drawn_in_peft_s_order_and_only_when_training_needs_it():
    from peft.tuners.lora.monteclora import MontecloraSampler as Theirs
    from torch.distributions import Wishart

    torch.manual_seed(3)
    expected = Wishart(df=5, scale_tril=torch.eye(5))._bartlett_sampling(torch.Size())
    torch.manual_seed(3)
    assert torch.equal(wishart_identity_draw(5, torch.device("cpu")), expected)
    torch.manual_seed(5)
    theirs = Theirs(
        in_features=6, out_features=3, num_samples=2, buffer_size=3, device="cpu", dtype=torch.float32
    )
    torch.manual_seed(5)
    ours = MontecloraSampler(6, 3, peftkit.MontecloraConfig(num_samples=2, buffer_size=3), torch.float32)
    assert ours._noise is None  # nothing drawn at creation (peft: 3 * 2 * 6 * 3 numbers per layer)
    ours._refill()
    for step, sample in enumerate(theirs.sampler.buffer):
        assert torch.equal(ours._noise[0][step], sample["z_mvn"])
        assert torch.equal(ours._noise[1][step], sample["z_dirichlet"])
        assert torch.equal(ours._noise[2][step], sample["z_wishart"])
    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.LoraConfig(target_modules=TARGETS, monteclora_config=MONTE)
    )
    model.eval()
    model(**llama_inputs())
    assert all(m._noise is None for m in model.modules() if isinstance(m, MontecloraSampler))


def test_training_outputs_gradients_and_variational_loss_equal_peft():
    base = tiny_llama()
    theirs, ours = _pair(base)
    assert trainable_names(ours) == trainable_names(theirs)
    assert any("std_prior" in n for n in trainable_names(ours))
    _share_peft_noise(theirs, ours)
    for step in range(3):  # the third step refills the buffer (buffer_size=2): the models are re-seeded alike
        inputs = llama_inputs(seed=step)
        results = []
        for model in (theirs, ours):
            torch.manual_seed(100 + step)
            model.train()
            model.zero_grad()
            logits = model(**inputs).logits
            loss = logits.pow(2).mean() + model.base_model._get_monteclora_loss()
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
            results.append((logits.detach(), loss.item(), grads))
        (their_logits, their_loss, their_grads), (logits, loss, grads) = results
        assert max_diff(logits, their_logits) < ATOL
        assert abs(loss - their_loss) < ATOL * max(1.0, abs(their_loss))
        assert max(max_diff(grads[n], their_grads[n]) for n in grads) < ATOL
        assert max_diff(logits, base(**inputs).logits) > 1e-3
    saved = {k: v for k, v in theirs.state_dict().items() if "monteclora" in k}
    assert (
        max(max_diff(ours.state_dict()[k], v) for k, v in saved.items()) < ATOL
    )  # the last draw, as peft saves


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_evaluation_merge_and_files_both_ways(tmp_path, low_cpu_mem_usage):
    import peft

    base = tiny_llama()
    inputs = llama_inputs()
    theirs, ours = _pair(base)
    expected = theirs.eval()(**inputs).logits
    assert max_diff(ours.eval()(**inputs).logits, expected) < ATOL
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    saved = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert sorted(saved) == sorted(load_file(tmp_path / "theirs" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_monteclora_sampler.std_prior" in saved
    in_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    assert max_diff(in_peft(**inputs).logits, expected) < ATOL
    loaded = peftkit.PeftModel.from_pretrained(
        copy.deepcopy(base), tmp_path / "theirs", low_cpu_mem_usage=low_cpu_mem_usage
    )
    assert isinstance(loaded.peft_config["default"].monteclora_config, peftkit.MontecloraConfig)
    assert max_diff(loaded(**inputs).logits, expected) < ATOL
    # the trained priors are loaded (with low_cpu_mem_usage too)
    assert all(
        torch.equal(loaded.state_dict()[k], v) for k, v in theirs.state_dict().items() if "std_prior" in k
    )
    ours.merge_adapter()
    assert max_diff(ours(**inputs).logits, expected) < ATOL


def test_trainer_mixin_adds_the_variational_loss_as_peft_s():
    from peft.helpers import MontecloraTrainerMixin as TheirMixin

    class FakeTrainer:
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            outputs = model(**inputs)
            loss = outputs.logits.pow(2).mean()
            return (loss, outputs) if return_outputs else loss

    class Ours(MontecloraTrainerMixin, FakeTrainer):
        pass

    class Theirs(TheirMixin, FakeTrainer):
        pass

    theirs, ours = _pair(tiny_llama())
    _share_peft_noise(theirs, ours)
    inputs = llama_inputs()
    theirs.train()
    ours.train()
    their_loss = Theirs().compute_loss(theirs, inputs)
    loss, outputs = Ours().compute_loss(ours, inputs, return_outputs=True)
    assert abs(loss.item() - their_loss.item()) < ATOL
    assert loss.item() > outputs.logits.pow(2).mean().item()  # the variational loss was added
    plain = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(target_modules=TARGETS))
    assert Ours().compute_loss(plain, inputs).item() == FakeTrainer().compute_loss(plain, inputs).item()


def test_linear_layers_only():
    with pytest.raises(ValueError, match="monteclora_config"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.LoraConfig(target_modules=["embed_tokens"], monteclora_config={})
        )
