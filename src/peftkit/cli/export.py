"""`peftkit export --format gguf`: a LoRA adapter as a llama.cpp LoRA adapter file (GGUF)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .embedded import EMBEDDED_NAME, embedded_gguf_path
from .errors import CliError
from .hub_access import hub_files_only_from_cache, looks_like_hub_id

FORMATS = ("gguf",)
DTYPES = ("f32", "f16", "bf16", "q8_0")
DESCRIPTION = """Export a LoRA adapter (saved by peft or peftkit) as a llama.cpp LoRA adapter: run it with llama.cpp
(`llama-cli -m base.gguf --lora adapter.gguf`), llama-cpp-python (`Llama(model_path=..., lora_path=...)`) or ollama
(`ADAPTER ./adapter.gguf` in a Modelfile). The base model gives the architecture and attention heads (and, as a
GGUF file, the tensor shapes the adapter must fit); by default it is the one the adapter records. DoRA, other
methods, embedding LoRAs and modules_to_save heads cannot be exported: merge those with `peftkit merge`."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand."""
    p = subparsers.add_parser(
        "export", help="export a LoRA adapter for llama.cpp / ollama (a GGUF file)", description=DESCRIPTION
    )
    p.add_argument("adapter", help="the adapter folder (or Hub id)")
    p.add_argument("--format", choices=FORMATS, default="gguf", help="the file format")
    p.add_argument("--output", "-o", required=True, help="the file to write, e.g. adapter.gguf")
    p.add_argument(
        "--base",
        help=f"the base model: the GGUF file you will run the adapter on, a model folder, its config.json, a Hub "
        f"id, or '{EMBEDDED_NAME}' (default: the adapter's recorded base_model_name_or_path)",
    )
    p.add_argument("--dtype", choices=DTYPES, default="f32", help="the type of the stored factors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def _base(spec: str | None) -> tuple[str | None, bool]:
    """(base model for the exporter, read a Hub config from the cache only)."""
    if spec == EMBEDDED_NAME:
        return str(embedded_gguf_path()), False
    if spec is not None and looks_like_hub_id(spec):
        return spec, hub_files_only_from_cache(spec, "config.json", "The base model")
    return spec, False


def run(args: argparse.Namespace) -> int:
    """Run `peftkit export`."""
    from ..integrations.gguf import export_lora_to_gguf
    from ..persistence.lora_factors import UnsupportedAdapterError
    from .adapters import check_adapter_location

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise CliError(f"'{output}' exists; pass --overwrite or another --output.")
    check_adapter_location(args.adapter)
    base, cache_only = _base(args.base)
    try:
        done = export_lora_to_gguf(
            args.adapter,
            output,
            base=base,
            dtype=args.dtype,
            overwrite=args.overwrite,
            local_files_only=cache_only,
        )
    except (UnsupportedAdapterError, ValueError, ImportError, OSError) as err:
        raise CliError(str(err)) from err
    types = ", ".join(f"{n} {t}" for t, n in done.tensor_types.items())
    print(
        f"Wrote {done.path}: {done.modules} LoRA modules ({types}), architecture {done.architecture}, alpha {done.alpha:g}"
    )
    print(f"Base model read from {done.base}")
    print(
        f"Run it: llama-cli -m BASE.gguf --lora {done.path}   or   Llama(model_path=BASE.gguf, lora_path={str(done.path)!r})"
    )
    return 0
