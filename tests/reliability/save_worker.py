"""A fork server for the fault tests: it imports torch and peftkit once, builds the adapter versions, then
forks real processes that save (or load) in a loop until the test kills them with SIGKILL.

Run as `python save_worker.py`; commands on stdin, one answer line each on stdout:
  save FOLDER START COUNT  fork a writer: saves versions START, START+1, ... (mod VERSIONS) COUNT times
                           (COUNT 0: until killed); answers "pid N". Before and after each save it
                           appends "b<version> " and "e<version> " to `FOLDER.events.<pid>`.
  read FOLDER              fork a reader: loads each adapter of FOLDER in a loop, appending "r " per
                           load that is one whole save to `FOLDER.reads`, else a line to `FOLDER.errors`;
                           answers "pid N"
  reap PID           wait for a forked process; answers "status N" (its raw wait status)
  quit               exit

Version k of the adapters: both adapters have lora_alpha = 8 + k; every tensor of "default" holds k + 1
and every tensor of "other" holds -(k + 1). A load that mixes a config of one save with weights of
another, or one adapter of one save with the other of another, is therefore visible (`version_of`).
"""

from __future__ import annotations

import os
import sys
import traceback

import torch
from torch import nn

import peftkit

VERSIONS = 3


def base_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))


def adapter_version(k: int) -> peftkit.PeftModel:
    model = peftkit.get_peft_model(
        base_model(), peftkit.LoraConfig(r=2, lora_alpha=8 + k, target_modules=["0"])
    )
    model.add_adapter("other", peftkit.LoraConfig(r=2, lora_alpha=8 + k, target_modules=["2"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".default." in name:
                param.fill_(k + 1)
            elif ".other." in name:
                param.fill_(-(k + 1))
    return model


def version_of(model: peftkit.PeftModel, adapter: str) -> int:
    """The version a loaded adapter is, or ValueError naming how it is a mix."""
    alpha = model.peft_config[adapter].lora_alpha
    values = {p.item() for n, p in model.named_parameters() if f".{adapter}." in n for p in p.flatten()}
    sign = 1 if adapter == "default" else -1
    if values != {sign * (alpha - 8 + 1)}:
        raise ValueError(
            f"adapter {adapter!r}: config says version {alpha - 8}, weights hold {sorted(values)}"
        )
    return alpha - 8


def load_versions(folder: str) -> tuple[int, int]:
    """Load the two adapters of `folder` with peftkit (one load each): their versions, or ValueError when
    one load mixed the config of one save with the weights of another."""
    model = peftkit.PeftModel.from_pretrained(base_model(), folder)
    model.load_adapter(folder, "other", subfolder="other")
    return version_of(model, "default"), version_of(model, "other")


def load_version(folder: str) -> int:
    """The version of the folder no one is saving into, or ValueError when its two adapters (or an
    adapter's config and weights) come from different saves."""
    default, other = load_versions(folder)
    if default != other:
        raise ValueError(f"the folder mixes two saves: 'default' is version {default}, 'other' {other}")
    return default


def _append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _writer(folder: str, models: list, start: int, count: int) -> None:
    events = f"{folder}.events.{os.getpid()}"
    i = 0
    while count == 0 or i < count:
        k = (start + i) % VERSIONS
        _append(events, f"b{k} ")
        models[k].save_pretrained(folder)
        _append(events, f"e{k} ")
        i += 1


def _reader(folder: str) -> None:
    while True:
        try:
            load_versions(folder)  # a save may land between the two loads, not inside one
        except Exception:
            _append(f"{folder}.errors", "error " + traceback.format_exc().replace("\n", " | ") + "\n")
        else:
            _append(f"{folder}.reads", "r ")


def _fork(run, *args) -> int:
    pid = os.fork()
    if pid == 0:  # the child never returns into the server loop
        code = 0
        try:
            run(*args)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def main() -> None:
    torch.set_num_threads(1)  # before any tensor op: forked children must not inherit a thread pool
    models = [adapter_version(k) for k in range(VERSIONS)]
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "save":
            print(f"pid {_fork(_writer, args[0], models, int(args[1]), int(args[2]))}", flush=True)
        elif command == "read":
            print(f"pid {_fork(_reader, args[0])}", flush=True)
        elif command == "reap":
            print(f"status {os.waitpid(int(args[0]), 0)[1]}", flush=True)
        elif command == "quit":
            return


if __name__ == "__main__":
    main()
