"""The mixed-adapter LoRA path (tuners/lora/mixed_batch.py): both strategies, the factor bank kept across
decoding steps, generation equal to each adapter alone, and the kernel seam."""

import copy
import pickle

import pytest
import torch
from tests.conftest import (
    llama_inputs,
    perturb_adapter_weights,
    require_native_kernels,
    tiny_llama,
    torch_threads,
)

import peftkit
from peftkit.tuners._mixed_batch import MixedBatch
from peftkit.tuners.lora import mixed_batch, mixed_lora_native

RANKS = {"r2": 2, "r4": 4, "r8": 8, "q_only": 4}


@pytest.fixture(scope="module")
def model():
    base = tiny_llama()
    first = next(iter(RANKS))
    model = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.LoraConfig(r=RANKS[first], target_modules="all-linear"), first
    )
    for name, r in list(RANKS.items())[1:]:
        targets = ["q_proj"] if name == "q_only" else "all-linear"
        model.add_adapter(name, peftkit.LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
    for i, name in enumerate(RANKS):
        model.set_adapter(name)
        perturb_adapter_weights(model, seed=i, scale=0.3)
    model.set_adapter("r2")
    return model.eval()


def _layer(model):
    return model.base_model.model.model.layers[0].mlp.up_proj  # q_only has no factors here


def _per_sample(layer, x, names):
    rows = []
    for row, name in zip(x, names):
        out = layer.base_layer(row)
        if name != "__base__" and layer.has_adapter(name):
            A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
            out = out + layer.scaling[name] * (row @ A.T @ B.T)
        rows.append(out)
    return torch.stack(rows)


MIXED = ["r8", "__base__", "r2", "q_only", "r4", "r8"]
IN_ORDER = ["r8", "r2", "r4"]  # distinct adapters: sample i uses slot i, the stacks are read as they are


def _count_native_calls(monkeypatch) -> list[bool]:
    """A list that collects the `accumulate` flag of every native kernel call from now on."""
    calls: list[bool] = []
    native = mixed_lora_native.BoundKernel.__call__
    monkeypatch.setattr(
        mixed_lora_native.BoundKernel, "__call__", lambda *a: calls.append(a[-1]) or native(*a)
    )
    return calls


def _use_kernel(monkeypatch, kernel: str) -> list:
    """Runs the layer's mixed path through the native kernel, or the torch kernel with one strategy; the
    list collects the native kernel's calls."""
    calls: list = []
    if kernel == "native":
        require_native_kernels(mixed_lora_native)
        monkeypatch.delitem(mixed_batch.MIXED_LORA_KERNELS, "cpu", raising=False)
        calls = _count_native_calls(monkeypatch)
    else:
        monkeypatch.setitem(mixed_batch.MIXED_LORA_KERNELS, "cpu", mixed_batch.torch_mixed_lora)
        monkeypatch.setattr(mixed_batch, "choose_strategy", lambda *args: kernel)
    return calls


@pytest.mark.parametrize("kernel", ["dense", "per_sample", "native"])
@pytest.mark.parametrize("tokens", [1, 6])
@pytest.mark.parametrize("names", [MIXED, IN_ORDER], ids=["mixed", "in_order"])
@torch.no_grad()
def test_every_kernel_equals_each_sample_alone(model, monkeypatch, kernel, tokens, names):
    native_calls = _use_kernel(monkeypatch, kernel)
    layer = _layer(model)
    assert mixed_batch.layer_routing(layer, MixedBatch(names), torch.device("cpu")).in_order == (
        names is IN_ORDER
    )
    x = torch.randn(len(names), tokens, layer.in_features, generator=torch.Generator().manual_seed(0))
    expected = _per_sample(layer, x, names)
    torch.testing.assert_close(layer(x, adapter_names=names), expected, atol=1e-5, rtol=0)
    # the native kernel writes the delta (the base GEMM adds onto it), or adds to zeros where some
    # sample has no adapter on this layer
    assert native_calls == ([names is MIXED] if kernel == "native" else [])
    # autograd on: the same values out of place (the native kernel does not record a graph: torch runs)
    with torch.enable_grad():
        torch.testing.assert_close(
            layer(x.requires_grad_(), adapter_names=names), expected, atol=1e-5, rtol=0
        )
    assert len(native_calls) == (kernel == "native")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("slots", "rows_per_sample", "rank", "in_features", "out_features"),
    [
        ([0, 1, 2, 3], 1, 16, 64, 48),  # decoding distinct adapters in slot order
        ([3, 1, -1, 1, 0, 3, 3], 1, 5, 40, 24),  # repeats, a sample without adapter, an odd rank
        ([2, 0, 2], 7, 1, 8, 8),  # rank 1, rows not a multiple of the 4- and 6-row blocks
        ([1, 0], 50, 17, 96, 136),  # prefill: more rows than a work unit (48), 16 + 1 ranks
        ([0, 0, 0], 33, 8, 72, 16),  # one adapter for every sample; slot 1 has no samples
    ],
)
def test_native_kernel_equals_float64(slots, rows_per_sample, rank, in_features, out_features, threads):
    require_native_kernels(mixed_lora_native)
    generator = torch.Generator().manual_seed(len(slots) * rank)
    count = max(slots) + 2
    rows = len(slots) * rows_per_sample
    x = torch.randn(rows, in_features, generator=generator)
    stack_A = torch.randn(count, rank, in_features, generator=generator)
    stack_B = torch.randn(count, rank, out_features, generator=generator)
    start = torch.randn(rows, out_features, generator=generator)
    expected = start.double().clone()
    for sample, slot in enumerate(slots):
        if slot >= 0:
            part = slice(sample * rows_per_sample, (sample + 1) * rows_per_sample)
            expected[part] += x[part].double() @ stack_A[slot].double().T @ stack_B[slot].double()
    grouped = mixed_lora_native.segments(slots, count)
    with torch_threads(threads):
        added, written = start.clone(), torch.full_like(start, float("nan"))
        kernel = mixed_lora_native.BoundKernel(stack_A, stack_B, grouped)
        kernel(x, added, rows_per_sample, True)
        kernel(x, written, rows_per_sample, False)
    # float32 sums of in_features + rank products of unit-variance values: within 2e-5 of the result's
    # size (~sqrt(in * rank) * sqrt(rank))
    tolerance = 2e-5 * (in_features * rank) ** 0.5 * rank**0.5
    torch.testing.assert_close(added.double(), expected, atol=tolerance, rtol=0)
    with_adapter = torch.tensor([s >= 0 for s in slots]).repeat_interleave(rows_per_sample)
    torch.testing.assert_close(
        written[with_adapter].double(), (expected - start.double())[with_adapter], atol=tolerance, rtol=0
    )
    assert written[~with_adapter].isnan().all()  # rows of samples without an adapter: left alone


