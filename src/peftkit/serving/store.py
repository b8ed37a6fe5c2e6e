"""`AdapterStore`: hundreds of adapters known by name, a bounded number of them in memory.

Registering an adapter reads only its `adapter_config.json` (checked to parse) and the size of its
weights file; its weights are read from the folder (safetensors, or `.bin` with `weights_only=True`) the
first time a call names it. Resident adapters are kept in least-recently-used order; loading one that
would take the store past its byte bound (or its count bound) first unloads the least recently used
adapters that the call does not need. A call that by itself needs more than the bound is refused with an
error naming the sizes.

The store attaches itself to the model (`PeftModel.adapter_source`), so a registered adapter can be named
in `forward/generate(adapter_names=[...])` whether it is loaded or not:

    store = AdapterStore(peft_model, max_bytes=512 * 2**20)
    store.register_folder("adapters/")          # every sub-folder holding an adapter_config.json
    peft_model.generate(input_ids=ids, adapter_names=["alice", "bob", "__base__"])

Adapters the model held before the store was made are not the store's: they are never unloaded and
count against no bound. Thread safety: one lock guards loading and unloading; run the model itself from
one thread at a time (the serving engine does).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import PeftConfig
from ..peft_model import PeftModel
from ..tuners._mixed_batch import BASE_ADAPTER_NAME
from ..tuners.lora import mixed_batch
from ..tuners.tuners_utils import BaseTunerLayer
from ..utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from .fast_load import load_plain_lora, lora_layers_by_key


@dataclass
class StoredAdapter:
    """A registered adapter: where it lives and, once loaded, what it holds in memory."""

    name: str
    folder: str
    file_bytes: int  # the tensor bytes its weights file holds: the estimate before the first load
    memory_bytes: int = 0  # its tensors' bytes in memory, measured at its first load (0 before)
    loads: int = 0
    last_load_seconds: float = 0.0


def _tensor_bytes(path: str) -> int:
    """The bytes of tensor data in a weights file: a safetensors file's size less its 8-byte length
    prefix and JSON header (read without reading the tensors); a `.bin` file's size."""
    size = os.path.getsize(path)
    if not path.endswith(".safetensors") or size < 8:
        return size
    with open(path, "rb") as file:
        header = int.from_bytes(file.read(8), "little")
    return max(size - 8 - header, 0)


class AdapterStoreError(ValueError):
    """A store request that cannot be met (unknown adapter, a batch larger than the bound, a bad folder)."""


