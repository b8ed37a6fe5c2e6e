"""K-means as AdaMSS clusters with it: scikit-learn's `KMeans(init="random", n_init=1, max_iter=...,
random_state=...)`, reproduced without scikit-learn.

AdaMSS does not save which output rows form which subspace: every load clusters the base weight's
singular vectors again, so the clustering must be the one PEFT gets from scikit-learn, label for label.
This module follows scikit-learn's Lloyd iteration step by step in float32 (numpy's legacy RandomState
for the initial centers, then per iteration: squared distances `|c|^2 - 2 x.c` from one matrix product,
nearest center by first minimum, centers as in-order float32 sums scaled by `1/count`, empty clusters moved
to the points farthest from their centers, and the stop rules: identical labels, or a total squared center
shift within `1e-4` times the mean feature variance). Equal labels are checked against scikit-learn in the
tests (recorded where scikit-learn is not installed).
"""

from __future__ import annotations

import numpy as np

__all__ = ["kmeans_labels"]

_TOLERANCE = 1e-4  # scikit-learn's default `tol`, relative to the data's mean feature variance


def _nearest(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest center of each point (the first one on ties), as scikit-learn computes it."""
    center_norms = np.einsum("ij,ij->i", centers, centers)
    distances = center_norms[None, :] - np.float32(2.0) * (points @ centers.T)
    return np.argmin(distances, axis=1).astype(np.int32)


def _new_centers(
    points: np.ndarray, labels: np.ndarray, old_centers: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(centers, shift per center) after one M step; empty clusters take the points farthest from theirs."""
    n_clusters, n_features = old_centers.shape
    sums = np.zeros((n_clusters, n_features), dtype=np.float32)
    np.add.at(sums, labels, points)  # in point order, in float32, as scikit-learn accumulates
    counts = np.bincount(labels, minlength=n_clusters).astype(np.float32)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        distances = ((points - old_centers[labels]) ** 2).sum(axis=1)
        farthest = np.argpartition(distances, -empty.size)[: -empty.size - 1 : -1]
        if distances.max() != 0:  # else: more clusters than distinct points, nothing to move
            for cluster, point in zip(empty, farthest):
                sums[labels[point]] -= points[point]
                sums[cluster] = points[point]
                counts[labels[point]] -= 1
                counts[cluster] = 1
    # scaled in place, in order: an empty cluster copies the largest one's row as it stands at that point
    largest = int(np.argmax(counts))
    centers = sums
    for j in range(n_clusters):
        if counts[j] > 0:
            centers[j] *= np.float32(1.0 / float(counts[j]))
        else:
            centers[j] = centers[largest]
    shift = np.sqrt(((centers - old_centers) ** 2).sum(axis=1, dtype=np.float32))
    return centers, shift


def kmeans_labels(data: np.ndarray, n_clusters: int, max_iter: int, seed: int) -> np.ndarray:
    """Cluster labels (int32, one per row of `data`) of scikit-learn's KMeans with `init="random"`,
    `n_init=1`, `max_iter` and `random_state=seed`, on `data` as float32.

    Requires `n_clusters <= len(data)`.
    """
    points = np.array(data, dtype=np.float32, order="C")
    n_samples = points.shape[0]
    if not 1 <= n_clusters <= n_samples:
        raise ValueError(
            f"n_clusters must be between 1 and the number of rows ({n_samples}), got {n_clusters}."
        )
    tolerance = np.mean(np.var(points, axis=0)) * _TOLERANCE
    points -= points.mean(axis=0)  # scikit-learn centers the data first (more accurate distances)
    weights = np.ones(n_samples, dtype=np.float32)
    rng = np.random.RandomState(seed)
    seeds = rng.choice(n_samples, size=n_clusters, replace=False, p=weights / weights.sum())
    centers = points[seeds]

    labels = np.full(n_samples, -1, dtype=np.int32)
    converged_exactly = False
    for _ in range(max_iter):
        previous = labels
        labels = _nearest(points, centers)
        centers, shift = _new_centers(points, labels, centers)
        if np.array_equal(labels, previous):
            converged_exactly = True
            break
        if (shift**2).sum() <= tolerance:
            break
    if not converged_exactly:  # the labels of the final centers
        labels = _nearest(points, centers)
    return labels
