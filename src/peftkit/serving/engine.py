"""`BatchEngine`: continuous batching at the token level, across adapters.

One thread owns the model. Requests (token ids, an adapter name, sampling settings) wait in a queue; at
every step the engine
1. admits waiting requests while the batch has room and the adapter store can hold the batch's adapters,
   and runs their prompts through the model together (left-padded, each with its own adapter via
   `adapter_names=`), which gives each its first token;
2. joins their key/value rows to the running batch (kv_cache.py) and runs one decoding forward for every
   running request at once, again each with its own adapter;
3. hands each request its new token, and drops the rows that are finished (length, end-of-sequence
   token, or cancelled by the caller).

Positions come from each row's own attention mask, and padding is masked out, so every request gets what
it would get alone (greedy tokens equal; logits equal up to matmul summation order). Requests that fail
(an adapter that cannot load) get an error event; the engine keeps serving the others.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..tuners._mixed_batch import BASE_ADAPTER_NAME, MixedBatch
from ..utils.cache_names import cache_argument_or_default, get_cache
from . import kv_cache
from .sampling import SamplingSettings, next_token
from .store import AdapterStore, AdapterStoreError


@dataclass
class GenerationRequest:
    """One request: prompt token ids, the adapter to use (BASE_ADAPTER_NAME: none), limits, sampling."""

    prompt_ids: list[int]
    adapter: str = BASE_ADAPTER_NAME
    max_new_tokens: int = 16
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    stop_token_ids: frozenset[int] = frozenset()


class RequestHandle:
    """What the caller keeps: events arrive as ("token", id), then ("done", reason) with reason "length",
    "stop" (a stop token) or "cancelled", or ("error", message)."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop generating for this request (its row leaves the batch at the next step)."""
        self.cancelled.set()

    def stream(self, timeout: float | None = None) -> Iterator[tuple[str, Any]]:
        """The events until the last one ("done" or "error")."""
        while True:
            kind, value = self.events.get(timeout=timeout)
            yield kind, value
            if kind != "token":
                return


@dataclass
class _Row:
    handle: RequestHandle
    generated: list[int] = field(default_factory=list)
    finished: str | None = None

    @property
    def request(self) -> GenerationRequest:
        return self.handle.request


