"""`peftkit diff A B`: how two LoRA adapters differ, module by module (norms, ranks, cosine of deltas)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .errors import CliError

DESCRIPTION = """Compare two LoRA adapters (folders saved by peft/peftkit, or llama.cpp .gguf adapters) module by
module: the rank of each, the Frobenius norm of each delta (scale * B @ A), the norm of their difference and
the cosine between the two deltas (1: same direction, 0: unrelated, -1: opposite). Computed from the factors;
no base model is loaded."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `diff` subcommand."""
    p = subparsers.add_parser(
        "diff",
        help="per-module differences of two LoRA adapters (norms, ranks, cosine)",
        description=DESCRIPTION,
    )
    p.add_argument("adapter_a", metavar="A", help="an adapter folder, Hub id or .gguf LoRA adapter")
    p.add_argument("adapter_b", metavar="B", help="the adapter to compare it with")
    p.add_argument(
        "--base",
        help="the base model, for .gguf adapters that do not record their attention heads (default: none needed)",
    )
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=run)


def load_factors(location: str, base: str | None) -> list[Any]:
    """The LoRA factors of an adapter folder/Hub id, or of a llama.cpp adapter file (in transformers' layout)."""
    from ..persistence.lora_factors import UnsupportedAdapterError, read_lora_adapter

    path = Path(location).expanduser()
    try:
        if path.suffix.lower() == ".gguf" and path.is_file():
            from ..integrations.gguf import describe_base_model, gguf_lora_factors, read_gguf_lora

            return gguf_lora_factors(read_gguf_lora(path), describe_base_model(base) if base else None)
        if not path.exists() and not (location.count("/") == 1 and not location.startswith((".", "/", "~"))):
            raise CliError(f"'{location}' does not exist; pass an adapter folder or a .gguf adapter file.")
        return read_lora_adapter(location, "compared").modules
    except (UnsupportedAdapterError, ImportError, ValueError) as err:  # AdapterLoadError is a ValueError
        raise CliError(str(err)) from err


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def print_diff(result: Any, a: str, b: str) -> None:
    """One line per shared module, then the modules only one adapter has, then the overall cosine."""
    width = max([len(m.module) for m in result.modules] + [6])
    print(f"A = {a}\nB = {b}")
    print(f"{'module':<{width}}  rank A/B  |dW_A|      |dW_B|      |dW_A-dW_B|  cosine")
    for m in result.modules:
        print(
            f"{m.module:<{width}}  {f'{m.rank_a}/{m.rank_b}':<8}  {_fmt(m.norm_a):<10}  {_fmt(m.norm_b):<10}  "
            f"{_fmt(m.norm_diff):<11}  {_fmt(m.cosine)}"
        )
    for name, only in (("A", result.only_a), ("B", result.only_b)):
        if only:
            print(f"only in {name} ({len(only)}): {', '.join(only)}")
    print(
        f"{len(result.modules)} shared module(s); cosine of all shared deltas together: {_fmt(result.overall_cosine)}"
    )


def run(args: argparse.Namespace) -> int:
    """Run `peftkit diff`."""
    from .lora_diff import compare_adapters

    factors_a = load_factors(args.adapter_a, args.base)
    factors_b = load_factors(args.adapter_b, args.base)
    try:
        result = compare_adapters(factors_a, factors_b)
    except ValueError as err:
        raise CliError(str(err)) from err
    if args.json:
        payload = {
            "a": args.adapter_a,
            "b": args.adapter_b,
            "modules": [asdict(m) for m in result.modules],
            "only_a": result.only_a,
            "only_b": result.only_b,
            "overall_cosine": result.overall_cosine,
        }
        print(json.dumps(payload, indent=2))
    else:
        print_diff(result, args.adapter_a, args.adapter_b)
    return 0
