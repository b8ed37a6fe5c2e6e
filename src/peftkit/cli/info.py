"""`peftkit info`: describe an adapter folder or Hub repo, of any method peft writes, or a llama.cpp LoRA
adapter (GGUF file)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from .errors import CliError
from .info_gguf import build_gguf_report, print_gguf_report
from .inspect_adapter import (
    find_adapter_files,
    group_modules,
    human_size,
    read_bin_tensors,
    read_config,
    read_safetensors_header,
    tensor_summary,
    verify_safetensors,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `info` subcommand."""
    p = subparsers.add_parser(
        "info",
        help="describe an adapter (any PEFT method, or a llama.cpp GGUF adapter): method, ranks, targets, size, loadability",
        description="Describe an adapter folder, Hub id or llama.cpp LoRA adapter (.gguf): method, rank/alpha per "
        "module pattern, target modules, task type, base model, parameters, file format, and whether peftkit "
        "can load it. Every tensor is read. Exits with status 2 when the location is not a valid adapter (or its "
        "file is truncated or corrupt), and 1 when it holds NaN/inf values or does not load onto --model.",
    )
    p.add_argument("adapter", help="an adapter folder, a Hub id, or a llama.cpp LoRA adapter (.gguf file)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--model",
        help="also try loading the adapter onto this base model (see `train --help`; default: no loading)",
    )
    p.set_defaults(func=run)


def peftkit_support(config_path: Path, config: dict[str, Any]) -> str:
    """'yes', or 'no (why)': whether peftkit implements the method and accepts this config."""
    from ..config import PeftConfig
    from ..mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from ..utils.peft_types import PeftType

    method = str(config["peft_type"])
    try:
        implemented = PeftType(method) in PEFT_TYPE_TO_CONFIG_MAPPING
    except ValueError:
        return f"no (unknown method {method})"
    if not implemented:
        return f"no (method {method} not implemented)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            PeftConfig.from_pretrained(str(config_path.parent))
        except (ValueError, TypeError) as err:
            return f"no (config rejected: {err})"
    unknown = [str(w.message) for w in caught if "Unexpected keys" in str(w.message)]
    return "yes" + (f" (ignoring keys from a newer version: {unknown[0]})" if unknown else "")


def _try_on_model(location: str, model_spec: str) -> str:
    from .adapters import attach_adapters
    from .models import load_model, resolve_model

    try:
        attach_adapters(load_model(resolve_model(model_spec)), [location])
    except CliError as err:
        return f"no ({err})"
    return f"yes (loaded onto {model_spec})"


def build_report(location: str, model_spec: str | None = None) -> dict[str, Any]:
    """Everything `info` reports about the adapter at `location`, as a JSON-ready dict."""
    config_path, weights_path, file_format = find_adapter_files(location)
    config = read_config(config_path)
    non_finite: dict[str, int] = {}
    if file_format == "safetensors":
        tensors, metadata = read_safetensors_header(weights_path)
        non_finite = verify_safetensors(weights_path)
    else:
        tensors, metadata = read_bin_tensors(weights_path), {}
    groups = group_modules(tensors, config)
    loads = peftkit_support(config_path, config)
    if model_spec and loads.startswith("yes"):
        loads = _try_on_model(location, model_spec)
    others = sorted(p.parent.name for p in config_path.parent.glob("*/adapter_config.json"))
    return {
        "location": location,
        "method": config["peft_type"],
        "task_type": config.get("task_type"),
        "base_model": config.get("base_model_name_or_path"),
        "target_modules": config.get("target_modules"),
        "r": config.get("r"),
        "alpha": config.get("lora_alpha", config.get("alpha")),
        "rank_pattern": config.get("rank_pattern") or {},
        "alpha_pattern": config.get("alpha_pattern") or {},
        "modules_to_save": config.get("modules_to_save"),
        "modules": [vars(g) for g in groups],
        **tensor_summary(tensors),
        "file": weights_path.name,
        "file_format": file_format,
        "file_bytes": weights_path.stat().st_size,
        "metadata": metadata,
        "peft_version": config.get("peft_version"),
        "loads_in_peftkit": loads,
        "non_finite": non_finite,
        "other_adapters": others,
    }


