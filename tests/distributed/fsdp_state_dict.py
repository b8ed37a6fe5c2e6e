"""One process (gloo) on the CPU: an adapter's state dict taken from an FSDP2-sharded PeftModel
(`get_model_state_dict(full_state_dict=True)`, as accelerate and the Trainer take it) and loaded into a fresh
model, in peft and in peftkit. Prints one JSON line per method: the largest differences found.

    python fsdp_state_dict.py PORT
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

CONFIGS = {
    "BOFTConfig": {"boft_block_size": 4, "init_weights": False},
    "HRAConfig": {"r": 2, "init_weights": False},
    "OFTConfig": {"r": 0, "oft_block_size": 4, "init_weights": False},
    "LoraConfig": {"init_lora_weights": False},
}


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(16, 16)
        self.lin1 = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.relu(self.lin0(x)))


def adapted(lib, name: str, perturb: bool):
    torch.manual_seed(0)
    model = lib.get_peft_model(
        TwoLayers(), getattr(lib, name)(target_modules=["lin0", "lin1"], **CONFIGS[name])
    )
    if perturb:
        generator = torch.Generator().manual_seed(1)
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.data = 0.1 * torch.randn(param.shape, generator=generator)
    return model


def round_trip(lib, name: str, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(output before sharding, output of the sharded model, output of a fresh model loaded from its state,
    the base model's output)."""
    model = adapted(lib, name, perturb=True)
    before = model(x).detach()
    with model.disable_adapter():
        base = model(x).detach()
    for layer in (model.base_model.model.lin0, model.base_model.model.lin1, model):
        fully_shard(layer)
    sharded = model(x).detach()
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    fresh = adapted(lib, name, perturb=False)
    lib.set_peft_model_state_dict(fresh, lib.get_peft_model_state_dict(model, state_dict=state))
    return before, sharded, fresh(x).detach(), base


def main() -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1")
    dist.init_process_group("gloo")
    import peft

    import peftkit

    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    for name in CONFIGS:
        theirs, ours = round_trip(peft, name, x), round_trip(peftkit, name, x)
        print(
            json.dumps(
                {
                    "method": name,
                    "adapter_effect": (ours[0] - ours[3]).abs().max().item(),
                    "sharded_vs_before": (ours[1] - ours[0]).abs().max().item(),
                    "reloaded_vs_before": (ours[2] - ours[0]).abs().max().item(),
                    "reloaded_vs_peft": (ours[2] - theirs[2]).abs().max().item(),
                }
            ),
            flush=True,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
