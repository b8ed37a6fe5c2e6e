"""`peftkit info` for llama.cpp LoRA adapters (GGUF files): architecture, alpha, ranks, modules, types."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import CliError
from .inspect_adapter import human_size


def _groups(pairs: dict[str, Any]) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for name, (lora_a, lora_b) in pairs.items():
        pattern = re.sub(r"^blk\.\d+\.", "blk.*.", name)
        group = groups.setdefault(
            pattern,
            {
                "pattern": pattern,
                "count": 0,
                "rank": lora_a.shape[0],
                "lora_a": list(lora_a.shape),
                "lora_b": list(lora_b.shape),
            },
        )
        group["count"] += 1
        if group["rank"] != lora_a.shape[0]:
            group["rank"] = "mixed"
    return list(groups.values())


def build_gguf_report(path: Path) -> dict[str, Any]:
    """What `info` says about a llama.cpp LoRA adapter file (read with the `gguf` package)."""
    from ..integrations.gguf import GGUFConversionError, gguf_lora_factors, read_gguf_lora

    try:
        lora = read_gguf_lora(path)
    except ImportError as err:
        raise CliError(str(err)) from err
    except GGUFConversionError as err:
        raise CliError(str(err)) from err
    try:
        gguf_lora_factors(lora)
        importable = f"yes, as a PEFT adapter folder: peftkit import --from gguf {path} -o DIR"
    except GGUFConversionError as err:
        importable = f"no ({err})"
    if lora.other_tensors:
        importable = f"no (it holds tensors that are not LoRA factors: {', '.join(lora.other_tensors[:4])})"
    parameters = sum(a.numel() + b.numel() for a, b in lora.pairs.values())
    return {
        "location": str(path),
        "method": "LORA",
        "file_format": "gguf (llama.cpp LoRA adapter)",
        "architecture": lora.architecture,
        "alpha": lora.alpha,
        "scale": lora.scale_rule,
        "base_model": lora.base_model,
        "name": lora.metadata.get("general.name"),
        "description": lora.metadata.get("general.description"),
        "modules": _groups(lora.pairs),
        "tensors": len(lora.tensor_types),
        "parameters": parameters,
        "dtypes": dict(Counter(lora.tensor_types.values())),
        "other_tensors": lora.other_tensors,
        "file_bytes": path.stat().st_size,
        "loads_in_peftkit": importable,
    }


def print_gguf_report(report: dict[str, Any]) -> None:
    """The report in a readable layout."""
    dtypes = ", ".join(f"{k} x{v}" for k, v in report["dtypes"].items())
    lines = [
        f"adapter          {report['location']}",
        f"format           {report['file_format']}",
        f"architecture     {report['architecture']}",
        f"loads in peftkit {report['loads_in_peftkit']}",
        f"base model       {report['base_model']}",
        f"alpha            {report['alpha']:g} (each module's scale: {report['scale']})",
        f"parameters       {report['parameters']:,} in {report['tensors']} tensors ({dtypes}), "
        f"file {human_size(report['file_bytes'])}",
        f"modules          {sum(g['count'] for g in report['modules'])} in {len(report['modules'])} pattern(s):",
    ]
    for g in report["modules"]:
        lines.append(
            f"  {g['pattern']}  x{g['count']}  r={g['rank']}  lora_a {g['lora_a']}, lora_b {g['lora_b']}"
        )
    if report["other_tensors"]:
        lines.append(f"other tensors    {', '.join(report['other_tensors'])}")
    print("\n".join(lines))
