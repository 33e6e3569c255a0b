"""Work handed off the request path: a bounded queue drained by a thread, the work itself in this or a child process.

The live-traffic profiler and the shadow scorer share both parts:

- ``BackgroundQueue``: request threads queue items in O(1) (beyond ``max_pending_rows`` they are
  dropped and counted, never grow memory); a background thread hands what is queued to the
  subclass's ``_drain`` every ``flush_seconds`` (sooner when ``flush_rows`` are waiting); ``stop()``
  hands over the rest and closes the worker.
- A ``Worker`` that runs a ``Handler`` on each message ``_drain`` sends: ``InlineWorker`` in the
  calling thread, ``ChildWorker`` in a spawned child process over a pipe. There the calling thread
  waits for the reply without the GIL, so the handler's Python work (whylogs, a second model, JSON)
  does not compete with the request path for it; only pickling the message does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")


class BackgroundQueue(Generic[Item]):
    """A bounded, thread-safe queue whose background thread drains it into a ``Worker`` (subclasses say how)."""

    def __init__(
        self,
        worker: Worker,
        *,
        name: str,
        flush_seconds: float,
        max_pending_rows: int,
        flush_rows: int | None = None,
    ) -> None:
        if flush_seconds <= 0 or max_pending_rows <= 0 or (flush_rows is not None and flush_rows <= 0):
            raise ValueError("flush_seconds, flush_rows and max_pending_rows must be positive")
        self._worker = worker
        self.name = name
        self.flush_seconds = float(flush_seconds)
        self.max_pending_rows = max_pending_rows
        self.flush_rows = flush_rows
        self.dropped_rows = 0  # refused because the queue was full (the drain fell behind)
        self._lock = threading.Lock()
        self._items: list[Item] = []
        self._rows = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._drain_lock = threading.Lock()  # one drainer at a time: the thread, or stop() without a thread
        self._thread: threading.Thread | None = None

    def _drain(self, items: list[Item], final: bool) -> None:
        """Hand ``items`` (possibly none) to the worker; ``final`` at stop. Counts its own failures."""
        raise NotImplementedError

    def _put(self, item: Item, rows: int = 1) -> bool:
        """Queue an item of ``rows`` rows; False (and counted in ``dropped_rows``) when it would overfill the queue."""
        with self._lock:
            if self._rows + rows > self.max_pending_rows:
                self.dropped_rows += rows
                return False
            self._items.append(item)
            self._rows += rows
            if self.flush_rows is not None and self._rows >= self.flush_rows:
                self._wake.set()
        return True

    @property
    def pending_rows(self) -> int:
        """Rows queued and not yet handed to the worker."""
        with self._lock:
            return self._rows

    @property
    def process_id(self) -> int | None:
        """The worker's child process id while it runs; None for an inline worker."""
        return self._worker.pid if isinstance(self._worker, ChildWorker) else None

    def drain(self, final: bool = False) -> None:
        """Hand every queued item to the worker now and wait for it (``final``: the last time, at stop)."""
        with self._drain_lock:
            with self._lock:
                items, self._items, self._rows = self._items, [], 0
            self._drain(items, final)

    def start(self) -> None:
        """Start the worker's process (if any) and the background thread (idempotent)."""
        try:
            self._worker.open()
        except WorkerLost:  # the service must start without it: the next drain tries again
            log.exception("%s: could not start its process", self.name)
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Drain everything queued (a final drain), stop the thread, close the worker; True if done in time."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s did not finish within %.1f s; %d rows pending", self.name, timeout, self.pending_rows)
                return False
            self._thread = None
        self.drain(final=True)  # no thread, or items put after it finished
        self._worker.close()
        return True

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.drain()
            except Exception:  # the thread must survive a bad batch; _drain counts its rows
                log.exception("%s: draining failed", self.name)
        try:
            self.drain(final=True)
        except Exception:
            log.exception("%s: the final drain failed", self.name)


