"""`peftkit serve`: an OpenAI-compatible HTTP server for a base model and many adapters.

Requests name an adapter (or `base`) in their `model` field; concurrent requests for different adapters
decode together, token by token (continuous batching). Adapters are loaded on first use and the least
recently used are unloaded past `--max-resident` / `--max-resident-mb` (the adapter store).

    peftkit serve --adapters-dir my-adapters/ --port 8000      # the embedded SmolLM2 by default
    peftkit serve --model ./model --adapter alice=./alice --adapter bob=./bob
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .adapters import check_adapter_location
from .errors import CliError
from .models import add_model_arguments, load_model, load_tokenizer, pick_device, resolve_model


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="serve a base model and adapters over OpenAI's completions / chat-completions API",
        description="An OpenAI-compatible server (/v1/completions, /v1/chat/completions, /v1/models; streaming "
        "with SSE). The request's `model` field names the adapter, or 'base'. Requests for different adapters "
        "are batched together at every decoding step.",
    )
    add_model_arguments(p)
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="an adapter to serve (repeatable)",
    )
    p.add_argument(
        "--adapters-dir",
        help="serve every sub-folder holding an adapter, named after the folder (default: none)",
    )
    p.add_argument("--max-resident", type=int, help="the most adapters in memory at once (default: no bound)")
    p.add_argument(
        "--max-resident-mb", type=float, help="the most MiB of adapters in memory (default: no bound)"
    )
    p.add_argument(
        "--max-batch", type=int, default=32, help="the most requests decoded together (default: 32)"
    )
    p.add_argument("--max-context", type=int, help="prompt + max_tokens limit (default: the model's)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="the port to listen on (default: 8000)")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request")
    p.set_defaults(func=run)


def _adapter_folders(args: argparse.Namespace) -> dict[str, str]:
    folders: dict[str, str] = {}
    for spec in args.adapter:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise CliError(f"--adapter takes NAME=FOLDER, got '{spec}'.")
        check_adapter_location(folder)
        if name in folders:
            raise CliError(f"Two --adapter options use the name '{name}'.")
        folders[name] = folder
    if args.adapters_dir:
        root = Path(args.adapters_dir)
        if not root.is_dir():
            raise CliError(f"--adapters-dir '{root}' is not a folder.")
        found = sorted(p.parent for p in root.glob("*/adapter_config.json"))
        if not found:
            raise CliError(f"--adapters-dir '{root}' holds no adapter sub-folder (with adapter_config.json).")
        for folder in found:
            folders.setdefault(folder.name, str(folder))
    return folders


def build_app(args: argparse.Namespace):
    """The serving app for `args` (model, tokenizer, store, engine), not yet listening."""
    from .. import PeftModel
    from ..serving import AdapterStore, AdapterStoreError
    from ..serving.engine import BatchEngine
    from ..serving.http_server import ServingApp

    for flag in ("max_resident", "max_batch", "max_context"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise CliError(f"--{flag.replace('_', '-')} must be positive, got {value}.")
    if args.max_resident_mb is not None and args.max_resident_mb <= 0:
        raise CliError(f"--max-resident-mb must be positive, got {args.max_resident_mb}.")
    folders = _adapter_folders(args)
    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    model = load_model(source, device=pick_device(args.device))
    store = None
    if folders:
        first, first_folder = next(iter(folders.items()))
        try:
            model = PeftModel.from_pretrained(model, first_folder, adapter_name=first).eval()
            max_bytes = None if args.max_resident_mb is None else int(args.max_resident_mb * 2**20)
            store = AdapterStore(model, max_bytes=max_bytes, max_adapters=args.max_resident)
            store.register(first, first_folder, adopt=True)
            for name, folder in folders.items():
                store.register(name, folder)
        except (ValueError, AdapterStoreError) as err:
            raise CliError(f"Could not set up the adapters: {err}") from err
    limit = args.max_context or getattr(model.config, "max_position_embeddings", None) or 2048
    engine = BatchEngine(
        model, store, max_batch=args.max_batch, max_context=limit, pad_token_id=tokenizer.pad_token_id
    )
    names = [args.model, source.base_model_name]
    return ServingApp(engine, tokenizer, base_names=names)


def run(args: argparse.Namespace) -> int:
    """Run `peftkit serve` until interrupted."""
    from ..serving.http_server import make_server

    app = build_app(args)
    try:
        server = make_server(app, args.host, args.port, verbose=args.verbose)
    except OSError as err:
        raise CliError(f"Cannot listen on {args.host}:{args.port}: {err}") from err
    app.engine.start()
    host, port = server.server_address[:2]
    served = ", ".join(sorted(app.model_table()))
    print(f"peftkit serve: listening on http://{host}:{port}/v1 (models: {served})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        app.engine.stop()
    return 0
