"""A fuzz test of loading (issue 20): hundreds of corrupted adapter folders, made from one saved adapter
by seeded mutations of the safetensors file (its length field, header bytes, header fields, truncation,
appended bytes) and of adapter_config.json (bytes, JSON types and values, missing and extra keys).

Every load either gives the right adapter (the saved tensors, bit for bit) or raises a peftkit error
(`PeftError`) whose message names the folder and the file; no other exception type. A hang would be
stopped by faulthandler (the test then fails); a tensor larger than the largest legitimate one is never
created (an outer torch-function mode measures every tensor created during the loads).
"""

from __future__ import annotations

import faulthandler
import json
import random
import struct
import warnings

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.overrides import TorchFunctionMode

import peftkit
from peftkit.utils.warnings import PeftError

SEED = 20261203
CASES_PER_KIND = 50
WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
DTYPES = ["F16", "BF16", "F32", "F64", "I8", "I32", "I64", "U8", "BOOL", "F8_E4M3", "XYZ", 7, None]
JSON_VALUES = [
    None, True, False, 0, -1, 1, 3, 7.5, 10**6, 10**9, 10**30, 1e308, -1e308, "", "x", "LORA", "none",
    [], [1], ["x"], [["first"]], {}, {"a": 1}, {"first": "x"}, [None], "all-linear", ".*",
]  # fmt: skip


