"""Incremental PCA in torch: principal components of data seen one batch at a time (Ross et al., 2008).

After each batch the model holds the top `k` right singular vectors of the centered data seen so far.
A new batch `X_b` (n_b rows) is folded in by the SVD of the stacked matrix

    [ diag(S) V^T                                  ]   the old data, summarised by its components
    [ X_b - mean(X_b)                              ]   the new batch, centered on its own mean
    [ sqrt(n_seen * n_b / n_total) (mu_old - mu_b) ]   the shift between the two means

whose top `k` right singular vectors are the components of all the data. Means and variances are
updated exactly (in float64) with the pairwise formulas of Chan, Golub and LeVeque. The SVD is exact
(`torch.linalg.svd`) or randomised (`torch.svd_lowrank`, `lowrank=True`, seeded with `lowrank_seed`).
Signs are fixed so that each component's largest-magnitude entry is positive, as scikit-learn does.

The same numbers as PEFT's `peft.utils.incremental_pca.IncrementalPCA` and scikit-learn's
`IncrementalPCA` (up to float rounding), on any device torch supports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["IncrementalPCA"]

_FLOAT_DTYPES = (torch.float32, torch.float64)


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run with torch's RNG seeded by `seed` (on `device` too), restoring the global RNG state after;
    does nothing when `seed` is None."""
    if seed is None:
        yield
        return
    devices = [] if device.type == "cpu" else [device]
    device_type = "cuda" if device.type == "cpu" else device.type
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        torch.manual_seed(seed)
        yield