@pytest.mark.parametrize("case", ["width_not_multiple_of_8", "float64", "non_contiguous"])
@torch.no_grad()
def test_inputs_outside_the_native_kernel_give_the_same_values(monkeypatch, case):
    require_native_kernels(mixed_lora_native)
    calls = _count_native_calls(monkeypatch)
    width = 12 if case == "width_not_multiple_of_8" else 16
    dtype = torch.float64 if case == "float64" else torch.float32
    base = torch.nn.Sequential(torch.nn.Linear(width, 24)).to(dtype)
    model = peftkit.get_peft_model(base, peftkit.LoraConfig(r=4, target_modules=["0"]), "a").eval()
    model.add_adapter("b", peftkit.LoraConfig(r=2, target_modules=["0"]))
    for i, name in enumerate(["a", "b"]):
        model.set_adapter(name)
        perturb_adapter_weights(model, seed=i, scale=0.3)
    layer = model.base_model.model[0]
    names = ["b", "a", "b"]
    x = torch.randn(3, 5, width, dtype=dtype, generator=torch.Generator().manual_seed(2))
    if case == "non_contiguous":
        x = torch.randn(3, 2 * width, 5, dtype=dtype).transpose(1, 2)[..., ::2]
        assert not x.is_contiguous()
    torch.testing.assert_close(layer(x, adapter_names=names), _per_sample(layer, x, names), atol=1e-5, rtol=0)
    # a width the kernel's 8-wide vectors do not divide, or float64: the torch kernel runs; a
    # non-contiguous input is copied by the reshape to rows, and the native kernel runs on the copy
    assert len(calls) == (case == "non_contiguous")