def _targets(value: Any) -> str:
    if value is None:
        return "(architecture default)"
    return ", ".join(sorted(value)) if isinstance(value, list) else f"{value} (regex)"


def _writer(report: dict[str, Any]) -> str:
    # peftkit records itself in the safetensors metadata; `peft_version` in the config is the format
    ours = report["metadata"].get("peftkit_version")
    if ours:
        return f", written by peftkit {ours} in peft {report['peft_version']}'s format"
    return f", written by peft {report['peft_version']}" if report["peft_version"] else ""


def print_report(report: dict[str, Any]) -> None:
    """The report in a readable layout."""
    dtypes = ", ".join(f"{k} x{v}" for k, v in report["dtypes"].items())
    lines = [
        f"adapter          {report['location']}",
        f"method           {report['method']}",
        f"loads in peftkit {report['loads_in_peftkit']}",
        f"task type        {report['task_type']}",
        f"base model       {report['base_model']}",
        f"target modules   {_targets(report['target_modules'])}",
    ]
    if report["r"] is not None:
        lines.append(f"rank / alpha     r={report['r']}, alpha={report['alpha']}")
    for name in ("rank_pattern", "alpha_pattern"):
        if report[name]:
            lines.append(f"{name.replace('_', ' '):<16} {json.dumps(report[name])}")
    if report["modules_to_save"]:
        lines.append(f"modules to save  {', '.join(report['modules_to_save'])}")
    lines += [
        f"parameters       {report['parameters']:,} in {report['tensors']} tensors ({dtypes}), "
        f"{human_size(report['bytes'])}",
        f"file             {report['file']} ({report['file_format']}, {human_size(report['file_bytes'])}"
        + _writer(report)
        + ")",
        f"modules          {sum(g['count'] for g in report['modules'])} in {len(report['modules'])} pattern(s):",
    ]
    for g in report["modules"]:
        shapes = ", ".join(f"{name} {list(shape)}" for name, shape in g["tensors"].items())
        rank = f"r={g['rank']} alpha={g['alpha']}  " if g["rank"] is not None else ""
        lines.append(f"  {g['pattern']}  x{g['count']}  {rank}{shapes}")
    if report["other_adapters"]:
        lines.append(f"other adapters   in sub-folders: {', '.join(report['other_adapters'])}")
    if report["non_finite"]:
        lines.append(f"non-finite       {_non_finite(report)}")
    print("\n".join(lines))


def _non_finite(report: dict[str, Any]) -> str:
    bad = report["non_finite"]
    return f"{sum(bad.values()):,} NaN/inf values in {len(bad)} tensor(s), e.g. {next(iter(bad))}"


def _gguf_on_model(path: Path, model_spec: str) -> str:
    """Import the GGUF adapter into a temporary folder and try that on the model."""
    import tempfile

    from ..integrations.gguf import GGUFConversionError, import_lora_from_gguf

    with tempfile.TemporaryDirectory() as tmp:
        try:
            import_lora_from_gguf(path, Path(tmp) / "adapter")
        except GGUFConversionError as err:
            return f"no ({err})"
        return _try_on_model(str(Path(tmp) / "adapter"), model_spec)


def _problem(report: dict[str, Any], model_spec: str | None) -> str | None:
    """Why `info` ends with status 1 (the adapter is readable, but not usable as it is), or None."""
    if report.get("non_finite"):
        return f"the adapter holds {_non_finite(report)} (training diverged?); it computes NaN outputs"
    if model_spec and not report["loads_in_peftkit"].startswith("yes"):
        return f"the adapter does not load onto {model_spec}: {report['loads_in_peftkit']}"
    return None


def run(args: argparse.Namespace) -> int:
    """Run `peftkit info`."""
    path = Path(args.adapter).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        report = build_gguf_report(path)
        if args.model:
            report["loads_in_peftkit"] = _gguf_on_model(path, args.model)
        show = print_gguf_report
    else:
        report, show = build_report(args.adapter, args.model), print_report
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show(report)
    problem = _problem(report, args.model)
    if problem:
        print(f"peftkit info: {problem}", file=sys.stderr)
        return 1
    return 0
