"""Record scikit-learn's KMeans labels for tests/tuners/test_adamss_kmeans.py.

Run `python tests/tuners/record_sklearn_kmeans.py` (scikit-learn comes with the test extra). The inputs
are stored beside the labels, and the kind of CPU (float32 rounding differs between kinds).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import sklearn
import torch
from safetensors.torch import save_file
from sklearn.cluster import KMeans

REFERENCE = Path(__file__).with_name("sklearn_kmeans_reference.safetensors")
SEED = 123456789  # the random_state peft's AdaMSS passes
MAX_ITER = 10


def cases() -> dict[str, tuple[np.ndarray, int]]:
    """name -> (data, n_clusters): singular vectors of random weights as AdaMSS clusters them, and small
    degenerate sets (repeated points, empty clusters to relocate, more clusters than distinct points)."""
    out: dict[str, tuple[np.ndarray, int]] = {}
    for index, (rows, cols, k) in enumerate(
        [(16, 16, 5), (32, 32, 5), (64, 33, 10), (300, 65, 5), (128, 100, 3)]
    ):
        weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(index)) / cols**0.5
        torch.manual_seed(0)
        left, _, _ = torch.svd_lowrank(weight, q=min(rows, cols), niter=2)
        out[f"singular_vectors_{rows}x{cols}_k{k}"] = (left.numpy().astype(np.float32), k)
    rng = np.random.RandomState(0)
    for index in range(12):
        rows = rng.randint(3, 40)
        distinct = rng.randint(1, rows + 1)
        points = rng.randn(distinct, rng.randint(1, 6)).astype(np.float32)[rng.randint(0, distinct, rows)]
        out[f"repeated_points_{index}"] = (points, int(rng.randint(1, rows + 1)))
    return out


def main() -> None:
    tensors, meta = {}, {}
    for name, (data, n_clusters) in cases().items():
        labels = KMeans(
            n_clusters=n_clusters, init="random", n_init=1, max_iter=MAX_ITER, random_state=SEED
        ).fit_predict(data)
        tensors[f"{name}/data"] = torch.from_numpy(data)
        tensors[f"{name}/labels"] = torch.from_numpy(labels.astype(np.int64))
        meta[name] = n_clusters
    save_file(
        tensors,
        str(REFERENCE),
        metadata={
            "sklearn": sklearn.__version__,
            "n_clusters": json.dumps(meta),
            "cpu": torch.backends.cpu.get_cpu_capability(),
        },
    )


if __name__ == "__main__":
    main()