def test_strategy_follows_the_byte_estimate():
    assert mixed_batch.choose_strategy(rows=16, samples=16, adapters=16) == "dense"  # decoding
    # decoding where sample i uses slot i: per sample reads the stacks without copying them
    assert mixed_batch.choose_strategy(rows=16, samples=16, adapters=16, in_order=True) == "per_sample"
    assert mixed_batch.choose_strategy(rows=1024, samples=16, adapters=16) == "per_sample"  # prefill


@torch.no_grad()
def test_generate_equals_each_adapter_alone_and_stacks_factors_once(model, monkeypatch):
    for layer in model.modules():  # start without banks left by other tests
        if isinstance(layer, peftkit.tuners.lora.Linear):
            mixed_batch.drop_cached_factors(layer)
    builds = []
    original = mixed_batch._build_bank
    monkeypatch.setattr(mixed_batch, "_build_bank", lambda *a: builds.append(a[1]) or original(*a))
    names = ["r4", "r8", "__base__", "q_only", "r2"]
    inputs = llama_inputs(batch=len(names), length=5, seed=3)
    settings = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    mixed = model.generate(**inputs, adapter_names=names, **settings)
    layers = [m for m in model.modules() if isinstance(m, peftkit.tuners.lora.Linear)]
    # every layer stacked its adapters once for the whole generate call (6 forwards), not per step
    assert len(builds) == len(layers)
    again = model.generate(**inputs, adapter_names=names, **settings)
    assert len(builds) == len(layers)  # same adapters, unchanged factors: the banks are reused
    assert torch.equal(again.sequences, mixed.sequences)
    for row, name in enumerate(names):
        single = {k: v[row : row + 1] for k, v in inputs.items()}
        if name == "__base__":
            with model.disable_adapter():
                alone = model.generate(**single, **settings)
        else:
            model.set_adapter(name)
            alone = model.generate(**single, **settings)
        assert torch.equal(mixed.sequences[row : row + 1], alone.sequences)
        for step_mixed, step_alone in zip(mixed.logits, alone.logits):
            torch.testing.assert_close(step_mixed[row : row + 1], step_alone, atol=1e-5, rtol=0)
    model.set_adapter("r2")


@torch.no_grad()
def test_sampling_with_mixed_adapters_runs_and_is_reproducible(model):
    names = ["r4", "r8", "r2"]
    inputs = llama_inputs(batch=3, length=4, seed=5)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(model.generate(**inputs, adapter_names=names, max_new_tokens=5, do_sample=True, top_k=20))
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (3, 9)


@torch.no_grad()
def test_a_registered_kernel_replaces_the_torch_one(model, monkeypatch):
    calls = []

    def spy_kernel(x, out, bank, routing, rows_per_sample, accumulate):
        calls.append((bank.names, rows_per_sample, accumulate))
        mixed_batch.torch_mixed_lora(x, out, bank, routing, rows_per_sample, accumulate)

    monkeypatch.setitem(mixed_batch.MIXED_LORA_KERNELS, "cpu", spy_kernel)
    layer = _layer(model)
    x = torch.randn(2, 3, layer.in_features)
    out = layer(x, adapter_names=MixedBatch(["r2", "r8"]))
    assert calls == [(("r2", "r8"), 3, False)]
    torch.testing.assert_close(out, _per_sample(layer, x, ["r2", "r8"]), atol=1e-5, rtol=0)


@torch.no_grad()
def test_deleting_an_adapter_frees_its_stacked_copy(model):
    model = copy.deepcopy(model)
    layer = _layer(model)
    layer(torch.randn(2, 1, layer.in_features), adapter_names=["r2", "r4"])
    assert layer.mixed_factor_bank is not None and layer.mixed_factor_bank.names == ("r2", "r4")
    model.delete_adapter("r4")
    assert layer.mixed_factor_bank is None


