"""`peftkit train`: train a LoRA adapter on a causal LM from a JSONL dataset."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from ..utils.memory import keep_freed_memory
from .checkpoints import DEFAULT_KEEP, find_checkpoint, list_checkpoints
from .data import encode_rows, read_jsonl, split_rows
from .errors import CliError
from .lora_options import add_lora_arguments, build_lora_config
from .models import add_model_arguments, load_model, load_tokenizer, pick_device, resolve_model
from .training import SCHEDULERS, TrainResult, TrainSettings, train_adapter

DESCRIPTION = """Train a LoRA adapter. The dataset is JSONL with {"prompt", "completion"} or {"messages": [...]}
rows; the loss covers the completion (the assistant turns) only. The output folder receives the adapter
(adapter_config.json + adapter_model.safetensors, loadable by peft and peftkit), metrics.jsonl, loss.png
(with matplotlib) and, with --save-steps, checkpoint-<step> folders to --resume from (the newest
--save-total-limit kept). Ctrl-C stops after the current step, saves a checkpoint and prints the command
that resumes."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    p = subparsers.add_parser(
        "train", help="train a LoRA adapter on a JSONL dataset", description=DESCRIPTION
    )
    p.add_argument("--data", required=True, help="training set: a JSONL file")
    p.add_argument("--output-dir", "-o", required=True, help="where the adapter, metrics and checkpoints go")
    add_model_arguments(p, four_bit=True)
    p.add_argument("--eval-data", help="evaluation set: a JSONL file (default: none)")
    p.add_argument(
        "--eval-fraction",
        type=float,
        help="hold out this fraction of --data for evaluation instead (default: none, no evaluation)",
    )
    p.add_argument("--max-length", type=int, default=512, help="cut rows to this many tokens (default: 512)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=3, help="passes over the data (default: 3)")
    t.add_argument(
        "--max-steps", type=int, help="optimizer steps to take (overrides --epochs; default: from --epochs)"
    )
    t.add_argument(
        "--lr",
        "--learning-rate",
        dest="lr",
        type=float,
        default=2e-4,
        help="peak learning rate (default: 2e-4)",
    )
    t.add_argument("--batch-size", type=int, default=4, help="rows per micro-batch (default: 4)")
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default: 1)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's weight decay")
    t.add_argument("--warmup-steps", type=int, default=0, help="steps of linear learning-rate warm-up")
    t.add_argument(
        "--lr-scheduler", choices=SCHEDULERS, default="linear", help="the learning rate's decay after warm-up"
    )
    t.add_argument(
        "--max-grad-norm", type=float, default=1.0, help="clip gradients to this norm (0: no clipping)"
    )
    t.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute activations to save memory"
    )
    t.add_argument(
        "--eval-steps", type=int, help="evaluate every N steps (default: at the end of each epoch)"
    )
    t.add_argument(
        "--save-steps", type=int, help="write a checkpoint every N steps (default: none, only on Ctrl-C)"
    )
    t.add_argument(
        "--save-total-limit",
        type=int,
        default=DEFAULT_KEEP,
        help="keep only the newest N checkpoints; 0 keeps every one (default: %(default)s)",
    )
    t.add_argument(
        "--resume",
        metavar="CHECKPOINT",
        help="resume from a checkpoint folder, or 'latest' (default: none, start fresh)",
    )
    t.add_argument("--overwrite", action="store_true", help="replace an adapter already in --output-dir")
    t.add_argument(
        "--seed", type=int, default=0, help="seeds the adapter's initial weights and the data order"
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc's malloc keeps freed memory for reuse: no page faults for each step's large tensors "
        "(a quarter of a CPU step on a SmolLM2-shaped model); the process keeps its peak memory. Linux only",
    )
    add_lora_arguments(p)
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The TrainSettings the flags describe (checked)."""
    settings = TrainSettings(
        epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        lr_scheduler=args.lr_scheduler,
        max_grad_norm=args.max_grad_norm or None,
        eval_steps=args.eval_steps,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
        show_progress=not args.no_progress,
    )
    settings.check()
    return settings


def run(args: argparse.Namespace) -> int:
    """Run `peftkit train`."""
    from .. import get_peft_model
    from .metrics import plot_loss

    # Everything that can be checked without the model is checked first, so mistakes fail fast.
    settings = settings_from_args(args)
    if args.max_length <= 0:
        raise CliError(f"--max-length must be a positive integer, got {args.max_length}.")
    output_dir = Path(args.output_dir)
    resume = find_checkpoint(args.resume, output_dir) if args.resume else None
    if (output_dir / "adapter_config.json").exists() and not (resume or args.overwrite):
        raise CliError(
            f"'{output_dir}' already holds an adapter; pass --overwrite, --resume latest or another folder."
        )
    if args.eval_data and args.eval_fraction:
        raise CliError("Pass either --eval-data or --eval-fraction, not both.")
    if args.keep_freed_memory:
        try:
            keep_freed_memory()
        except OSError as err:
            raise CliError(f"--keep-freed-memory: {err}") from err
    train_rows = read_jsonl(args.data)
    eval_rows = read_jsonl(args.eval_data) if args.eval_data else []
    if args.eval_fraction:
        train_rows, eval_rows = split_rows(train_rows, args.eval_fraction, args.seed)
    lora_config = build_lora_config(args, checkpoint=resume)
    source = resolve_model(args.model)
    if resume:
        _check_resumed_model(resume, source.base_model_name)

    print(f"Loading {source.description} ...", flush=True)
    tokenizer = load_tokenizer(source)
    model = load_model(source, load_in_4bit=args.load_in_4bit, device=pick_device(args.device))
    train_set = encode_rows(train_rows, tokenizer, args.max_length, "training")
    eval_set = encode_rows(eval_rows, tokenizer, args.max_length, "evaluation")
    import torch

    torch.manual_seed(args.seed)  # the adapter's initial weights, so --seed makes a run reproducible
    try:
        model = get_peft_model(model, lora_config)
    except ValueError as err:  # e.g. target modules that match nothing: the message names them
        raise CliError(f"Could not add the LoRA adapter: {err}") from err
    model.print_trainable_parameters()
    print(f"{len(train_set)} training rows, {len(eval_set)} evaluation rows", flush=True)

    if settings.save_steps:
        print(
            f"Checkpoints every {settings.save_steps} steps go to {output_dir}/checkpoint-<step> "
            f"({_kept(settings)})",
            flush=True,
        )
    result = train_adapter(model, train_set, eval_set, tokenizer.pad_token_id, settings, output_dir, resume)
    if result.interrupted:
        _report_interruption(args, result)
        return 130
    model.save_pretrained(output_dir)
    plot = plot_loss(output_dir)
    print(
        f"{_steps_done(result)} in {result.seconds:.1f} s; last training loss {result.last_loss:.4f}", end=""
    )
    print(f", evaluation loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
    print(f"Adapter saved to {output_dir}; metrics in {output_dir / 'metrics.jsonl'}")
    checkpoints = list_checkpoints(output_dir)
    if checkpoints:
        names = ", ".join(p.name for p in checkpoints)
        print(f"Checkpoints in {output_dir}: {names} ({_kept(settings)})")
    print(
        f"Loss plot: {plot}"
        if plot
        else "No loss plot (matplotlib is not installed: pip install 'peftkit[plot]')"
    )
    return 0


def _kept(settings: TrainSettings) -> str:
    if not settings.save_total_limit:
        return "all kept"
    return f"the newest {settings.save_total_limit} kept; --save-total-limit changes it"


def _steps_done(result: TrainResult) -> str:
    """'Trained 310 steps' (plus where they sit when the run resumed: 'steps 51-360 of 360')."""
    text = f"Trained {result.steps} steps"
    if result.start:
        text += (
            f" (steps {result.start + 1}-{result.end} of {result.total}, resumed from step {result.start})"
        )
    return text


def _check_resumed_model(checkpoint: Path, model_name: str) -> None:
    """A checkpoint resumes only on the base model it was trained on (the name it records)."""
    recorded = json.loads((checkpoint / "adapter_config.json").read_text(encoding="utf-8")).get(
        "base_model_name_or_path"
    )
    if recorded and Path(recorded).name != Path(model_name).name:
        raise CliError(
            f"--model {model_name} differs from {checkpoint}, which was trained on {recorded}. To resume, pass "
            f"--model {recorded}; to train on the other model, start fresh: drop --resume and pass --overwrite "
            "(or another --output-dir)."
        )


def resume_command(argv: list[str], checkpoint: Path) -> str:
    """The command line that resumes from `checkpoint`: the same flags, with `--resume CHECKPOINT`."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume=") and arg != "--overwrite":
            kept.append(arg)
    return shlex.join(["peftkit", *kept, "--resume", str(checkpoint)])


def _report_interruption(args: argparse.Namespace, result: TrainResult) -> None:
    print(
        f"\nInterrupted after step {result.end} of {result.total} ({_steps_done(result).lower()} in this run); "
        f"checkpoint saved to {result.checkpoint}"
    )
    print(f"Resume with:\n  {resume_command(getattr(args, 'argv', []), result.checkpoint)}")
