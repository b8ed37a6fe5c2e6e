"""peftkit.utils.incremental_pca.IncrementalPCA against peft's (live), scikit-learn's (recorded by
tests/utils/record_sklearn_ipca.py, as scikit-learn is not a test dependency; also live where it is
installed), and a PCA of the whole data where incremental PCA is exact."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from peft.utils.incremental_pca import IncrementalPCA as PeftIncrementalPCA
from safetensors import safe_open

from peftkit.utils.incremental_pca import IncrementalPCA

ATOL = 1e-5  # the brief's bound for equal answers
ATTRIBUTES = (
    "components_",
    "singular_values_",
    "explained_variance_",
    "explained_variance_ratio_",
    "noise_variance_",
    "mean_",
    "var_",
)
SKLEARN_REFERENCE = Path(__file__).with_name("sklearn_ipca_reference.safetensors")


def data(n_samples: int, n_features: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(n_features, n_features, generator=gen)
    return (
        torch.randn(n_samples, n_features, generator=gen) @ mixing + torch.randn(n_features, generator=gen)
    ).to(dtype)


def assert_same_fit(ours: IncrementalPCA, theirs, atol: float = ATOL) -> None:
    for name in ATTRIBUTES:
        actual, expected = getattr(ours, name), getattr(theirs, name)
        assert actual.dtype == expected.dtype, (name, actual.dtype, expected.dtype)
        diff = (actual - expected).abs().max().item()
        assert diff <= atol, f"{name}: max abs difference {diff:.3g} > {atol}"
    assert torch.equal(ours.n_samples_seen_, theirs.n_samples_seen_)
    assert ours.n_components == theirs.n_components and ours.n_features_ == theirs.n_features_


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_components": 3, "batch_size": 20},
        {"n_components": 2, "batch_size": 33},  # the last batch is merged into the one before it
        {"n_components": None},  # all components, default batch size
        {"n_components": 4, "batch_size": 25, "lowrank": True, "lowrank_seed": 7},
        {
            "n_components": 3,
            "batch_size": 30,
            "lowrank": True,
            "lowrank_q": 5,
            "lowrank_niter": 2,
            "lowrank_seed": 1,
        },
    ],
    ids=["truncated", "merged_last_batch", "all_components", "lowrank", "lowrank_q_niter"],
)
def test_fit_equals_peft(kwargs, dtype):
    X = data(90, 8, dtype=dtype)
    ours = IncrementalPCA(**kwargs).fit(X)
    theirs = PeftIncrementalPCA(**kwargs).fit(X)
    assert_same_fit(ours, theirs)
    actual, expected = ours.transform(X), theirs.transform(X)
    assert actual.dtype == expected.dtype
    assert (actual - expected).abs().max().item() <= ATOL


def test_partial_fit_sequence_equals_peft():
    ours, theirs = IncrementalPCA(n_components=3), PeftIncrementalPCA(n_components=3)
    for seed, rows in enumerate((12, 30, 7)):
        batch = data(rows, 6, seed=seed)
        ours.partial_fit(batch)
        theirs.partial_fit(batch)
        assert_same_fit(ours, theirs)


def test_input_is_copied_unless_copy_false():
    X = data(40, 5)
    before = X.clone()
    IncrementalPCA(n_components=2).partial_fit(X)
    assert torch.equal(X, before)
    IncrementalPCA(n_components=2, copy=False).partial_fit(X)
    assert not torch.equal(X, before)  # centered in place, as peft and scikit-learn do with copy=False
    assert X.mean(dim=0).abs().max().item() < 1e-5


def _sklearn_cases() -> dict:
    """case name -> ((n_samples, n_features, n_components, batch_size), stored tensors of the case)."""
    with safe_open(str(SKLEARN_REFERENCE), framework="pt") as handle:
        cases = json.loads(handle.metadata()["cases"])
        stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not iterable)
    return {
        case: (args, {k: v for k, v in stored.items() if k.startswith(case + "/")})
        for case, args in cases.items()
    }


@pytest.mark.parametrize(
    "case", ["truncated_batches", "all_components_default_batch", "full_rank_small_batches"]
)
def test_fit_equals_scikit_learn(case):
    (_, _, n_components, batch_size), stored = _sklearn_cases()[case]
    X = stored[f"{case}/X"]
    ours = IncrementalPCA(n_components=n_components, batch_size=batch_size).fit(X)
    for name in ATTRIBUTES:
        actual = getattr(ours, name).reshape(-1).double()
        diff = (actual - stored[f"{case}/{name}"]).abs().max().item()
        assert diff <= ATOL, f"{name}: max abs difference {diff:.3g} > {ATOL}"
    diff = (ours.transform(X) - stored[f"{case}/transform"]).abs().max().item()
    assert diff <= ATOL, f"transform: max abs difference {diff:.3g} > {ATOL}"
    if importlib.util.find_spec("sklearn") is not None:  # where it is installed, also against a live run
        from sklearn.decomposition import IncrementalPCA as SklearnIncrementalPCA

        live = SklearnIncrementalPCA(n_components=n_components, batch_size=batch_size).fit(X.numpy())
        for name in ATTRIBUTES:
            expected = torch.as_tensor(getattr(live, name), dtype=torch.float64).reshape(-1)
            assert (getattr(ours, name).reshape(-1).double() - expected).abs().max().item() <= ATOL, name


def test_all_components_equal_pca_of_the_whole_data():
    """Keeping every component, the incremental fit is exact: it equals the SVD of the whole centered data."""
    X = data(70, 6, dtype=torch.float64)
    ours = IncrementalPCA(n_components=6, batch_size=16).fit(X)
    centered = X - X.mean(dim=0)
    _, S, Vt = torch.linalg.svd(centered, full_matrices=False)
    signs = torch.sign(Vt[torch.arange(6), Vt.abs().argmax(dim=1)]).view(-1, 1)
    assert (ours.components_ - Vt * signs).abs().max().item() <= ATOL
    assert (ours.singular_values_ - S).abs().max().item() <= ATOL
    assert (ours.explained_variance_ - S**2 / 69).abs().max().item() <= ATOL
    assert (ours.mean_ - X.mean(dim=0)).abs().max().item() <= ATOL
    assert (ours.var_ - X.var(dim=0, unbiased=False)).abs().max().item() <= ATOL


def test_transform_after_one_batch():
    """peft's transform fails after a single float32 batch (float64 data times float32 components);
    peftkit projects in float64."""
    X = data(30, 5)
    ours = IncrementalPCA(n_components=2).partial_fit(X)
    with pytest.raises(RuntimeError, match="same dtype"):
        PeftIncrementalPCA(n_components=2).partial_fit(X).transform(X)
    projected = ours.transform(X)
    expected = (X.double() - ours.mean_) @ ours.components_.double().T
    assert projected.dtype == torch.float64
    assert (projected - expected).abs().max().item() <= ATOL


def test_lowrank_seed_is_reproducible_and_leaves_the_global_rng_alone():
    X = data(60, 8)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = IncrementalPCA(n_components=3, lowrank=True, lowrank_seed=5).fit(X).components_
    assert torch.equal(torch.get_rng_state(), state)
    second = IncrementalPCA(n_components=3, lowrank=True, lowrank_seed=5).fit(X).components_
    assert torch.equal(first, second)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="n_components must be specified"):
        IncrementalPCA(lowrank=True)
    with pytest.raises(ValueError, match="lowrank_q must be greater than or equal to n_components"):
        IncrementalPCA(n_components=4, lowrank=True, lowrank_q=2)
    with pytest.raises(ValueError, match="invalid for n_features=5"):
        IncrementalPCA(n_components=6).fit(data(40, 5))
    with pytest.raises(ValueError, match="batch number of samples 3"):
        IncrementalPCA(n_components=4).partial_fit(data(3, 5))
    model = IncrementalPCA(n_components=2).partial_fit(data(10, 5))
    with pytest.raises(ValueError, match="does not match the number of features"):
        model.partial_fit(data(10, 6))
    with pytest.raises(ValueError, match="2-D input"):
        IncrementalPCA(n_components=2).fit(torch.zeros(3, 4, 5))