class Handler(Protocol):
    """Does the handed-off work: one reply per message; ``close`` at the end (flush, fsync)."""

    def handle(self, message: Any) -> Any: ...

    def close(self) -> None: ...


class Worker(Protocol):
    """Runs a Handler somewhere; ``call`` raises what the handler raised (``WorkerLost`` if the worker died)."""

    def open(self) -> None: ...

    def call(self, message: Any) -> Any: ...

    def close(self) -> None: ...


class WorkerLost(RuntimeError):
    """The child process died: whatever its handler held (open windows, unwritten records) is gone."""


class InlineWorker:
    """The handler in the calling thread."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def open(self) -> None:
        return None

    def call(self, message: Any) -> Any:
        return self.handler.handle(message)

    def close(self) -> None:
        self.handler.close()


class ChildWorker:
    """The handler in a spawned child process (built there by ``factory``), driven by synchronous messages over a pipe.

    The child ignores SIGTERM and SIGINT, which a service's process group receives on shutdown, so
    the last messages still reach it; it closes its handler and exits when told to (``close``), or
    exits when the pipe closes (the parent died). A child found dead raises ``WorkerLost`` once and is
    replaced at the next call. ``factory`` and every message must pickle (spawn, not fork: the
    parent has threads).
    """

    def __init__(self, factory: Callable[[], Handler], name: str, start_timeout: float = 120.0) -> None:
        self.factory = factory
        self.name = name
        self.start_timeout = start_timeout
        self._process: Any = None
        self._connection: Any = None

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def open(self) -> None:
        """Start the child and wait until its handler is built, unless it runs; WorkerLost if it cannot start."""
        if self.pid is not None:
            return
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # never fork a process that has threads
        parent, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, self.factory), name=self.name, daemon=True)
        self._process.start()
        child.close()
        self._connection = parent
        # Wait until the child ignores SIGTERM and has its handler: a shutdown must not find it starting.
        try:
            reply = parent.recv() if parent.poll(self.start_timeout) else ("error", "no answer")
        except (EOFError, OSError) as exc:
            reply = ("error", f"it exited ({type(exc).__name__})")
        if reply[0] != "ready":
            self._process.kill()
            self._process.join(5)
            self._process = self._connection = None
            raise WorkerLost(f"the {self.name} process did not start: {reply[1]}")

    def call(self, message: Any) -> Any:
        """The handler's reply to ``message``; RuntimeError with its message if it raised."""
        if self._process is not None and not self._process.is_alive():
            self._process = self._connection = None
            raise WorkerLost(f"the {self.name} process died")
        self.open()
        try:
            self._connection.send(("call", message))
            status, reply = self._connection.recv()  # waits without the GIL while the child works
        except (EOFError, OSError) as exc:
            self._process = self._connection = None
            raise WorkerLost(f"the {self.name} process died ({type(exc).__name__})") from exc
        if status != "ok":
            raise RuntimeError(f"the {self.name} process failed: {reply}")
        return reply

    def close(self) -> None:
        """Close the handler in the child and let it exit (idempotent)."""
        if self._process is None:
            return
        try:
            self._connection.send(("close", None))
            status, reply = self._connection.recv()
            if status != "ok":
                log.error("the %s process could not close: %s", self.name, reply)
        except (EOFError, OSError):
            log.error("the %s process died before it was closed", self.name)
        self._process.join(10)
        self._connection.close()
        self._process = self._connection = None


def _serve(connection: Any, factory: Callable[[], Handler]) -> None:
    """The child of ``ChildWorker``: answers each message with ("ok", reply) or ("error", message)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the parent decides when to stop (after the last message)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        handler = factory()
    except Exception as exc:
        connection.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    connection.send(("ready", None))
    while True:
        try:
            kind, message = connection.recv()
        except (EOFError, OSError):
            return
        try:
            if kind == "close":
                handler.close()
                reply: tuple[str, Any] = ("ok", None)
            else:
                reply = ("ok", handler.handle(message))
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}")
        connection.send(reply)
        if kind == "close":
            return
