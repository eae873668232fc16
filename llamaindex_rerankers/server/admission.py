"""Admission by work, batch turns and cancellation for ``/v1/retrieve`` and ``/v1/rerank``.

A request is admitted by the wait it would face, not by how many requests there are: each
request's work is estimated in seconds (tokens to score times the measured seconds per token,
plus the measured retrieval time), and a request whose estimated wait exceeds
``--max-queue-wait`` is refused at once (503) with a ``Retry-After`` computed from the work
ahead of it. Admitted requests compute their forward passes in FIFO *turns*, one batch per turn
(``--pool-threads`` batches at once), so a 1,000-document request's batches interleave with a
4-document request's one batch instead of making it wait for the whole large request (the wait
model is therefore processor sharing: a request of ``s`` seconds waits about
``sum(min(remaining_i, s))`` for the others). A request whose client left or whose time ran out
is cancelled: its call stops at the next batch and its slot is freed when its thread stops.

Example:
    >>> gate = WorkGate("search", limit=2, queue=0, max_wait=2.0, slots=1)
    >>> gate.estimate_rerank(40, [400, 400]) > 0
    True
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from llamaindex_rerankers.batch_hooks import CallCancelled, batch_hook
from llamaindex_rerankers.server.limits import Overloaded

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Characters per model token assumed when estimating a request before tokenizing it (English
#: text with a BERT WordPiece vocabulary is 4-5; fewer overestimates, which is the safe side).
CHARS_PER_TOKEN = 4.0
#: Tokens a pair is cut to when the reranker's own limit is unknown (MiniLM's 512).
DEFAULT_PAIR_TOKENS = 512
#: Weight of the newest measurement in the moving averages.
EWMA_ALPHA = 0.2
#: Longest Retry-After sent, in seconds.
MAX_RETRY_AFTER = 3600


class Refused(Overloaded):
    """The request would wait longer than the bound (or every place is taken): answer 503 at
    once with ``Retry-After: retry_after``."""

    def __init__(self, gate: str, retry_after: int, wait: float) -> None:
        super().__init__(gate)
        self.retry_after = retry_after
        self.wait = wait


class _Ewma:
    """An exponentially weighted moving average with a prior."""

    def __init__(self, prior: float) -> None:
        self.value = prior
        self.samples = 0

    def add(self, x: float) -> None:
        # The first measurement replaces the prior: the prior is only a guess.
        self.value = x if self.samples == 0 else self.value + EWMA_ALPHA * (x - self.value)
        self.samples += 1


class CostModel:
    """Measured costs, updated by every request (thread-safe).

    Attributes:
        seconds_per_token: one model position of a forward pass (EWMA over batches).
        retrieval_seconds: query embedding and vector search (EWMA over retrievals).
        tokens_per_candidate: scored tokens per retrieved candidate (EWMA over retrieves).
        overhead_seconds: per request, outside turns (tokenizing, the injection detector,
            assembling the nodes), per kind of request.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Priors measured on a 2-core machine with MiniLM-L6 (replaced by the first measurement).
        self.seconds_per_token = _Ewma(4e-5)
        self.retrieval_seconds = _Ewma(0.03)
        self.tokens_per_candidate = _Ewma(200.0)
        self.overhead_seconds = {"rerank": _Ewma(0.005), "retrieve": _Ewma(0.03)}

    def observe(self, ewma: _Ewma, value: float) -> None:
        with self._lock:
            ewma.add(value)


