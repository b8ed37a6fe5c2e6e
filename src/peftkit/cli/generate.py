"""`peftkit generate`: answer prompts with a base model plus adapter(s), optionally merged."""

from __future__ import annotations

import argparse
from pathlib import Path

from .adapters import attach_adapters, check_adapter_location
from .data import prompt_ids, user_prompt_row
from .errors import CliError
from .generation import generate_answers
from .models import add_model_arguments, load_model, load_tokenizer, pick_device, resolve_model


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `generate` subcommand."""
    p = subparsers.add_parser(
        "generate",
        help="answer prompts with a base model and adapters",
        description="Answer prompts with a base model plus adapters. Several --adapter are active together "
        "(their effects add up); --merge merges them into the weights first (same answers, faster).",
    )
    add_model_arguments(p)
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        help="an adapter folder or Hub id (repeatable; default: none, the base model answers)",
    )
    p.add_argument("--merge", action="store_true", help="merge the adapters into the base weights first")
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        help="a prompt (repeatable; default: none, use --prompts-file)",
    )
    p.add_argument("--prompts-file", help="a text file with one prompt per line (default: none)")
    chat = p.add_mutually_exclusive_group()
    chat.add_argument(
        "--chat",
        dest="chat",
        action="store_true",
        default=None,
        help="wrap prompts as a user turn (default: when the tokenizer has a chat template)",
    )
    chat.add_argument(
        "--no-chat", dest="chat", action="store_false", help="give prompts to the model as plain text"
    )
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per answer at most")
    p.add_argument(
        "--temperature", type=float, help="sample with this temperature (default: greedy decoding)"
    )
    p.add_argument("--top-p", type=float, help="nucleus sampling (with --temperature; default: off)")
    p.add_argument("--compare-base", action="store_true", help="also print the base model's answers")
    p.add_argument("--batch-size", type=int, default=8, help="prompts answered together")
    p.set_defaults(func=run)


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise CliError(f"The prompts file '{path}' does not exist.")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise CliError("No prompt given: pass --prompt TEXT (repeatable) or --prompts-file FILE.")
    return prompts


def run(args: argparse.Namespace) -> int:
    """Run `peftkit generate`."""
    prompts = _prompts(args)
    if args.max_new_tokens <= 0 or args.batch_size <= 0:
        raise CliError("--max-new-tokens and --batch-size must be positive integers.")
    if args.merge and not args.adapter:
        raise CliError("--merge needs at least one --adapter.")
    if args.compare_base and not args.adapter:
        raise CliError("--compare-base needs at least one --adapter to compare with.")
    if args.temperature is not None and args.temperature <= 0:
        raise CliError(
            f"--temperature must be positive, got {args.temperature} (leave it out for greedy decoding)."
        )
    if args.top_p is not None and args.temperature is None:
        raise CliError("--top-p needs --temperature (sampling); without it decoding is greedy.")
    sample = None
    if args.temperature is not None:
        sample = {"temperature": args.temperature, **({"top_p": args.top_p} if args.top_p else {})}
    for location in args.adapter:  # before the base model loads, so a wrong path fails at once
        check_adapter_location(location)
    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    model = load_model(source, device=pick_device(args.device))
    ids = [prompt_ids(user_prompt_row(p, tokenizer, args.chat), tokenizer) for p in prompts]
    base_answers = None
    if args.adapter:
        model, _ = attach_adapters(model, args.adapter)
        if args.compare_base:
            with model.disable_adapter():
                base_answers = generate_answers(
                    model, tokenizer, ids, args.max_new_tokens, args.batch_size, sample
                )
        if args.merge:
            model = model.merge_and_unload()
    answers = generate_answers(model, tokenizer, ids, args.max_new_tokens, args.batch_size, sample)
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        print(f">>> {prompt}")
        if base_answers is not None:
            print(f"[base]    {base_answers[i]}")
            print(f"[adapter] {answer}")
        else:
            print(answer)
    return 0
