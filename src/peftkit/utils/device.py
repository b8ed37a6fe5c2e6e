"""Which accelerator this process can use, by the names torch gives them."""

from __future__ import annotations

import torch

# Checked in this order, the same preference as PEFT's `infer_device`: CUDA (and ROCm, which torch also
# calls "cuda"), Apple's MPS, then the vendor backends torch exposes as optional modules.
_OPTIONAL_BACKENDS = ("mlu", "xpu", "npu")


def infer_device() -> str:
    """The torch device type to put models on: "cuda", "mps", "mlu", "xpu", "npu", or "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    for name in _OPTIONAL_BACKENDS:
        backend = getattr(torch, name, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            return name
    return "cpu"
