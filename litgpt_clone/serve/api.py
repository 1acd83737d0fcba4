"""The inference worker of ``litgpt-clone serve``: a LitServe ``LitAPI`` whose loop feeds a continuous-batching
``Engine`` (serve/engine.py).

The HTTP side (serve/openai.py) puts jobs on LitServe's request queue as ``(consumer, uid, time, job)``. Every
iteration the loop takes the jobs it has room for (blocking only when idle), drops the generations whose clients
went away (their uids appear in the shared ``cancelled`` dict), runs one engine step and sends that step's events
to each HTTP process as one message, ``[(uid, event), ...]``, under the uid ``EVENTS`` (one message per step
instead of one per token and client).
"""

from __future__ import annotations

import sys
import time
from queue import Empty
from typing import Optional

import litserve as ls
from litserve.loops.base import _SENTINEL_VALUE, LitLoop
from litserve.utils import LitAPIStatus, LoopResponseType

from litgpt_clone.serve import STATS_INTERVAL_S

EVENTS = "litgpt-clone-events"
"""The uid of the per-step message that carries the events of many requests."""
CANCEL_CHECK_S = 0.02
"""How often a busy worker looks for generations to cancel."""
STALE_CANCEL_S = 60.0
"""Cancellations older than this are forgotten (their generation had ended already)."""


def queued(request_queue) -> int:
    """Jobs in LitServe's request queue that no worker has taken yet (the line beyond ``--max_batch_size``; with
    several workers, the line they share); 0 where the queue cannot tell."""
    try:
        return request_queue.qsize()
    except (NotImplementedError, OSError, EOFError):  # (macOS queues; a manager that is shutting down)
        return 0


class GenerationAPI(ls.LitAPI):
    """Loads the checkpoint (and LoRA adapters) on the device LitServe gives the worker and builds the engine."""

    def __init__(
        self, checkpoint_dir: str, precision: Optional[str] = None, quantize: Optional[str] = None,
        adapters: tuple[tuple[str, str], ...] = (), max_rows: int = 32, context: Optional[int] = None, spec=None,
        cuda_graphs: bool = True, stats_interval: float = STATS_INTERVAL_S,
    ) -> None:
        super().__init__(spec=spec, loop=EngineLoop(stats_interval))
        self.checkpoint_dir, self.precision, self.quantize = checkpoint_dir, precision, quantize
        self.adapters, self.max_rows, self.context, self.cuda_graphs = adapters, max_rows, context, cuda_graphs

    def setup(self, device: str) -> None:
        from litgpt_clone.api import LLM
        from litgpt_clone.serve.engine import Engine
        from litgpt_clone.serve.multi_lora import attach_adapters

        llm = LLM.load(self.checkpoint_dir, device=device, precision=self.precision, quantize=self.quantize)
        if self.context:
            llm.model.max_seq_length = self.context
        rows = attach_adapters(llm.model, self.adapters, self.max_rows) if self.adapters else None
        self.engine = Engine(llm.model, llm.tokenizer, self.max_rows, adapters=rows, cuda_graphs=self.cuda_graphs)
        started = time.perf_counter()
        if shapes := self.engine.capture():  # on a GPU: before the first request, so that none waits for a capture
            print(f"litgpt-clone serve: captured {shapes} CUDA graphs of the decode step in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

    def decode_request(self, request):
        return request

    def encode_response(self, output):
        yield output


class EngineLoop(LitLoop):
    """Requests in, engine steps, events out; see the module docstring. Every ``stats_interval`` seconds in which
    the engine worked, one log line says what it did (``engine.Stats``; 0: never)."""

    def __init__(self, stats_interval: float = STATS_INTERVAL_S) -> None:
        super().__init__()
        self.stats_interval = stats_interval

    def run(self, lit_api: GenerationAPI, device, worker_id, request_queue, transport, workers_setup_status, callback_runner) -> None:
        try:
            self.serve(lit_api, request_queue, transport)
        except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the server shuts the worker down, quietly
            pass

    def serve(self, lit_api: GenerationAPI, request_queue, transport) -> None:
        engine, cancelled = lit_api.engine, lit_api.spec.cancelled
        consumers: dict[str, int] = {}  # uid -> the HTTP process waiting for its events
        last_check = 0.0
        while True:
            while engine.free > 0:  # take new jobs; wait for one only when there is nothing to do
                try:
                    item = request_queue.get(timeout=1.0) if not engine.busy else request_queue.get_nowait()
                except Empty:
                    break
                if item == _SENTINEL_VALUE:
                    return
                consumer, uid, _, job = item
                consumers[uid] = consumer
                try:
                    engine.submit(uid, job)
                except ValueError as err:
                    del consumers[uid]
                    self.send(transport, {consumer: [(uid, {"error": str(err)})]})
            if self.stats_interval and time.perf_counter() - engine.stats.since >= self.stats_interval:
                if line := engine.take_stats(queued(request_queue)):
                    print(f"litgpt-clone serve: {line}", file=sys.stderr, flush=True)
            if not engine.busy:
                continue
            if time.monotonic() - last_check > CANCEL_CHECK_S:
                last_check = time.monotonic()
                self.cancel(engine, cancelled, consumers, request_queue)
            try:
                events = engine.step()
            except Exception as err:  # noqa: BLE001  (e.g. out of memory): fail the running requests, keep serving
                print(f"litgpt-clone serve: generation failed: {err!r}", file=sys.stderr, flush=True)
                events = [(uid, {"error": f"{type(err).__name__}: {err}"}) for uid in engine.reset()]
            by_consumer: dict[int, list] = {}
            for uid, event in events:
                by_consumer.setdefault(consumers[uid], []).append((uid, event))
                if "finish_reason" in event or "error" in event:
                    del consumers[uid]
            self.send(transport, by_consumer)

    def send(self, transport, by_consumer: dict[int, list]) -> None:
        for consumer, events in by_consumer.items():
            self.put_response(transport, consumer, EVENTS, events, LitAPIStatus.OK, LoopResponseType.STREAMING)

    @staticmethod
    def cancel(engine, cancelled, consumers: dict[str, int], request_queue) -> None:
        """Drop the generations whose clients went away; forget cancellations nobody here owns once stale."""
        marked = cancelled.items()
        if not marked:
            return
        now = time.time()
        for uid, when in marked:
            tokens = engine.cancel(uid)
            if tokens is not None:
                consumers.pop(uid, None)
                print(
                    f"litgpt-clone serve: request {uid[:8]} cancelled by its client after {tokens} tokens;"
                    f" {len(engine.rows)} generations running, {len(engine.waiting) + queued(request_queue)} waiting", file=sys.stderr, flush=True,
                )
            if tokens is not None or now - when > STALE_CANCEL_S:
                cancelled.pop(uid, None)
