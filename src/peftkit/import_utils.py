"""Whether optional packages and backends are there: PEFT's `peft.import_utils` helpers.

Each answer is found without importing the package where its presence is enough (`find_spec`), and
cached: user code calls these in hot paths (e.g. per layer while dispatching). None of them raises.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from functools import lru_cache

import torch
from packaging import version


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _version_at_least(distribution: str, minimum: str) -> bool:
    try:
        return version.parse(importlib.metadata.version(distribution)) >= version.parse(minimum)
    except importlib.metadata.PackageNotFoundError:
        return False


@lru_cache
def is_bnb_available() -> bool:
    """bitsandbytes is installed (8-bit layers)."""
    return _installed("bitsandbytes")


@lru_cache
def is_bnb_4bit_available() -> bool:
    """bitsandbytes is installed and has 4-bit layers (`Linear4bit`)."""
    if not is_bnb_available():
        return False
    return hasattr(importlib.import_module("bitsandbytes").nn, "Linear4bit")


@lru_cache
def is_hqq_available() -> bool:
    return _installed("hqq")


@lru_cache
def is_torchao_available() -> bool:
    return _installed("torchao")


@lru_cache
def is_torchao_ge_v0_18_0() -> bool:
    return _version_at_least("torchao", "0.18.0")


@lru_cache
def is_aqlm_available() -> bool:
    return _installed("aqlm")


@lru_cache
def is_eetq_available() -> bool:
    return _installed("eetq")


@lru_cache
def is_gptqmodel_available() -> bool:
    return _installed("gptqmodel")


@lru_cache
def is_optimum_available() -> bool:
    return _installed("optimum")


@lru_cache
def is_diffusers_available() -> bool:
    return _installed("diffusers")


@lru_cache
def is_inc_available() -> bool:
    """Intel Neural Compressor (its PyTorch build)."""
    return _installed("neural_compressor")


@lru_cache
def is_te_available() -> bool:
    """NVIDIA Transformer Engine."""
    return _installed("transformer_engine")


@lru_cache
def is_te_pytorch_available() -> bool:
    return is_te_available() and _installed("transformer_engine.pytorch")


@lru_cache
def is_xpu_available(check_device: bool = False) -> bool:
    """torch can use an Intel XPU (and, with `check_device`, counts at least one device)."""
    xpu = getattr(torch, "xpu", None)
    try:
        if xpu is None or not xpu.is_available():
            return False
        return xpu.device_count() > 0 if check_device else True
    except RuntimeError:
        return False


@lru_cache
def is_torch_tpu_available(check_device: bool = True) -> bool:
    """torch_xla is installed (and, with `check_device`, it can open a device)."""
    if not _installed("torch_xla"):
        return False
    if not check_device:
        return True
    try:
        importlib.import_module("torch_xla.core.xla_model").xla_device()
        return True
    except RuntimeError:
        return False


# transformers' version, as the plain booleans PEFT exposes (read from package metadata: no import).
is_transformers_ge_v5 = _version_at_least("transformers", "5.0.0")
is_transformers_ge_v5_1_0 = _version_at_least("transformers", "5.1.0")
is_transformers_ge_v5_4_0 = _version_at_least("transformers", "5.4.0")
is_transformers_ge_v5_6_0 = _version_at_least("transformers", "5.6.0")
is_transformers_ge_v5_13_0 = _version_at_least("transformers", "5.13.0")
is_transformers_ge_v5_17_0 = _version_at_least("transformers", "5.17.0")
is_transformers_le_4_53 = not _version_at_least("transformers", "4.54.0")
