"""The peft oracle where peft itself may be broken: live when it works, recorded references when not.

peft 0.21.2 is the oracle of the comparison tests. transformers 5.24 renamed `past_key_values` to `cache`
and raised its `MIN_PEFT_VERSION` to 0.22.0, which does not exist: from then on peft's prefix tuning,
prompt-learning generation and transformers' adapter integration fail. transformers' own gate says
whether the installed peft is one it supports, and that is the switch used here (`PEFT_WORKS`):

- live (peft works): the comparison runs peft, and also checks it against the stored reference, so the
  stored files are shown to be peft's answer on every transformers where peft still runs;
- replay (peft does not work): the stored reference recorded from peft on a transformers it supports is
  the answer; a missing entry or one recorded from other weights or inputs fails the test (never skips);
- record (`PEFTKIT_RECORD_PEFT_REFERENCES=1`, peft must work): runs peft and stores its answer
  (tests/peft_reference/record.sh builds the pinned environment and records every entry).

A file also stores the kind of CPU it was recorded on (torch's `get_cpu_capability()`: AVX2, AVX512):
float32 results round differently on another kind (other BLAS kernels), and where an answer is
discontinuous (k-means labels, then everything built on them) the difference is not small. A live run
on another kind of CPU therefore answers with peft's live result and warns that it was not compared
with the stored one, instead of failing as a stale recording would (`recorded_on_this_cpu`).

An entry is keyed by the test's id and a counter, and holds a fingerprint (sha256) of everything the
answer depends on that the test passes in (model weights, inputs, keyword arguments), so a stored
answer is never used for a question it was not recorded for.
`PEFTKIT_PEFT_REFERENCES=replay` forces replay where peft works (to check the stored files alone).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from packaging.version import Version
from torch import nn

REFERENCE_DIR = Path(__file__).parent / "peft_reference"
RECORD_COMMAND = "tests/peft_reference/record.sh"
FLOAT_ATOL = 1e-5  # stored float answers vs a live peft run on another transformers (fp32 CPU)
FORMAT = "peftkit-peft-reference/1"
# the kind of CPU of every file recorded before the kind was stored (the AVX2 machines, to 2026-12-07)
UNSTATED_CPU = "AVX2"


def cpu_kind() -> str:
    """The kind of CPU this process computes on, as torch dispatches to it (e.g. AVX2, AVX512)."""
    return torch.backends.cpu.get_cpu_capability()


def recorded_on_this_cpu(metadata: dict[str, str]) -> bool:
    """Whether a recording whose metadata is `metadata` was made on this kind of CPU."""
    return metadata.get("cpu", UNSTATED_CPU) == cpu_kind()


def peft_is_supported_by_transformers() -> bool:
    """transformers' own verdict: is the installed peft at least its `MIN_PEFT_VERSION`?"""
    from transformers.integrations.peft import MIN_PEFT_VERSION

    return Version(importlib.metadata.version("peft")) >= Version(MIN_PEFT_VERSION)


def oracle_mode() -> str:
    """'record', 'live' or 'replay' for this process."""
    works = peft_is_supported_by_transformers()
    if os.environ.get("PEFTKIT_RECORD_PEFT_REFERENCES") == "1":
        if not works:
            raise RuntimeError(
                "PEFTKIT_RECORD_PEFT_REFERENCES=1 needs a transformers that supports the installed peft; "
                f"run {RECORD_COMMAND}, which builds such an environment"
            )
        return "record"
    if os.environ.get("PEFTKIT_PEFT_REFERENCES") == "replay" or not works:
        return "replay"
    return "live"


# ----- fingerprints: what an answer depends on -----
def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, nn.Module):
        _feed(digest, dict(value.state_dict()))
    elif torch.is_tensor(value):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=str):
            digest.update(repr(key).encode())
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(repr(value).encode())
    else:
        raise TypeError(f"cannot fingerprint {type(value).__name__}: pass tensors, modules or plain values")


def fingerprint(*depends_on: Any) -> str:
    digest = hashlib.sha256()
    for value in depends_on:
        _feed(digest, value)
    return digest.hexdigest()


