"""`peftkit import --from gguf`: a llama.cpp LoRA adapter file as a PEFT adapter folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .embedded import EMBEDDED_NAME, embedded_gguf_path
from .errors import CliError

SOURCES = ("gguf",)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `import` subcommand."""
    p = subparsers.add_parser(
        "import",
        help="turn a llama.cpp LoRA adapter (GGUF) into a PEFT adapter folder",
        description="Read a llama.cpp LoRA adapter (.gguf, general.type=adapter) into a PEFT adapter folder "
        "(adapter_config.json + adapter_model.safetensors) that peft and peftkit load. Exact for f32 files; "
        "f16/bf16/q8_0 factors are de-quantized to float32.",
    )
    p.add_argument("file", help="the llama.cpp LoRA adapter (.gguf)")
    p.add_argument("--from", dest="source", choices=SOURCES, default="gguf", help="the file format")
    p.add_argument("--output-dir", "-o", required=True, help="the adapter folder to write")
    p.add_argument(
        "--base",
        help="the base model (GGUF file, model folder, config.json or Hub id); needed for Llama adapters "
        f"converted by llama.cpp's own script, which do not record the attention heads ('{EMBEDDED_NAME}': "
        "the embedded model; default: none, the file's own records)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an adapter already in --output-dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `peftkit import`."""
    from ..integrations.gguf import import_lora_from_gguf, read_gguf_lora

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"The GGUF file '{path}' does not exist.")
    base = str(embedded_gguf_path()) if args.base == EMBEDDED_NAME else args.base
    try:
        folder = import_lora_from_gguf(path, args.output_dir, base=base, overwrite=args.overwrite)
        lora = read_gguf_lora(path)
    except (ValueError, ImportError, OSError) as err:
        raise CliError(str(err)) from err
    print(f"Wrote the adapter folder {folder}: {len(lora.pairs)} LoRA modules of a {lora.architecture} model")
    print(f"Base model recorded: {lora.base_model or base or '(none: pass --model when loading it)'}")
    return 0