class _LargestTensor(TorchFunctionMode):
    """Records the largest tensor any torch function returns (factory calls included)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if isinstance(result, torch.Tensor):
            self.largest = max(self.largest, result.numel())
        return result


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(16, 16)
        self.second = nn.Linear(16, 8)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def _base() -> nn.Module:
    torch.manual_seed(0)
    return MLP()


# ----- mutations: (rng, weights bytes, config text) -> (weights bytes, config text) -----
def _split(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _join(header, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


def truncate(rng, data, config):
    return data[: rng.randrange(len(data))], config


def append_bytes(rng, data, config):
    return data + rng.randbytes(rng.randrange(1, 64)), config


def length_field(rng, data, config):
    choice = rng.choice(["flip", "random", "huge", "off by some"])
    (length,) = struct.unpack("<Q", data[:8])
    if choice == "flip":
        field = bytearray(data[:8])
        field[rng.randrange(8)] ^= 1 << rng.randrange(8)
        return bytes(field) + data[8:], config
    value = {
        "random": rng.getrandbits(64),
        "huge": 2**64 - 1 - rng.randrange(1000),
        "off by some": max(0, length + rng.randrange(-20, 21)),
    }[choice]
    return struct.pack("<Q", value) + data[8:], config


def header_bytes(rng, data, config):
    (length,) = struct.unpack("<Q", data[:8])
    mutated = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        mutated[8 + rng.randrange(length)] = rng.randrange(256)
    return bytes(mutated), config


def header_fields(rng, data, config):
    header, payload = _split(data)
    key = rng.choice([k for k in header if k != "__metadata__"])
    entry = header[key]
    edit = rng.choice(
        ["dtype", "shape", "offsets", "drop key", "rename key", "entry type", "header type", "meta"]
    )
    if edit == "dtype":
        entry["dtype"] = rng.choice(DTYPES)
    elif edit == "shape":
        shape = entry["shape"]
        entry["shape"] = rng.choice(
            [
                shape[::-1],
                [shape[0] * 2, shape[1] // 2],
                [-shape[0], shape[1]],
                [2**40, 2**40],
                [],
                [*shape, 1],
                ["a"],
            ]
        )
    elif edit == "offsets":
        start, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice(
            [[end, start], [start, end + 4], [start, 2**62], [0, 0], "0-4", [start]]
        )
    elif edit == "drop key":
        del header[key]
    elif edit == "rename key":
        header[key.replace("lora_A", "lora_X") if "lora_A" in key else key + "x"] = header.pop(key)
    elif edit == "entry type":
        header[key] = rng.choice([None, 1, "x", [1, 2]])
    elif edit == "header type":
        return _join(rng.choice([[], 1, "x", None]), payload), config
    else:
        header["__metadata__"] = rng.choice([{"format": "np"}, {"format": 1}, [], {"peftkit_version": None}])
    return _join(header, payload), config


def config_bytes(rng, data, config):
    raw = bytearray(config.encode())
    for _ in range(rng.randrange(1, 4)):
        action, at = rng.choice(["set", "insert", "delete"]), rng.randrange(len(raw))
        if action == "set":
            raw[at] = rng.randrange(256)
        elif action == "insert":
            raw.insert(at, rng.randrange(256))
        else:
            del raw[at]
    return data, raw.decode("utf-8", errors="surrogateescape")


def config_values(rng, data, config):
    values = json.loads(config)
    key = rng.choice(sorted(values))
    edit = rng.choice(["value", "value", "drop", "extra", "whole"])
    if edit == "value":
        values[key] = rng.choice(JSON_VALUES)
    elif edit == "drop":
        del values[key]
    elif edit == "extra":
        values[f"unknown_{rng.randrange(100)}"] = rng.choice(JSON_VALUES)
    else:
        return data, rng.choice(["[]", "1", '"LORA"', "null", "[" * 100_000, "", "{" + '"r": 1,' * 3 + "}"])
    return data, json.dumps(values)


MUTATIONS = [truncate, append_bytes, length_field, header_bytes, header_fields, config_bytes, config_values]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("original")
    model = peftkit.get_peft_model(_base(), peftkit.LoraConfig(r=4, target_modules=["first", "second"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_()
    model.save_pretrained(folder)
    return (folder / WEIGHTS).read_bytes(), (folder / CONFIG).read_text(), load_file(folder / WEIGHTS)


def _loaded_tensors(model: peftkit.PeftModel) -> dict[str, torch.Tensor]:
    return {k.replace(".default", ""): v for k, v in model.state_dict().items() if ".default." in k}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__)
def test_corrupted_folders_load_right_or_raise_a_peftkit_error_naming_the_file(mutation, saved, tmp_path):
    weights, config, original = saved
    rng = random.Random(f"{SEED}-{mutation.__name__}")
    outcomes = {"loaded": 0, "refused": 0}
    meter = _LargestTensor()
    faulthandler.dump_traceback_later(120, exit=True)  # a hang ends the run (and fails it)
    try:
        for case in range(CASES_PER_KIND):
            folder = tmp_path / f"case{case}"
            folder.mkdir()
            new_weights, new_config = mutation(rng, weights, config)
            (folder / WEIGHTS).write_bytes(new_weights)
            (folder / CONFIG).write_text(new_config, encoding="utf-8", errors="surrogateescape")
            try:
                with warnings.catch_warnings(), meter:
                    warnings.simplefilter("ignore")
                    if case % 3:
                        model = peftkit.PeftModel.from_pretrained(_base(), folder)
                    else:  # the other way in: a further adapter of an existing model
                        model = peftkit.get_peft_model(
                            _base(), peftkit.LoraConfig(r=2, target_modules=["first"]), "x"
                        )
                        model.load_adapter(folder, "default")
            except Exception as err:
                assert isinstance(err, PeftError), f"case {case}: {type(err).__name__}: {err}"
                message = str(err)
                assert str(folder) in message and (WEIGHTS in message or CONFIG in message), (
                    f"case {case}: {message}"
                )
                outcomes["refused"] += 1
                continue
            loaded = _loaded_tensors(model)
            assert loaded.keys() == original.keys(), f"case {case}"
            assert all(torch.equal(loaded[k], original[k]) for k in original), f"case {case}: other values"
            outcomes["loaded"] += 1
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert meter.largest <= 16 * 16 * 4  # nothing beyond a few times the largest weight was ever created
    assert outcomes["refused"] > 0  # the mutations were not all harmless