class BatchEngine:
    """Continuous batching of generation requests over one model (a PeftModel, or a plain causal LM when
    only the base is served).

    Args:
        model: the model, in eval mode.
        store: where adapters come from (None: the model's own adapters only).
        max_batch: the most requests decoded together.
        max_context: the most tokens (prompt + new) a request may span.
        pad_token_id: the id prompts are padded with (hidden by the attention mask).
    """

    def __init__(
        self,
        model: Any,
        store: AdapterStore | None = None,
        max_batch: int = 32,
        max_context: int = 2048,
        pad_token_id: int = 0,
    ) -> None:
        if max_batch <= 0:
            raise ValueError(f"max_batch must be positive, got {max_batch}.")
        self.model = model
        self.store = store
        self.max_batch = max_batch
        self.max_context = max_context
        self.pad_token_id = pad_token_id
        self.device = next(model.parameters()).device
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._cache_name = cache_argument_or_default(base)  # `cache` or `past_key_values`, as it declares
        self._waiting: queue.Queue[RequestHandle | None] = queue.Queue()
        self._front: deque[RequestHandle] = deque()  # taken from the queue, to be admitted first
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # (rows, time): 1 where a row has a real token
        self._admitting: list[_Row] = []  # admitted, not yet running (their prefill may fail)
        # the running rows' adapters as one routing, kept across decoding steps while neither the rows
        # nor the store's adapters change: each layer then checks its stacked factors once per batch,
        # not at every step (as within one `generate` call). `_rows` is replaced, never changed in
        # place, so the list it was made for tells whether the rows changed; a store call drops it.
        self._routing: MixedBatch | None = None
        self._routed_rows: list[_Row] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.steps = 0  # decoding forwards run (for tests and logs)
        self.largest_batch = 0

    # ----- the caller's side -----
    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue `request`; raises ValueError for one that cannot run (empty prompt, too long, bad limits)."""
        if not request.prompt_ids:
            raise ValueError("The prompt is empty: send at least one token.")
        if request.max_new_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {request.max_new_tokens}.")
        total = len(request.prompt_ids) + request.max_new_tokens
        if total > self.max_context:
            raise ValueError(
                f"The prompt ({len(request.prompt_ids)} tokens) plus max_tokens ({request.max_new_tokens}) is "
                f"{total} tokens, more than this server's context of {self.max_context}; shorten the prompt or "
                "lower max_tokens."
            )
        if request.adapter not in self.adapter_names():
            raise LookupError(
                f"Unknown adapter '{request.adapter}'; this server has: {', '.join(self.adapter_names())}."
            )
        handle = RequestHandle(request)
        self._waiting.put(handle)
        return handle

    def adapter_names(self) -> list[str]:
        """What a request may name: BASE_ADAPTER_NAME, the model's adapters and the store's."""
        names = set(getattr(self.model, "peft_config", {}))
        if self.store is not None:
            names |= set(self.store.names)
        return [BASE_ADAPTER_NAME, *sorted(names)]

    def start(self) -> None:
        """Run the engine in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="peftkit-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._waiting.put(None)  # wake the loop
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ----- the loop -----
    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._rows:
                first = self._waiting.get()  # idle: sleep until a request arrives
                if first is None:
                    continue
                self._front.append(first)
            try:
                self.step()
            except Exception as err:  # a broken batch must not stop the server: fail its requests
                for row in [*self._rows, *self._admitting]:
                    row.handle.events.put(("error", f"generation failed: {type(err).__name__}: {err}"))
                self._rows, self._cache, self._mask, self._admitting = [], None, None, []

    def step(self) -> None:
        """Admit what fits, then one decoding step for every running request."""
        admitted = self._admitting = self._admit()
        if admitted:
            self._prefill(admitted)
        self._admitting = []
        self._drop_finished()
        if self._rows:
            self._decode()
            self._drop_finished()

    def _admit(self) -> list[_Row]:
        admitted: list[_Row] = []
        held: list[RequestHandle] = []
        while len(self._rows) + len(admitted) < self.max_batch:
            try:
                handle = self._front.popleft() if self._front else self._waiting.get_nowait()
            except queue.Empty:
                break
            if handle is None or handle.cancelled.is_set():
                if handle is not None:
                    handle.events.put(("done", "cancelled"))
                continue
            problem = self._load_adapters([*self._rows, *admitted], handle)
            if problem is not None:
                if self._rows or admitted:  # room frees up as running requests finish: wait for it
                    held.append(handle)
                else:  # alone it cannot run: fail it instead of waiting forever
                    handle.events.put(("error", problem))
                break
            admitted.append(_Row(handle))
        self._front.extendleft(reversed(held))  # first in line again, in order
        return admitted

    def _load_adapters(self, rows: list[_Row], handle: RequestHandle) -> str | None:
        """Load the adapters the batch would need with this request; the reason when the store cannot."""
        if self.store is None:
            return None
        self._routing = None  # the store may load or evict adapters: layers check their factors again
        names = {row.request.adapter for row in rows} | {handle.request.adapter}
        try:
            self.store.prepare(names - {BASE_ADAPTER_NAME})
        except AdapterStoreError as err:
            return str(err)
        return None

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, names: list[str]
    ):
        kwargs: dict[str, Any] = {}
        if hasattr(self.model, "peft_config"):  # a plain model serves the base only
            kwargs["adapter_names"] = names
        with torch.inference_mode():
            return self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
                **{self._cache_name: cache},
                **kwargs,
            )

    def _prefill(self, rows: list[_Row]) -> None:
        width = max(len(row.request.prompt_ids) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding: every prompt ends where generation starts
            prompt = row.request.prompt_ids
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(ids, mask, positions, None, [row.request.adapter for row in rows])
        cache = get_cache(out)
        kv_cache.check_supported(cache)
        kv_cache.zero_padding(cache, mask)
        self._emit(rows, out.logits[:, -1])
        if self._cache is None:
            self._cache, self._mask, self._rows = cache, mask, rows
            return
        gap = mask.shape[1] - self._mask.shape[1]
        kv_cache.append_rows(self._cache, cache)
        old, new = self._mask, mask
        if gap > 0:
            old = torch.cat([old.new_zeros(old.shape[0], gap), old], dim=1)
        elif gap < 0:
            new = torch.cat([new.new_zeros(new.shape[0], -gap), new], dim=1)
        self._mask = torch.cat([old, new], dim=0)
        self._rows = self._rows + rows

    def _decode(self) -> None:
        ids = torch.tensor([[row.generated[-1]] for row in self._rows], dtype=torch.long)
        positions = self._mask.sum(dim=1, keepdim=True)  # each row's own next position
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(self._rows), 1)], dim=1)
        if self._routing is None or self._routed_rows is not self._rows:
            self._routing = MixedBatch(row.request.adapter for row in self._rows)
            self._routed_rows = self._rows
        out = self._forward(ids, self._mask, positions, self._cache, self._routing)
        self._cache = get_cache(out)
        self.steps += 1
        self.largest_batch = max(self.largest_batch, len(self._rows))
        self._emit(self._rows, out.logits[:, -1])

    def _emit(self, rows: list[_Row], logits: torch.Tensor) -> None:
        for row, row_logits in zip(rows, logits):
            if row.handle.cancelled.is_set():
                row.finished = "cancelled"
                continue
            token = next_token(row_logits, row.request.sampling)
            row.generated.append(token)
            row.handle.events.put(("token", token))
            if token in row.request.stop_token_ids:
                row.finished = "stop"
            elif len(row.generated) >= row.request.max_new_tokens:
                row.finished = "length"

    def _drop_finished(self) -> None:
        for row in self._rows:
            if row.handle.cancelled.is_set() and row.finished is None:
                row.finished = "cancelled"
        keep = [i for i, row in enumerate(self._rows) if row.finished is None]
        for row in self._rows:
            if row.finished is not None:
                row.handle.events.put(("done", row.finished))
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep)
        kv_cache.keep_rows(self._cache, index.to(self.device))
        self._mask = self._mask.index_select(0, index)
        self._rows = [self._rows[i] for i in keep]
        leading = int((self._mask.cumsum(dim=1) == 0).all(dim=0).sum())  # padding every row starts with
        if leading:
            kv_cache.cut_left(self._cache, leading)
            self._mask = self._mask[:, leading:]
