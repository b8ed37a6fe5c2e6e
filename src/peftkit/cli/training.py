"""A small training loop for LoRA adapters (AdamW, warm-up and decay, gradient accumulation, clipping,
evaluation, checkpoints, resuming) with a tqdm progress bar and a `metrics.jsonl` record.

The loss is the mean cross-entropy over all completion tokens of an optimizer step (summed over its
micro-batches, then divided by their token count), so gradient accumulation gives the same update as
one big batch, whatever the lengths of the rows.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoints import DEFAULT_KEEP, load_checkpoint, save_checkpoint
from .data import IGNORE_INDEX, Example, collate
from .errors import CliError
from .interrupt import stop_on_interrupt
from .metrics import MetricsLog

SCHEDULERS = ("linear", "cosine", "constant")


@dataclass
class TrainSettings:
    """How to train; the fields mirror `peftkit train`'s flags."""

    epochs: int = 3
    max_steps: int | None = None  # optimizer steps; overrides epochs
    learning_rate: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler: str = "linear"
    max_grad_norm: float | None = 1.0
    eval_steps: int | None = None  # None: evaluate at the end of each epoch (when there is an eval set)
    save_steps: int | None = None  # None: no intermediate checkpoints
    save_total_limit: int = DEFAULT_KEEP  # checkpoints kept (the newest); 0 keeps them all
    seed: int = 0
    gradient_checkpointing: bool = False
    show_progress: bool = True

    def check(self) -> None:
        """Raise CliError for settings that cannot work, naming the flag."""
        positive = {
            "--epochs": self.epochs,
            "--batch-size": self.batch_size,
            "--grad-accum": self.grad_accum,
            "--max-steps": self.max_steps,
            "--eval-steps": self.eval_steps,
            "--save-steps": self.save_steps,
        }
        for flag, value in positive.items():
            if value is not None and value <= 0:
                raise CliError(f"{flag} must be a positive integer, got {value}.")
        if self.save_total_limit < 0:
            raise CliError(
                f"--save-total-limit must be >= 0 (0 keeps every checkpoint), got {self.save_total_limit}."
            )
        if not self.learning_rate > 0:
            raise CliError(f"--lr must be positive, got {self.learning_rate}.")
        if self.warmup_steps < 0:
            raise CliError(f"--warmup-steps must be >= 0, got {self.warmup_steps}.")
        if self.lr_scheduler not in SCHEDULERS:
            raise CliError(
                f"--lr-scheduler must be one of {', '.join(SCHEDULERS)}, got {self.lr_scheduler!r}."
            )


@dataclass
class TrainResult:
    """What a run did."""

    steps: int  # optimizer steps taken by this run (a resumed run counts from its checkpoint)
    last_loss: float | None
    eval_loss: float | None
    seconds: float
    start: int = 0  # the step it started from (the checkpoint's, when resumed)
    total: int = 0  # the step the schedule ends at
    interrupted: bool = False  # stopped by Ctrl-C before `total`
    checkpoint: Path | None = None  # the checkpoint written when interrupted

    @property
    def end(self) -> int:
        return self.start + self.steps


def _schedule(n_rows: int, settings: TrainSettings) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps)."""
    per_epoch = math.ceil(math.ceil(n_rows / settings.batch_size) / settings.grad_accum)
    total = settings.max_steps if settings.max_steps is not None else per_epoch * settings.epochs
    return per_epoch, total


def _step_batches(
    examples: list[Example], settings: TrainSettings, per_epoch: int, step: int
) -> list[list[Example]]:
    """The micro-batches of optimizer step `step` (0-based); the order is a seeded shuffle per epoch, so it
    is the same when a run resumes."""
    import torch

    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(
        len(examples), generator=torch.Generator().manual_seed(settings.seed + epoch)
    ).tolist()
    rows_per_step = settings.batch_size * settings.grad_accum
    chosen = order[index * rows_per_step : (index + 1) * rows_per_step]
    return [
        [examples[i] for i in chosen[start : start + settings.batch_size]]
        for start in range(0, len(chosen), settings.batch_size)
    ]


def _accepts_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _token_loss_sum(model: Any, batch: dict[str, Any]) -> Any:
    """Summed cross-entropy of the next-token predictions at labelled positions.

    Completions sit at the end of their rows, so where the model allows it only the logits from the
    first labelled position on are computed (`logits_to_keep`): the vocabulary projection is a large part
    of a small model's cost, and prompt positions do not need it.
    """
    import torch.nn.functional as F

    labels = batch["labels"]
    width = labels.shape[1]
    labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    first = int(labelled[0]) if len(labelled) else width - 1
    extra = {"logits_to_keep": width - first + 1} if first > 0 and _accepts_logits_to_keep(model) else {}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra).logits
    # logits cover the last `kept` positions; position p predicts the token at p + 1
    kept = logits.shape[1]
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        labels[:, width - kept + 1 :].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def _label_count(batch: dict[str, Any]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def evaluate_loss(model: Any, examples: list[Example], pad_id: int, batch_size: int) -> float:
    """Mean cross-entropy per completion token over `examples` (no gradients, eval mode)."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {
                k: v.to(device) for k, v in collate(examples[start : start + batch_size], pad_id).items()
            }
            total += float(_token_loss_sum(model, batch))
            count += _label_count(batch)
    model.train(was_training)
    return total / max(count, 1)


