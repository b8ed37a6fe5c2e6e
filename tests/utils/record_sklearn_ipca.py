"""Record scikit-learn's IncrementalPCA answers for tests/utils/test_incremental_pca.py.

scikit-learn is not a test dependency; run this where it is installed (any recent release):
`python tests/utils/record_sklearn_ipca.py`. The inputs are stored beside the answers, so the
comparison does not depend on a random number generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import sklearn
import torch
from safetensors.torch import save_file
from sklearn.decomposition import IncrementalPCA

REFERENCE = Path(__file__).with_name("sklearn_ipca_reference.safetensors")
ATTRIBUTES = (
    "components_",
    "singular_values_",
    "explained_variance_",
    "explained_variance_ratio_",
    "noise_variance_",
    "mean_",
    "var_",
)
# name -> (n_samples, n_features, n_components, batch_size)
CASES = {
    "truncated_batches": (97, 7, 3, 20),
    "all_components_default_batch": (60, 5, None, None),
    "full_rank_small_batches": (50, 6, 6, 15),
}


def case_data(index: int, n_samples: int, n_features: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + index)
    mixing = torch.randn(n_features, n_features, generator=gen, dtype=torch.float64)
    offset = torch.randn(n_features, generator=gen, dtype=torch.float64)
    return torch.randn(n_samples, n_features, generator=gen, dtype=torch.float64) @ mixing + offset


def main() -> None:
    tensors = {}
    for index, (name, (n, f, k, batch)) in enumerate(CASES.items()):
        X = case_data(index, n, f)
        model = IncrementalPCA(n_components=k, batch_size=batch).fit(X.numpy())
        tensors[f"{name}/X"] = X
        tensors[f"{name}/transform"] = torch.as_tensor(model.transform(X.numpy()))
        for attr in ATTRIBUTES:
            tensors[f"{name}/{attr}"] = torch.as_tensor(getattr(model, attr), dtype=torch.float64).reshape(-1)
    metadata = {"sklearn": sklearn.__version__, "cases": json.dumps(CASES)}
    save_file(tensors, str(REFERENCE), metadata=metadata)


if __name__ == "__main__":
    main()
