"""Ctrl-C during training: finish the step, save a checkpoint, say how to resume.

The first Ctrl-C only asks the training loop to stop after the current optimizer step (an interrupt in
the middle of `optimizer.step()` would leave half-updated weights); a second one stops at once, without
saving. Outside the main thread (where Python delivers signals) nothing is installed.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any


class StopRequest:
    """Whether Ctrl-C asked the loop to stop; `message` is printed (above the progress bar) when it does."""

    def __init__(self, message: str) -> None:
        self.requested = False
        self.message = message

    def handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        from tqdm.auto import tqdm

        tqdm.write(self.message, file=sys.stderr)  # on its own line, not on the progress bar's


@contextlib.contextmanager
def stop_on_interrupt(message: str) -> Iterator[StopRequest]:
    """Install the Ctrl-C handler for the duration of the block; yields the `StopRequest` to poll."""
    stop = StopRequest(message)
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, stop.handle)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