class AdapterStore:
    """Adapters registered by name, loaded on first use, unloaded least-recently-used past a bound.

    Args:
        model: the PeftModel serving the adapters (its adapters from before stay and are not managed).
        max_bytes: the most bytes of adapter tensors resident at once (None: no byte bound).
        max_adapters: the most adapters resident at once (None: no count bound).
        low_cpu_mem_usage: load by assigning the file's tensors (no initialisation of tensors that the
            file overwrites anyway): the fast way.
    """

    def __init__(
        self,
        model: PeftModel,
        max_bytes: int | None = None,
        max_adapters: int | None = None,
        low_cpu_mem_usage: bool = True,
    ) -> None:
        if not isinstance(model, PeftModel):
            raise TypeError(
                f"AdapterStore needs a PeftModel, got {type(model).__name__}; wrap the base model first, e.g. "
                "PeftModel.from_pretrained(base, first_adapter_folder)."
            )
        for bound, label in ((max_bytes, "max_bytes"), (max_adapters, "max_adapters")):
            if bound is not None and bound <= 0:
                raise ValueError(f"{label} must be positive (or None for no bound), got {bound}.")
        self.model = model
        self.max_bytes = max_bytes
        self.max_adapters = max_adapters
        self.low_cpu_mem_usage = low_cpu_mem_usage
        self._adapters: dict[str, StoredAdapter] = {}
        self._resident: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self.fast_loading = True  # plain LoRA adapters load straight into existing layers (fast_load.py)
        self._layers: dict[str, Any] | None = None  # LoRA layers by file key, for the fast path
        self._all_layers: list[BaseTunerLayer] | None = None
        model.adapter_source = self

    # ----- registering -----
    def register(self, name: str, folder: str | os.PathLike, adopt: bool = False) -> None:
        """Make adapter `name` loadable from `folder` (read now: only its config and its file size).

        With `adopt=True`, the model's adapter `name`, already loaded from `folder`, becomes the store's
        (resident, and unloaded like any other when room is needed)."""
        folder = os.fspath(folder)
        if name == BASE_ADAPTER_NAME:
            raise AdapterStoreError(f"'{BASE_ADAPTER_NAME}' is reserved for 'no adapter'; pick another name.")
        present = name in self.model.peft_config and name not in self._adapters
        if present and not adopt:
            raise AdapterStoreError(
                f"The model already holds an adapter named '{name}' that the store does not manage; "
                "register this folder under another name (or pass adopt=True if it was loaded from it)."
            )
        if adopt and not present:
            raise AdapterStoreError(f"adopt=True: the model holds no adapter '{name}' of its own to adopt.")
        weights = self._weights_file(folder)
        try:
            PeftConfig.from_pretrained(folder)
        except Exception as err:
            raise AdapterStoreError(
                f"Adapter '{name}': {folder} has no readable {CONFIG_NAME} ({err})."
            ) from err
        with self._lock:
            known = self._adapters.get(name)
            if known is not None and known.folder == folder:
                return  # registered already (resident or not): nothing changes
            if known is not None and name in self._resident:
                self._unload(name)  # the name now means another folder
            self._adapters[name] = StoredAdapter(name, folder, _tensor_bytes(weights))
            if adopt:
                self._adapters[name].memory_bytes = self._measure(name)
                self._resident[name] = None

    def register_folder(self, root: str | os.PathLike) -> list[str]:
        """Register every sub-folder of `root` that holds an adapter, named after the sub-folder."""
        root_path = Path(root)
        if not root_path.is_dir():
            raise AdapterStoreError(f"{root} is not a folder of adapters.")
        names = []
        for sub in sorted(p for p in root_path.iterdir() if (p / CONFIG_NAME).is_file()):
            self.register(sub.name, sub)
            names.append(sub.name)
        if not names:
            raise AdapterStoreError(f"{root} holds no adapter folder (a sub-folder with {CONFIG_NAME}).")
        return names

    @staticmethod
    def _weights_file(folder: str) -> str:
        for file_name in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME):
            path = os.path.join(folder, file_name)
            if os.path.isfile(path):
                return path
        raise AdapterStoreError(
            f"{folder} holds no adapter weights ({SAFETENSORS_WEIGHTS_NAME}); pass an adapter folder."
        )

    # ----- what is there -----
    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    def __len__(self) -> int:
        return len(self._adapters)

    @property
    def names(self) -> list[str]:
        """Every registered adapter, sorted."""
        return sorted(self._adapters)

    @property
    def resident(self) -> list[str]:
        """The loaded adapters, least recently used first."""
        return list(self._resident)

    @property
    def resident_bytes(self) -> int:
        return sum(self._adapters[name].memory_bytes for name in self._resident)

    def info(self, name: str) -> StoredAdapter:
        return self._adapters[name]

    # ----- loading on use -----
    def prepare(self, names: Iterable[str]) -> None:
        """Load every registered adapter of `names` that is not resident (unloading least recently used
        ones the call does not need, as the bounds ask) and mark them all as just used. Names the store
        does not know are left alone (the model then names them in its own error)."""
        wanted = [n for n in dict.fromkeys(names) if n in self._adapters]
        if not wanted:
            return
        with self._lock:
            missing = [n for n in wanted if n not in self._resident]
            if missing:
                self._make_room(wanted, missing)
                for name in missing:
                    self._load(name)
            for name in wanted:
                self._resident.move_to_end(name)

    def _estimate(self, name: str) -> int:
        stored = self._adapters[name]
        return stored.memory_bytes or stored.file_bytes

    def _make_room(self, wanted: list[str], missing: list[str]) -> None:
        needed_bytes = sum(self._estimate(n) for n in wanted)
        if self.max_bytes is not None and needed_bytes > self.max_bytes:
            raise AdapterStoreError(
                f"This call names {len(wanted)} adapters of about {needed_bytes / 2**20:.1f} MiB in all, more "
                f"than the store's bound of {self.max_bytes / 2**20:.1f} MiB; raise max_bytes or send fewer "
                "adapters per batch."
            )
        if self.max_adapters is not None and len(wanted) > self.max_adapters:
            raise AdapterStoreError(
                f"This call names {len(wanted)} adapters, more than the store's bound of {self.max_adapters} "
                "resident adapters; raise max_adapters or send fewer adapters per batch."
            )
        keep = set(wanted)
        incoming = sum(self._estimate(n) for n in missing)
        for victim in [n for n in self._resident if n not in keep]:  # least recently used first
            if self._fits(incoming, len(missing)):
                break
            self._unload(victim)

    def _fits(self, incoming_bytes: int, incoming_count: int) -> bool:
        if self.max_bytes is not None and self.resident_bytes + incoming_bytes > self.max_bytes:
            return False
        return self.max_adapters is None or len(self._resident) + incoming_count <= self.max_adapters

    def _load(self, name: str) -> None:
        stored = self._adapters[name]
        start = time.perf_counter()
        try:
            # normal tensors even when a call under torch.inference_mode() triggers the load: the adapter
            # outlives that call (and may be trained or have its factors checked for changes later)
            with torch.inference_mode(False):
                if not self._fast_load(stored):
                    self.model.load_adapter(
                        stored.folder, adapter_name=name, low_cpu_mem_usage=self.low_cpu_mem_usage
                    )
                    self._layers = None  # the general path may have adapted other modules
        except Exception as err:
            raise AdapterStoreError(
                f"Adapter '{name}' could not be loaded from {stored.folder}: {err}"
            ) from err
        stored.last_load_seconds = time.perf_counter() - start
        stored.loads += 1
        stored.memory_bytes = self._measure(name)
        self._resident[name] = None

    def _fast_load(self, stored: StoredAdapter) -> bool:
        """Plain LoRA into the model's existing LoRA layers, without the general machinery (fast_load.py)."""
        if not self.fast_loading:
            return False
        if self._layers is None:
            self._layers = lora_layers_by_key(self.model)
        config = PeftConfig.from_pretrained(stored.folder)
        return load_plain_lora(self.model, stored.folder, stored.name, config, self._layers)

    def _tuner_layers(self) -> list[BaseTunerLayer]:
        if self._all_layers is None or self._layers is None:
            self._all_layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        return self._all_layers

    def _measure(self, name: str) -> int:
        total = 0
        for module in self._tuner_layers():
            total += sum(t.numel() * t.element_size() for t in module._adapter_tensors(name))
        return total

    def unload(self, name: str) -> None:
        """Take adapter `name` out of memory (it stays registered and loads again on next use)."""
        with self._lock:
            if name in self._resident:
                self._unload(name)

    def _unload(self, name: str) -> None:
        with warnings.catch_warnings():  # "adapter X was active and is deleted": expected here
            warnings.simplefilter("ignore")
            self.model.delete_adapter(name)
        for module in self._tuner_layers():
            if hasattr(module, "mixed_factor_bank"):
                mixed_batch.drop_cached_factors(module, name)  # a stacked copy of it would stay otherwise
        del self._resident[name]

    def describe(self) -> dict[str, Any]:
        """Counts for logs and the server's status: registered, resident, bytes and bounds."""
        return {
            "registered": len(self._adapters),
            "resident": len(self._resident),
            "resident_bytes": self.resident_bytes,
            "max_bytes": self.max_bytes,
            "max_adapters": self.max_adapters,
        }