# ----- answers as safetensors + a JSON tree -----
def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if torch.is_tensor(value):
        name = f"{key}/{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous()
        return {"tensor": name}
    if isinstance(value, dict):
        return {"dict": [[k, _encode(v, key, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"list": [_encode(v, key, tensors) for v in value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"cannot store {type(value).__name__} as a peft reference")


def _decode(tree: dict, tensors: dict[str, torch.Tensor]) -> Any:
    if "tensor" in tree:
        return tensors[tree["tensor"]]
    if "dict" in tree:
        return {k: _decode(v, tensors) for k, v in tree["dict"]}
    if "list" in tree:
        return [_decode(v, tensors) for v in tree["list"]]
    return tree["value"]


def _normalise(value: Any) -> Any:
    """The answer as it comes back from storage (tuples as lists, tensors detached on the CPU)."""
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def _differences(live: Any, stored: Any, where: str = "answer") -> list[str]:
    if torch.is_tensor(live) and torch.is_tensor(stored):
        if live.dtype != stored.dtype or live.shape != stored.shape:
            return [f"{where}: {live.dtype}{tuple(live.shape)} vs stored {stored.dtype}{tuple(stored.shape)}"]
        if live.is_floating_point():
            diff = (live - stored).abs().max().item() if live.numel() else 0.0
            return [f"{where}: max abs difference {diff} > {FLOAT_ATOL}"] if diff > FLOAT_ATOL else []
        return [] if torch.equal(live, stored) else [f"{where}: values differ"]
    if isinstance(live, dict) and isinstance(stored, dict):
        if list(live) != list(stored):
            return [f"{where}: keys {list(live)} vs stored {list(stored)}"]
        return [d for k in live for d in _differences(live[k], stored[k], f"{where}[{k!r}]")]
    if isinstance(live, list) and isinstance(stored, list) and len(live) == len(stored):
        return [d for i, (a, b) in enumerate(zip(live, stored)) for d in _differences(a, b, f"{where}[{i}]")]
    return [] if live == stored else [f"{where}: {live!r} vs stored {stored!r}"]


class ReferenceFile:
    """One test module's stored answers: tests/peft_reference/<module path>.safetensors."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        self.recorded_with: dict[str, str] = {}
        if path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("format") != FORMAT:
                    raise ValueError(
                        f"{path} is not a peft reference file ({FORMAT}); re-run {RECORD_COMMAND}"
                    )
                self.entries = json.loads(metadata["entries"])
                self.recorded_with = json.loads(metadata["recorded_with"])
                self.tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118

    def answer(self, key: str, print_: str) -> Any:
        entry = self.entries.get(key)
        if entry is None:
            raise AssertionError(
                f"no recorded peft answer for {key!r} in {self.path.name}: peft cannot run here, and "
                f"nothing was recorded for this test; record it with {RECORD_COMMAND}"
            )
        if entry["fingerprint"] != print_:
            raise AssertionError(
                f"the recorded peft answer for {key!r} was recorded from other weights or inputs than this "
                f"test now passes (fingerprint {entry['fingerprint'][:12]} vs {print_[:12]}); the test or its "
                f"models changed since it was recorded: re-record with {RECORD_COMMAND}"
            )
        return _decode(entry["tree"], self.tensors)

    def store(self, key: str, print_: str, answer: Any) -> None:
        for name in [n for n in self.tensors if n.startswith(f"{key}/")]:
            del self.tensors[name]
        tensors: dict[str, torch.Tensor] = {}
        tree = _encode(answer, key, tensors)
        self.tensors.update(tensors)
        self.entries[key] = {"fingerprint": print_, "tree": tree}
        self.recorded_with = {
            name: importlib.metadata.version(name) for name in ("peft", "transformers", "torch")
        } | {"cpu": cpu_kind()}
        self._write()

    def _write(self) -> None:
        from safetensors.torch import save_file

        metadata = {
            "format": FORMAT,
            "entries": json.dumps(self.entries, sort_keys=True),
            "recorded_with": json.dumps(self.recorded_with, sort_keys=True),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_suffix(".partial")
        save_file(dict(sorted(self.tensors.items())), str(staging), metadata=metadata)
        os.replace(staging, self.path)  # never a half-written reference file


class PeftOracle:
    """`oracle(compute, *depends_on)`: peft's answer for one question of one test.

    `compute()` runs peft and returns tensors, or lists/dicts of tensors and plain values;
    `depends_on` is everything that answer is a function of (models, inputs, keyword arguments).
    """

    def __init__(self, test_id: str, file: ReferenceFile, mode: str):
        self.test_id, self.file, self.mode = test_id, file, mode
        self.calls = 0

    def __call__(self, compute: Callable[[], Any], *depends_on: Any) -> Any:
        if not depends_on:
            raise TypeError("name what the peft answer depends on (models, inputs, keyword arguments)")
        key = f"{self.test_id}#{self.calls}"
        self.calls += 1
        print_ = fingerprint(*depends_on)
        if self.mode == "replay":
            return self.file.answer(key, print_)
        live = _normalise(compute())
        if self.mode == "record":
            self.file.store(key, print_, live)
            return live
        stored = self.file.answer(key, print_)
        problems = _differences(live, stored)
        if problems and not recorded_on_this_cpu(self.file.recorded_with):
            warnings.warn(
                f"peft's live answer for {key!r} differs from the one stored on another kind of CPU "
                f"({self.file.recorded_with.get('cpu', UNSTATED_CPU)}, this one: {cpu_kind()}): the live "
                f"answer is used; the stored one is checked only on its own kind of CPU ({problems[:2]})",
                stacklevel=2,
            )
            return live
        assert not problems, (
            f"peft's live answer for {key!r} differs from the stored reference "
            f"(recorded with {self.file.recorded_with}): {problems[:5]}; re-record with {RECORD_COMMAND}"
        )
        return live


_FILES: dict[Path, ReferenceFile] = {}


def oracle_for(test_file: Path, test_id: str, mode: str | None = None) -> PeftOracle:
    """The oracle of one test (`test_id`: its name with parameters) in the module at `test_file`."""
    mode = mode or oracle_mode()
    relative = test_file.resolve().relative_to(Path(__file__).parent.resolve())
    path = REFERENCE_DIR / (relative.with_suffix("").as_posix().replace("/", "__") + ".safetensors")
    if path not in _FILES:
        _FILES[path] = ReferenceFile(path)
        if mode == "record":  # a recording run rewrites every file it touches from scratch
            _FILES[path].entries, _FILES[path].tensors = {}, {}
    return PeftOracle(test_id, _FILES[path], mode)


def portable_init_(module: nn.Module, seed: int, *, only_trainable: bool = False) -> nn.Module:
    """Redraw the floating-point parameters from `seed` alone, so that the weights (and the recorded
    answers) do not depend on how a transformers version initialises a model from its config.
    Matrices: N(0, 1/fan_in); biases: N(0, 0.02^2); other vectors (norm scales): 1 + N(0, 0.02^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            if not param.is_floating_point() or (only_trainable and not param.requires_grad):
                continue
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim >= 2:
                value = noise * param.shape[-1] ** -0.5
            elif name.endswith("bias"):
                value = noise * 0.02
            else:
                value = 1 + noise * 0.02
            param.copy_(value.to(param.dtype))
    return module
