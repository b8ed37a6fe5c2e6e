"""`peftkit merge`: fuse adapters into the base weights and write a standard transformers model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .adapters import attach_adapters, check_adapter_location
from .errors import CliError
from .models import (
    add_model_arguments,
    drop_gguf_origin,
    load_model,
    load_tokenizer,
    pick_device,
    resolve_model,
)

DTYPES = ("float32", "bfloat16", "float16")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `merge` subcommand."""
    p = subparsers.add_parser(
        "merge",
        help="merge adapters into the base model and save a plain transformers model",
        description="Merge adapters into the base weights and save model + tokenizer as a standard "
        "transformers folder (safetensors), loadable with AutoModelForCausalLM.from_pretrained without peftkit.",
    )
    add_model_arguments(p)
    p.add_argument(
        "--adapter", action="append", required=True, help="an adapter folder or Hub id (repeatable)"
    )
    p.add_argument("--output-dir", "-o", required=True, help="the folder to write the merged model to")
    p.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="dtype of the saved weights (default: float32)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --output-dir")
    p.set_defaults(func=run)


def merge_to_folder(
    model: object, tokenizer: object | None, output_dir: Path, dtype: str = "float32"
) -> None:
    """Save a merged (plain) model and its tokenizer (if any) as a transformers folder with safetensors weights."""
    import torch

    drop_gguf_origin(model)
    model.to(getattr(torch, dtype))
    model.save_pretrained(output_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)


def run(args: argparse.Namespace) -> int:
    """Run `peftkit merge`."""
    output_dir = Path(args.output_dir)
    if (output_dir / "config.json").exists() and not args.overwrite:
        raise CliError(f"'{output_dir}' already holds a model; pass --overwrite or another folder.")
    if output_dir.exists() and not output_dir.is_dir():
        raise CliError(f"--output-dir '{output_dir}' is a file; pass a folder.")
    for location in args.adapter:  # before the base model loads, so a wrong path fails at once
        check_adapter_location(location)
    source = resolve_model(args.model)
    try:
        tokenizer = load_tokenizer(source)
    except CliError as err:  # a weights-only base folder merges fine; it just has no tokenizer to copy
        tokenizer, no_tokenizer = None, err
    model = load_model(source, device=pick_device(args.device))
    peft_model, names = attach_adapters(model, args.adapter)
    merged = peft_model.merge_and_unload(adapter_names=names)
    merge_to_folder(merged, tokenizer, output_dir, args.dtype)
    print(f"Merged {', '.join(names)} into {source.description}; saved to {output_dir}")
    if tokenizer is None:
        print(
            f"No tokenizer was copied: {source.description} has none that loads ({no_tokenizer}). Copy the "
            f"tokenizer files of the base model into {output_dir} to use the merged model for text."
        )
    print(f"Load it without peftkit: AutoModelForCausalLM.from_pretrained({str(output_dir)!r})")
    return 0