@torch.no_grad()
def test_the_same_adapters_in_another_order_reuse_the_bank(model, monkeypatch):
    builds = []
    original = mixed_batch._build_bank
    monkeypatch.setattr(mixed_batch, "_build_bank", lambda *a: builds.append(a[1]) or original(*a))
    layer = _layer(model)
    mixed_batch.drop_cached_factors(layer)
    x = torch.randn(3, 2, layer.in_features)
    for names in (["r2", "r4", "r8"], ["r8", "r2", "r4"], ["r4", "r4", "r8"]):
        out = layer(x, adapter_names=names)
        torch.testing.assert_close(out, _per_sample(layer, x, names), atol=1e-5, rtol=0)
    # one build for {r2, r4, r8}, kept when only the order changed; {r4, r8} is another set
    assert builds == [("r2", "r4", "r8"), ("r4", "r8")]


def _change_in_place(layer):
    layer.lora_B["r4"].weight.add_(0.25)


def _change_in_inference_mode(layer):
    with torch.inference_mode():
        layer.lora_B["r4"].weight.add_(0.25)


def _assign_data(layer):
    layer.lora_B["r4"].weight.data = layer.lora_B["r4"].weight.data + 0.25


def _replace_parameter(layer):
    layer.lora_B["r4"].weight = torch.nn.Parameter(layer.lora_B["r4"].weight + 0.25)


def _rescale(layer):
    layer.scaling["r4"] *= 3.0


@pytest.mark.parametrize(
    "change", [_change_in_place, _change_in_inference_mode, _assign_data, _replace_parameter, _rescale]
)
@torch.no_grad()
def test_a_later_call_with_the_same_names_reuses_the_routing_until_a_factor_changes(model, change):
    model = copy.deepcopy(model)
    layer = _layer(model)
    names = ["r4", "__base__", "r8", "r4"]
    x = torch.randn(len(names), 3, layer.in_features, generator=torch.Generator().manual_seed(1))
    layer(x, adapter_names=names)
    routing, bank = layer.mixed_routing, layer.mixed_factor_bank
    layer(x, adapter_names=list(names))  # another call (a new MixedBatch), the same names: kept
    assert layer.mixed_routing is routing and layer.mixed_factor_bank is bank
    layer(x, adapter_names=["r8", "__base__", "r4", "r4"])  # other names: worked out again
    assert layer.mixed_routing is not routing
    routing = layer.mixed_routing
    change(layer)
    out = layer(x, adapter_names=["r8", "__base__", "r4", "r4"])
    assert layer.mixed_routing is not routing and layer.mixed_factor_bank is not bank
    torch.testing.assert_close(out, _per_sample(layer, x, ["r8", "__base__", "r4", "r4"]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("duplicate", ["deepcopy", "pickle"])
@torch.no_grad()
def test_a_copied_layer_runs_on_its_own_stacked_factors(model, duplicate):
    """The native kernel keeps raw pointers to the bank it was bound to; a copy of the layer must point
    at its own copy of the bank, not at the original's memory."""
    require_native_kernels(mixed_lora_native)
    layer = _layer(model)
    names = MixedBatch(["r2", "r8", "r2"])  # one routing for both: the twin takes the copied one as it is
    x = torch.randn(len(names), 2, layer.in_features, generator=torch.Generator().manual_seed(5))
    layer(x, adapter_names=names)
    assert layer.mixed_routing.native is not None  # bound by the call above
    twin = copy.deepcopy(layer) if duplicate == "deepcopy" else pickle.loads(pickle.dumps(layer))
    expected = _per_sample(twin, x, names)
    original_bank = layer.mixed_factor_bank
    original_bank.stack_A.zero_()  # the original's bank: no longer its adapters' factors
    original_bank.stack_B.zero_()
    mixed_batch.drop_cached_factors(layer)  # (the shared fixture's next call rebuilds it)
    torch.testing.assert_close(twin(x, adapter_names=names), expected, atol=1e-5, rtol=0)