class IncrementalPCA:
    """Principal component analysis fitted batch by batch (`partial_fit`) or over minibatches (`fit`).

    Args:
        n_components: components to keep; None keeps min(n_samples, n_features) of the first batch.
        copy: False lets `fit`/`partial_fit` center the input tensor in place.
        batch_size: rows per batch in `fit`; None uses 5 * n_features.
        svd_driver: the cuSOLVER driver of `torch.linalg.svd` (CUDA inputs only): None, "gesvd",
            "gesvdj" or "gesvda".
        lowrank: use the randomised `torch.svd_lowrank` (faster for few components of wide data).
        lowrank_q: the randomised SVD's sketch size (default 2 * n_components).
        lowrank_niter: its subspace iterations.
        lowrank_seed: seed of its random sketch (None: torch's global RNG).

    Fitted attributes (as scikit-learn names them): `components_` (k, n_features), `singular_values_`,
    `explained_variance_`, `explained_variance_ratio_`, `noise_variance_`, `mean_`, `var_`,
    `n_samples_seen_`, `n_features_`.
    """

    def __init__(
        self,
        n_components: int | None = None,
        copy: bool | None = True,
        batch_size: int | None = None,
        svd_driver: str | None = None,
        lowrank: bool = False,
        lowrank_q: int | None = None,
        lowrank_niter: int = 4,
        lowrank_seed: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.copy = copy
        self.batch_size = batch_size
        self.svd_driver = svd_driver
        self.lowrank = lowrank
        self.lowrank_q = lowrank_q
        self.lowrank_niter = lowrank_niter
        self.lowrank_seed = lowrank_seed
        self.n_features_: int | None = None
        if lowrank:
            self._check_lowrank_settings()

    def _check_lowrank_settings(self) -> None:
        if self.lowrank_q is None:
            if self.n_components is None:
                raise ValueError(
                    "n_components must be specified when using lowrank mode with lowrank_q=None: the sketch size "
                    "defaults to 2 * n_components. Pass n_components or lowrank_q."
                )
            self.lowrank_q = 2 * self.n_components
        elif self.n_components is not None and self.lowrank_q < self.n_components:
            raise ValueError(
                f"lowrank_q must be greater than or equal to n_components, got lowrank_q={self.lowrank_q} and "
                f"n_components={self.n_components}."
            )

    # ----- input -----
    def _validate_data(self, X) -> torch.Tensor:
        """`X` as a float32/float64 tensor (a copy unless `copy=False`), checked against n_components."""
        if not isinstance(X, torch.Tensor):
            X = torch.tensor(X, dtype=torch.float32)
        elif self.copy:
            X = X.clone()
        if X.dim() != 2:
            raise ValueError(f"Expected a 2-D input (n_samples, n_features), got shape {tuple(X.shape)}.")
        n_samples, n_features = X.shape
        if self.n_components is not None and self.n_components > n_features:
            raise ValueError(
                f"n_components={self.n_components} invalid for n_features={n_features}, "
                "need more rows than columns for IncrementalPCA processing."
            )
        if self.n_components is not None and self.n_components > n_samples:
            raise ValueError(
                f"n_components={self.n_components} must be less or equal to the batch number of samples {n_samples}"
            )
        return X if X.dtype in _FLOAT_DTYPES else X.to(torch.float32)

    # ----- statistics -----
    @staticmethod
    def _incremental_mean_and_var(
        X: torch.Tensor,
        last_mean: torch.Tensor | None,
        last_variance: torch.Tensor | None,
        last_sample_count: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and (biased) variance per feature of all rows seen, after adding the rows of `X` (float64),
        and the new row count."""
        if X.shape[0] == 0:
            return last_mean, last_variance, last_sample_count
        if last_sample_count > 0 and (last_mean is None or last_variance is None):
            raise ValueError("last_mean and last_variance must be given when last_sample_count > 0.")
        batch_count = torch.tensor([X.shape[0]], device=X.device)
        total_count = last_sample_count + batch_count
        last_sum = (
            torch.zeros(X.shape[1], dtype=torch.float64, device=X.device)
            if last_mean is None
            else last_mean * last_sample_count
        )
        batch_sum = X.sum(dim=0, dtype=torch.float64)
        mean = (last_sum + batch_sum) / total_count

        # the batch's sum of squared deviations, with the rounding of its mean corrected for
        deviations = X - batch_sum / batch_count
        correction = deviations.sum(dim=0, dtype=torch.float64).square()
        batch_ssd = deviations.square().sum(dim=0, dtype=torch.float64) - correction / batch_count
        if last_variance is None:
            return mean, batch_ssd / total_count, total_count
        last_ssd = last_variance * last_sample_count
        ratio = last_sample_count.double() / batch_count
        between = ratio / total_count * (last_sum / ratio - batch_sum).square()
        return mean, (last_ssd + batch_ssd + between) / total_count, total_count

    # ----- decomposition -----
    def _svd(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U, S, V^T) of `X`, exact or randomised."""
        if not self.lowrank:
            return torch.linalg.svd(X, full_matrices=False, driver=self.svd_driver)
        with _seeded(self.lowrank_seed, X.device):
            U, S, V = torch.svd_lowrank(X, q=self.lowrank_q, niter=self.lowrank_niter)
        return U, S, V.mH

    @staticmethod
    def _svd_flip(
        u: torch.Tensor, v: torch.Tensor, u_based_decision: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Signs fixed so that the largest-magnitude entry of each column of `u` (or each row of `v`) is
        positive: the decomposition is then the same on every run (`u` and `v` changed in place)."""
        if u_based_decision:
            rows = torch.argmax(u.abs(), dim=0)
            signs = torch.sign(u[rows, torch.arange(u.shape[1], device=u.device)])
        else:
            cols = torch.argmax(v.abs(), dim=1)
            signs = torch.sign(v[torch.arange(v.shape[0], device=v.device), cols])
        u *= signs[: u.shape[1]].view(1, -1)
        v *= signs.view(-1, 1)
        return u, v

    # ----- fitting -----
    def fit(self, X, check_input: bool = True) -> IncrementalPCA:
        """Fit on `X` (n_samples, n_features) in batches of `batch_size` rows."""
        if check_input:
            X = self._validate_data(X)
        n_samples, n_features = X.shape
        if self.batch_size is None:
            self.batch_size = 5 * n_features
        for batch in self.gen_batches(n_samples, self.batch_size, min_batch_size=self.n_components or 0):
            self.partial_fit(X[batch], check_input=False)
        return self

    def partial_fit(self, X, check_input: bool = True) -> IncrementalPCA:
        """Fold the rows of `X` (n_samples, n_features) into the fitted components."""
        first_pass = not hasattr(self, "components_")
        if check_input:
            X = self._validate_data(X)
        n_samples, n_features = X.shape
        if first_pass:
            self.mean_, self.var_ = None, None
            self.n_samples_seen_ = torch.tensor([0], device=X.device)
            self.n_features_ = n_features
            if not self.n_components:
                self.n_components = min(n_samples, n_features)
        if n_features != self.n_features_:
            raise ValueError(
                f"Number of features of the new batch ({n_features}) does not match the number of features of the "
                f"first batch ({self.n_features_})."
            )
        mean, var, total = self._incremental_mean_and_var(X, self.mean_, self.var_, self.n_samples_seen_)

        if first_pass:
            X -= mean
        else:
            batch_mean = X.mean(dim=0)
            X -= batch_mean
            shift = torch.sqrt(self.n_samples_seen_.double() / total * n_samples) * (self.mean_ - batch_mean)
            X = torch.vstack((self.singular_values_.view(-1, 1) * self.components_, X, shift))

        U, S, Vt = self._svd(X)
        U, Vt = self._svd_flip(U, Vt, u_based_decision=False)
        explained_variance = S**2 / (total - 1)
        explained_variance_ratio = S**2 / torch.sum(var * total)

        k = self.n_components
        self.n_samples_seen_ = total
        self.components_ = Vt[:k]
        self.singular_values_ = S[:k]
        self.mean_ = mean
        self.var_ = var
        self.explained_variance_ = explained_variance[:k]
        self.explained_variance_ratio_ = explained_variance_ratio[:k]
        if k not in (n_samples, n_features):
            self.noise_variance_ = explained_variance[k:].mean()
        else:
            self.noise_variance_ = torch.tensor(0.0, device=X.device)
        return self

    def transform(self, X) -> torch.Tensor:
        """`X` (n_samples, n_features) projected on the components: (n_samples, n_components), in float64."""
        centered = (X - self.mean_).double()
        return centered @ self.components_.T.double()

    @staticmethod
    def gen_batches(n: int, batch_size: int, min_batch_size: int = 0) -> Iterator[slice]:
        """Slices of `batch_size` rows covering range(n); a full batch that would leave fewer than
        `min_batch_size` rows after it is merged into the last slice."""
        start = 0
        for _ in range(n // batch_size):
            end = start + batch_size
            if end + min_batch_size > n:
                continue
            yield slice(start, end)
            start = end
        if start < n:
            yield slice(start, n)
