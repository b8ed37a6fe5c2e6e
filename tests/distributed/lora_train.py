"""Train a tiny Llama's LoRA adapter for a few steps: alone, under `torchrun` (DDP or FSDP2, gloo on the
CPU) or under `accelerate launch`; then check the ranks agree and save the adapter.

    python tests/distributed/lora_train.py --mode single --out DIR
    torchrun --nproc_per_node 2 tests/distributed/lora_train.py --mode ddp|fsdp2 --out DIR
    accelerate launch --num_processes 2 --cpu tests/distributed/lora_train.py --mode accelerate --out DIR

Every step takes the same global batch of 4 sequences, split evenly across the ranks, so the averaged
gradients, hence the trained adapter, equal the single-process run's. Rank 0 writes `report.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import tiny_llama

import peftkit

STEPS, BATCH, LENGTH = 3, 4, 8


def make_model() -> peftkit.PeftModel:
    config = peftkit.LoraConfig(
        r=4,
        target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"v_proj": 1},  # (1, 32) factors: under FSDP2 the second rank's shard is empty
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(0)
    return peftkit.get_peft_model(tiny_llama(), config)


def global_batches() -> torch.Tensor:
    return torch.randint(1, 128, (STEPS, BATCH, LENGTH), generator=torch.Generator().manual_seed(1))


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["single", "ddp", "fsdp2", "accelerate"], required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)

    model = make_model()
    accelerator = None
    if args.mode == "accelerate":
        from accelerate import Accelerator

        # on the CPU accelerate runs DDP over gloo (MULTI_CPU); it enables FSDP only on accelerator backends
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        rank, world = accelerator.process_index, accelerator.num_processes
    elif args.mode in ("ddp", "fsdp2"):
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1

    trained = model
    if args.mode == "ddp":
        trained = torch.nn.parallel.DistributedDataParallel(model)
    elif args.mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in model.get_base_model().model.layers:
            fully_shard(layer)
        fully_shard(model)
    # plain SGD: the update is linear in the (averaged) gradient, so runs agree to float rounding (Adam would
    # magnify rounding differences of near-zero gradients)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    if accelerator is not None:
        trained, optimizer = accelerator.prepare(model, optimizer)

    losses = []
    for batch in global_batches():
        ids = batch[rank::world]
        loss = trained(input_ids=ids, labels=ids).loss
        (accelerator.backward(loss) if accelerator is not None else loss.backward())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())

    # the adapter on every rank (gathered under FSDP2, a collective) must be the same
    local_numel = {n: p.to_local().numel() for n, p in model.named_parameters() if hasattr(p, "to_local")}
    adapter = {n: full(p.detach()) for n, p in model.named_parameters() if p.requires_grad}
    flat = torch.cat([adapter[n].flatten() for n in sorted(adapter)])
    if world > 1:
        copies = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(copies, flat)
        rank_diff = max((c - copies[0]).abs().max().item() for c in copies)
        numels = [None] * world
        dist.all_gather_object(numels, local_numel)
    else:
        rank_diff, numels = 0.0, [local_numel]

    # every rank saves (FSDP2 gathers inside save_pretrained); only the main process may write
    main_process = rank == 0
    target = out / ("adapter" if main_process else f"adapter_rank{rank}")
    to_save = accelerator.unwrap_model(trained) if accelerator is not None else model
    to_save.save_pretrained(target, is_main_process=main_process)
    if world > 1:
        dist.barrier()
    if main_process:
        report = {
            "world": world,
            "rank_diff": rank_diff,
            "losses": losses,
            "empty_shards": sorted({n for per_rank in numels for n, k in per_rank.items() if k == 0}),
            "other_rank_wrote": any((out / f"adapter_rank{r}").exists() for r in range(1, world)),
            "sharded": any(hasattr(p, "to_local") for p in model.parameters()),
            "wrapper": type(trained).__name__,
        }
        (out / "report.json").write_text(json.dumps(report))
    # no collective follows the barrier, so each rank leaves on its own (`os._exit` below) without
    # `destroy_process_group`, whose teardown is one more place a loaded machine has seen a run stall
    return rank


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    finished_rank = main()
    # everything is written: say so (the test then knows a launcher still running later is only its
    # own shutdown), and leave without the interpreter's shutdown, where a gloo worker thread once kept a
    # rank alive for good after its launcher had finished
    (Path(sys.argv[sys.argv.index("--out") + 1]) / f"exited_rank{finished_rank}").touch()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