def _lr_lambda(settings: TrainSettings, total: int) -> Any:
    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        if settings.lr_scheduler == "constant":
            return 1.0
        progress = (step - settings.warmup_steps) / max(1, total - settings.warmup_steps)
        if settings.lr_scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _set_checkpointing(model: Any, enabled: bool) -> None:
    """Turn activation (gradient) checkpointing on or off, with the API the transformers version has."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise CliError(
            f"{type(base).__name__} does not support gradient checkpointing; drop --gradient-checkpointing."
        )
    # non-reentrant checkpointing passes gradients to the adapters although the base is frozen
    options = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x; the old names warn there
        if enabled:
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            base.activation_checkpointing_disable()
    elif enabled:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    else:
        base.gradient_checkpointing_disable()


def _optimizer_step(
    model: Any,
    batches: list[dict[str, Any]],
    params: list[Any],
    optimizer: Any,
    scheduler: Any,
    settings: TrainSettings,
) -> dict[str, Any]:
    """One optimizer step over its micro-batches; returns its metrics record (without step and epoch)."""
    import torch

    n_tokens = max(1, sum(_label_count(b) for b in batches))
    step_loss = 0.0
    for batch in batches:
        loss = _token_loss_sum(model, batch) / n_tokens
        loss.backward()
        step_loss += loss.item()
    record: dict[str, Any] = {"loss": step_loss, "lr": scheduler.get_last_lr()[0], "tokens": n_tokens}
    if settings.max_grad_norm:
        record["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return record


STOP_MESSAGE = "Ctrl-C: stopping after this step to save a checkpoint (press Ctrl-C again to stop at once, without saving)"


def train_adapter(
    model: Any,
    train_examples: list[Example],
    eval_examples: list[Example],
    pad_id: int,
    settings: TrainSettings,
    output_dir: str | Path,
    resume_from: Path | None = None,
) -> TrainResult:
    """Train the trainable parameters of `model` (a PeftModel) on `train_examples`.

    Writes `metrics.jsonl` (and checkpoints, with `settings.save_steps`) into `output_dir`; the caller
    saves the final adapter. With `resume_from` (a checkpoint folder) training goes on from its step.
    Ctrl-C stops after the current step and writes a checkpoint of it (`TrainResult.interrupted`).
    """
    import torch
    from tqdm.auto import tqdm

    settings.check()
    output_dir = Path(output_dir)
    per_epoch, total = _schedule(len(train_examples), settings)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CliError("The model has no trainable parameters; check the LoRA target modules.")
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(settings, total))
    start = load_checkpoint(resume_from, model, optimizer, scheduler) if resume_from else 0
    if start >= total:
        raise CliError(
            f"The checkpoint is at step {start}, and this run has {total} steps: raise --max-steps/--epochs."
        )
    if resume_from:
        print(f"Resumed from {resume_from}: step {start} of {total}", flush=True)
    log = MetricsLog(output_dir, keep_up_to_step=start if resume_from else None)
    if settings.gradient_checkpointing:
        _set_checkpointing(model, True)
    if hasattr(model, "config"):
        model.config.use_cache = False  # a cache is of no use in training and costs memory
    device = next(model.parameters()).device
    torch.manual_seed(settings.seed + start)  # LoRA dropout masks
    model.train()
    began = time.perf_counter()
    last_loss: float | None = None
    eval_loss: float | None = None
    done, saved_at, interrupted = start, None, False
    bar = tqdm(total=total, initial=start, desc="training", unit="step", disable=not settings.show_progress)
    with stop_on_interrupt(STOP_MESSAGE) as stop:
        for step in range(start, total):
            batches = [
                {k: v.to(device) for k, v in collate(b, pad_id).items()}
                for b in _step_batches(train_examples, settings, per_epoch, step)
            ]
            record = _optimizer_step(model, batches, params, optimizer, scheduler, settings)
            done = step + 1
            last_loss = record["loss"]
            log.write({"step": done, "epoch": round(done / per_epoch, 4), **record})
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            bar.update(1)
            at_epoch_end = done % per_epoch == 0 or done == total
            due = done % settings.eval_steps == 0 if settings.eval_steps else at_epoch_end
            if eval_examples and (due or done == total):
                eval_loss = evaluate_loss(model, eval_examples, pad_id, settings.batch_size)
                log.write({"step": done, "epoch": round(done / per_epoch, 4), "eval_loss": eval_loss})
                bar.write(f"step {done}: eval loss {eval_loss:.4f}")
            if settings.save_steps and done % settings.save_steps == 0 and done < total:
                save_checkpoint(model, optimizer, scheduler, done, output_dir, settings.save_total_limit)
                saved_at = done
            if stop.requested and done < total:
                interrupted = True
                break
        bar.close()
        checkpoint = output_dir / f"checkpoint-{done}" if interrupted else None
        if interrupted and saved_at != done:  # (a second Ctrl-C while this saves leaves no partial folder)
            save_checkpoint(model, optimizer, scheduler, done, output_dir, settings.save_total_limit)
    model.eval()
    if settings.gradient_checkpointing:
        _set_checkpointing(model, False)
    if hasattr(model, "config"):
        model.config.use_cache = True
    return TrainResult(
        steps=done - start,
        last_loss=last_loss,
        eval_loss=eval_loss,
        seconds=time.perf_counter() - began,
        start=start,
        total=total,
        interrupted=interrupted,
        checkpoint=checkpoint,
    )
