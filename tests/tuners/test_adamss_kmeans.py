"""AdaMSS's k-means (peftkit.tuners.adamss.kmeans) gives scikit-learn's labels, label for label: on
singular vectors as AdaMSS clusters them and on degenerate sets (repeated points, empty clusters).

The labels were recorded by tests/tuners/record_sklearn_kmeans.py, and scikit-learn (a test dependency)
computes them live. Its float32 distances round differently on another kind of CPU (AVX2, AVX-512), which
can move a label of a near tie, so the recorded labels are checked on the kind of CPU that recorded them
and the live ones everywhere."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from tests.oracle import UNSTATED_CPU, cpu_kind, recorded_on_this_cpu

from peftkit.tuners.adamss.kmeans import kmeans_labels

REFERENCE = Path(__file__).with_name("sklearn_kmeans_reference.safetensors")
SEED, MAX_ITER = 123456789, 10


def _cases() -> tuple[dict[str, tuple[np.ndarray, int, np.ndarray]], dict[str, str]]:
    with safe_open(str(REFERENCE), framework="pt") as handle:
        metadata = handle.metadata()
        n_clusters = json.loads(metadata["n_clusters"])
        cases = {
            name: (handle.get_tensor(f"{name}/data").numpy(), k, handle.get_tensor(f"{name}/labels").numpy())
            for name, k in n_clusters.items()
        }
    return cases, metadata


CASES, RECORDED = _cases()


def _differing(labels: np.ndarray, expected: np.ndarray) -> str:
    return f"{int((labels != expected).sum())} of {labels.size} labels differ"


@pytest.mark.parametrize("name", list(CASES))
def test_labels_equal_scikit_learn(name):
    data, n_clusters, expected = CASES[name]
    labels = kmeans_labels(data, n_clusters, MAX_ITER, SEED)
    assert labels.shape == expected.shape
    if recorded_on_this_cpu(RECORDED):
        assert np.array_equal(labels, expected), _differing(labels, expected) + " from the recorded ones"
    if importlib.util.find_spec("sklearn") is None:
        assert recorded_on_this_cpu(RECORDED), (
            f"the recorded labels come from another kind of CPU ({RECORDED.get('cpu', UNSTATED_CPU)}, this "
            f"one: {cpu_kind()}), whose float32 rounding differs: install scikit-learn (the test extra) "
            "to compare with a live run"
        )
        return
    from sklearn.cluster import KMeans

    live = KMeans(n_clusters=n_clusters, init="random", n_init=1, max_iter=MAX_ITER, random_state=SEED)
    live_labels = live.fit_predict(data)
    assert np.array_equal(labels, live_labels), _differing(labels, live_labels) + " from scikit-learn's"


def test_the_recorded_cases_cover_relocated_and_repeated_points():
    """At least one recorded set has fewer distinct points than clusters, and the singular-vector sets have
    more rows than scikit-learn's 256-row chunk."""
    assert any(len(np.unique(data, axis=0)) < k for data, k, _ in CASES.values())
    assert any(data.shape[0] > 256 for data, _, _ in CASES.values())


def test_too_many_clusters_is_a_clear_error():
    with pytest.raises(ValueError, match="n_clusters must be between 1 and the number of rows"):
        kmeans_labels(torch.randn(3, 2).numpy(), 4, MAX_ITER, SEED)
