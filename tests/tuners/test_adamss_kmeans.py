"""AdaMSS's k-means (peftkit.tuners.adamss.kmeans) gives scikit-learn's labels, label for label: on
singular vectors as AdaMSS clusters them and on degenerate sets (repeated points, empty clusters).

The labels were recorded by tests/tuners/record_sklearn_kmeans.py (scikit-learn is not a test
dependency); where scikit-learn is installed they are also computed live."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from peftkit.tuners.adamss.kmeans import kmeans_labels

REFERENCE = Path(__file__).with_name("sklearn_kmeans_reference.safetensors")
SEED, MAX_ITER = 123456789, 10


def _cases() -> dict[str, tuple[np.ndarray, int, np.ndarray]]:
    with safe_open(str(REFERENCE), framework="pt") as handle:
        n_clusters = json.loads(handle.metadata()["n_clusters"])
        return {
            name: (handle.get_tensor(f"{name}/data").numpy(), k, handle.get_tensor(f"{name}/labels").numpy())
            for name, k in n_clusters.items()
        }


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_labels_equal_scikit_learn(name):
    data, n_clusters, expected = CASES[name]
    labels = kmeans_labels(data, n_clusters, MAX_ITER, SEED)
    assert labels.shape == expected.shape
    assert np.array_equal(labels, expected), f"{int((labels != expected).sum())} labels differ"
    if importlib.util.find_spec("sklearn") is not None:  # where it is installed, also against a live run
        from sklearn.cluster import KMeans

        live = KMeans(n_clusters=n_clusters, init="random", n_init=1, max_iter=MAX_ITER, random_state=SEED)
        assert np.array_equal(labels, live.fit_predict(data))


def test_the_recorded_cases_cover_relocated_and_repeated_points():
    """At least one recorded set has fewer distinct points than clusters, and the singular-vector sets have
    more rows than scikit-learn's 256-row chunk."""
    assert any(len(np.unique(data, axis=0)) < k for data, k, _ in CASES.values())
    assert any(data.shape[0] > 256 for data, _, _ in CASES.values())


def test_too_many_clusters_is_a_clear_error():
    with pytest.raises(ValueError, match="n_clusters must be between 1 and the number of rows"):
        kmeans_labels(torch.randn(3, 2).numpy(), 4, MAX_ITER, SEED)