class Turns:
    """FIFO turns for forward passes: at most ``slots`` computing at once, each in arrival order
    of its turn. A call takes one turn per batch, so long calls go round robin with short ones."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._busy = 0

    @property
    def waiting(self) -> int:
        """Batches waiting for a turn."""
        return len(self._queue)

    def acquire(self, cancelled: threading.Event) -> None:
        """Wait for a turn.

        Raises:
            CallCancelled: ``cancelled`` was set while waiting (the place is given up).
        """
        me = object()
        with self._cond:
            self._queue.append(me)
            try:
                while self._queue[0] is not me or self._busy >= self.slots:
                    if cancelled.is_set():
                        raise CallCancelled("the request was cancelled while waiting")
                    # Woken by every release; the timeout only notices a cancellation.
                    self._cond.wait(0.05)
            except BaseException:
                self._queue.remove(me)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self._busy += 1
            self._cond.notify_all()  # the next in line may take a free slot too

    def release(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def turn(self, cancelled: threading.Event) -> Iterator[None]:
        self.acquire(cancelled)
        try:
            yield
        finally:
            self.release()


class Job:
    """One admitted request: its estimate, its progress and its cancellation (per request,
    never on the reranker). It is the :class:`~llamaindex_rerankers.batch_hooks.BatchHook` of
    its rerank call: before each batch it stops if cancelled, then waits for its turn."""

    def __init__(self, gate: WorkGate, kind: str, estimate: float, candidates: int = 0) -> None:
        self.gate = gate
        self.kind = kind
        self.estimate = estimate
        self.candidates = candidates
        self.cancelled = threading.Event()
        #: Seconds of turns used so far (forward passes, retrieval).
        self.consumed = 0.0
        self.tokens = 0
        self._turn_wait = 0.0
        self._batch_started = 0.0
        self._batch_tokens = 0
        self._holds = 1  # the request itself; one more per thread running its work
        #: Holds one of the gate's running places (see :meth:`WorkGate.start`).
        self.placed = False
        self._loop = asyncio.get_running_loop()

    @property
    def remaining(self) -> float:
        """Estimated seconds of work left (a tenth of the estimate once it ran over)."""
        return max(self.estimate - self.consumed, 0.1 * self.estimate)

    def cancel(self) -> None:
        """Stop the work at its next batch (or turn); the slot is freed when it has stopped."""
        self.cancelled.set()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise CallCancelled("the request was cancelled (timeout, client gone or shutdown)")

    # -- the batch hook (worker threads) ----------------------------------------------------

    def before_batch(self, pairs: int, tokens: int) -> None:
        self.check()
        waited = time.perf_counter()
        self.gate.turns.acquire(self.cancelled)
        self._batch_started = time.perf_counter()
        self._turn_wait += self._batch_started - waited
        self._batch_tokens = tokens

    def after_batch(self) -> None:
        seconds = time.perf_counter() - self._batch_started
        self.gate.turns.release()
        self.consumed += seconds
        self.tokens += self._batch_tokens
        model = self.gate.model
        if self._batch_tokens:
            model.observe(model.seconds_per_token, seconds / self._batch_tokens)

    def turn(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (the retrieval: query embedding and vector search) in one turn."""
        self.check()
        waited = time.perf_counter()
        with self.gate.turns.turn(self.cancelled):
            started = time.perf_counter()
            self._turn_wait += started - waited
            try:
                return fn()
            finally:
                seconds = time.perf_counter() - started
                self.consumed += seconds
                self.gate.model.observe(self.gate.model.retrieval_seconds, seconds)

    # -- running work in threads (event loop) -----------------------------------------------

    def run(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` in ``pool`` with this job as the batch hook; the job holds its slot
        until the thread is done, even when the request was answered (timeout) before."""
        self._holds += 1
        future: Future[T] = pool.submit(self._in_thread, fn, *args)
        future.add_done_callback(lambda _: self._drop_threadsafe())
        return asyncio.wrap_future(future)

    def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        self.check()
        started = time.perf_counter()
        before = self.consumed + self._turn_wait
        try:
            with batch_hook(self):
                return fn(*args)
        finally:
            outside = time.perf_counter() - started - (self.consumed + self._turn_wait - before)
            model = self.gate.model
            if not self.cancelled.is_set():
                model.observe(model.overhead_seconds[self.kind], max(outside, 0.0))
                if self.kind == "retrieve" and self.candidates and self.tokens:
                    model.observe(model.tokens_per_candidate, self.tokens / self.candidates)

    def finish(self) -> None:
        """The request is done (answered or abandoned): cancel what still runs; the slot is
        freed once no thread of this job runs any more."""
        self.cancel()
        self._drop()

    def _drop_threadsafe(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the process is exiting
            self._loop.call_soon_threadsafe(self._drop)

    def _drop(self) -> None:
        self._holds -= 1
        if self._holds == 0:
            self.gate._release(self)


class WorkGate:
    """Admission of ``/v1/retrieve`` and ``/v1/rerank`` by the wait a request would face.

    A request is refused at once (:class:`Refused`, 503 with Retry-After) when its estimated
    wait exceeds ``max_wait`` seconds, or when ``limit + queue`` requests are already admitted
    (a bound on memory whatever the estimates say). Admitted requests run ``limit`` at once
    (the others wait in FIFO order), and their forward passes take :class:`Turns`.

    Args:
        name: for errors and metrics.
        limit: requests running at once.
        queue: admitted requests allowed to wait for one of the ``limit`` places.
        max_wait: longest estimated wait admitted, in seconds.
        slots: forward passes (batches) computed at once.
    """

    def __init__(self, name: str, *, limit: int, queue: int, max_wait: float, slots: int) -> None:
        if limit < 1 or queue < 0 or slots < 1 or max_wait <= 0:
            raise ValueError(
                f"limit and slots must be >= 1, queue >= 0 and max_wait > 0; got {limit}, "
                f"{slots}, {queue} and {max_wait}"
            )
        self.name = name
        self.limit = limit
        self.queue = queue
        self.max_wait = max_wait
        self.turns = Turns(slots)
        self.model = CostModel()
        #: Tokens a (query, passage) pair is cut to (the reranker's max_length once loaded).
        self.pair_tokens = DEFAULT_PAIR_TOKENS
        self.jobs: set[Job] = set()
        self.running = 0
        self._semaphore: asyncio.Semaphore | None = None

    @property
    def active(self) -> int:
        """Requests admitted and not yet finished (running or waiting), for the metrics."""
        return len(self.jobs)

    @property
    def waiting(self) -> int:
        """Requests admitted and waiting for a place, plus batches waiting for a turn."""
        return len(self.jobs) - self.running + self.turns.waiting

    # -- estimates --------------------------------------------------------------------------

    def _pair_tokens(self, query_chars: int, doc_chars: int) -> int:
        return min(math.ceil((query_chars + doc_chars) / CHARS_PER_TOKEN) + 3, self.pair_tokens)

    def estimate_rerank(self, query_chars: int, doc_chars: list[int]) -> float:
        """Seconds of work of reranking documents of these lengths (in characters)."""
        tokens = sum(self._pair_tokens(query_chars, d) for d in doc_chars)
        m = self.model
        return m.overhead_seconds["rerank"].value + tokens * m.seconds_per_token.value

    def estimate_retrieve(self, top_k: int, *, reranks: bool = True) -> float:
        """Seconds of work of retrieving (and reranking) ``top_k`` candidates."""
        m = self.model
        seconds = m.retrieval_seconds.value + m.overhead_seconds["retrieve"].value
        if reranks:
            seconds += top_k * m.tokens_per_candidate.value * m.seconds_per_token.value
        return seconds

    def wait_for(self, seconds: float) -> float:
        """The estimated wait of a request of ``seconds`` of work: under batch turns, each
        admitted request delays it by at most its own remaining work, and by at most as much as
        the new request does itself (processor sharing), spread over the turn slots."""
        return sum(min(j.remaining, seconds) for j in self.jobs) / self.turns.slots

    # -- admission --------------------------------------------------------------------------

    def admit(self, kind: str, estimate: float, candidates: int = 0) -> Job:
        """Admit a request of ``estimate`` seconds of work, or refuse it at once.

        Raises:
            Refused: the estimated wait exceeds ``max_wait``, or every place is taken; its
                ``retry_after`` is the time for the work ahead to drain below the bound.
        """
        wait = self.wait_for(estimate)
        if wait > self.max_wait:
            # The work ahead drains at ``slots`` seconds per second; what exceeds the bound
            # must drain first.
            raise Refused(self.name, _seconds(wait - self.max_wait), wait)
        if len(self.jobs) >= self.limit + self.queue:
            backlog = sum(j.remaining for j in self.jobs) / self.turns.slots
            # Every place taken: one frees, on average, after backlog / places seconds.
            raise Refused(self.name, _seconds(backlog / max(len(self.jobs), 1)), wait)
        job = Job(self, kind, estimate, candidates)
        self.jobs.add(job)
        return job

    async def start(self, job: Job) -> None:
        """Wait for one of the ``limit`` places (FIFO); release with ``job.finish()``."""
        if self._semaphore is None:  # created on the loop that serves the requests
            self._semaphore = asyncio.Semaphore(self.limit)
        await self._semaphore.acquire()
        # Given back with the job's last hold (its request and any thread still running).
        self.running += 1
        job.placed = True

    def _release(self, job: Job) -> None:
        self.jobs.discard(job)
        if job.placed:
            job.placed = False
            self.running -= 1
            assert self._semaphore is not None
            self._semaphore.release()

    def cancel_all(self) -> None:
        """Cancel every admitted request (shutdown): each stops at its next batch."""
        for job in list(self.jobs):
            job.cancel()


def _seconds(value: float) -> int:
    return int(min(max(math.ceil(value), 1), MAX_RETRY_AFTER))
