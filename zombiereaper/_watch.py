"""The engine's record of one watched child, from registration to its outcome.

A :class:`Watch` holds what the engine needs to settle one child: its pid, the *source* that
reads and reaps its exit through its owner's machinery (zombiereaper._owners), the *notice*
that names the process exactly (a :class:`~zombiereaper._process.ProcessRef`, or a sentinel
for a process that is not our child), the lock that every read, reap and signal of this child
takes, and the *sink* that its outcome is handed to. Its state only moves forward::

    watching --(exit read, under the lock)--> settling --(recorded, waiters woken)--> settled

The engine alone moves it (zombiereaper._engine, ``Engine._conclude``); handles such as
:class:`~zombiereaper.Child` only read it and wait on it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeAlias

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    from ._backends import BackendName
    from ._backends.sentinel import Sentinel
    from ._process import ProcessRef
    from ._status import ExitStatus


class Running:
    """The marker for "the child has not exited yet"."""

    def __repr__(self) -> str:
        return "RUNNING"


RUNNING: Final = Running()

#: Taken by waiters that make a Watch's Event, never by the reaping thread.
_events_lock = threading.Lock()


class Retry:
    """The marker for "not known yet: ask again soon".

    The child is gone but its owner has not stored its status yet (a join() between its
    waitpid and its assignment), or the owner's lock is busy. Nothing of ours may block the
    reaping thread waiting for either, so the engine asks again on its next sweep.
    """

    def __repr__(self) -> str:
        return "RETRY"


RETRY: Final = Retry()

Outcome: TypeAlias = "ExitStatus | Running | Retry | None"
"""What reading an exit finds: the status, RUNNING, RETRY, or None when a stranger took it."""

State = Literal["watching", "settling", "settled"]


@dataclass(frozen=True, slots=True)
class Known:
    """An outcome that the child's owner already had when the child was registered.

    Attributes:
        outcome: The status its owner's own wait recorded, or None when a stranger took it.
    """

    outcome: ExitStatus | None


class Notice(Protocol):
    """What names the process and tells when it may have ended: a ProcessRef or a sentinel."""

    @property
    def pid(self) -> int:
        """The process's pid."""
        ...

    @property
    def fileno(self) -> int | None:
        """A descriptor readable once the process has ended; None: there is none to poll."""
        ...

    def close(self) -> None:
        """Release what the notice holds."""
        ...


class Source(Protocol):
    """How one child's exit is read and reaped, and how it is signalled (zombiereaper._owners)."""

    @property
    def pid(self) -> int:
        """The child's pid."""
        ...

    def open(self, backend: BackendName) -> ProcessRef | Sentinel | Known:
        """Name the child exactly for ``backend``, or say that its owner has the status.

        Raises:
            ChildProcessError: The pid is not a child this source can account for.
        """
        ...

    def read_exit(self, notice: Notice, *, look_first: bool = True) -> Outcome:
        """Reap the child if it has exited (with the watch's lock held).

        ``look_first``: False where reaping at once costs no more than looking: the
        notice's descriptor said the process has exited (or been reaped by another waiter),
        or a sweep has no other child to ask about. A reap of a child that still runs
        answers RUNNING just the same.
        """
        ...

    def read_gone(self) -> ExitStatus | Retry | None:
        """The child is gone (reaped by another waiter): its owner's status, else None.

        RETRY while the owner may still be storing it.
        """
        ...

    def send_signal(self, notice: Notice, sig: int, group: bool) -> bool:
        """Signal the child, never a process that took its pid (with the watch's lock held)."""
        ...


class Sink(Protocol):
    """Where a watch's outcome goes: given at registration (a Reaper's record of its child)."""

    def record(self, watch: Watch) -> bool:
        """Store the outcome where readers look; no user code, no blocking (lock held).

        Returns:
            Whether :meth:`announce` has anything to tell (an ``on_exit`` to call, a lost
            status to log): a child nobody is told of costs the reaping thread nothing more.
        """
        ...

    def announce(self, watch: Watch) -> None:
        """Tell user code (``on_exit``); called on the reaping thread if record() asked."""
        ...


class Monitor(Protocol):
    """The backend part that notices a watch's exit (zombiereaper._backends)."""

    def remove(self, watch: Watch) -> None:
        """Stop noticing ``watch`` (with its lock held): it is settled."""
        ...


class Watch:
    """One child the engine watches; see the module docstring.

    Attributes:
        pid: The child's pid.
        source: Reads, reaps and signals it through its owner's machinery.
        sink: Where the outcome goes.
        lock: Held for every read, reap and signal of this child, and while it is settled:
            nothing of ours reaps it while another of our calls looks at it.
        notice: What names it exactly; set once registration has opened it.
        monitor: The backend part that notices its exit, and ``slot``, that part's own state
            for it (the backend owns both; nothing else reads them).
    """

    __slots__ = (
        "_async_waiters",
        "_done",
        "_done_callbacks",
        "_outcome",
        "_state",
        "lock",
        "monitor",
        "notice",
        "pid",
        "sink",
        "slot",
        "source",
    )

    def __init__(self, source: Source, sink: Sink) -> None:
        self.pid = source.pid
        self.source = source
        self.sink = sink
        self.lock = threading.Lock()
        self.notice: Notice | None = None
        self.monitor: Monitor | None = None
        self.slot: object = None
        self._state: State = "watching"
        self._outcome: ExitStatus | None = None
        #: Made by the first wait() that finds it unsettled: most children are waited for
        #: after they have settled, or never, and an Event costs both threads time.
        self._done: threading.Event | None = None
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._done_callbacks: list[Callable[[], object]] = []

    # --- reading -----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """``watching``, ``settling`` (exit read, not yet recorded) or ``settled``."""
        return self._state

    @property
    def watching(self) -> bool:
        """Whether its exit has not been read yet."""
        return self._state == "watching"

    @property
    def settled(self) -> bool:
        """Whether its outcome is recorded and its waiters have been woken."""
        return self._state == "settled"

    @property
    def outcome(self) -> ExitStatus | None:
        """The status once settled; None before, or when a stranger took it."""
        return self._outcome

    def wait(self, timeout: float | None) -> bool:
        """Block until settled or ``timeout`` seconds passed; return whether it is settled."""
        if self.settled:
            return True
        done = self._done
        if done is None:
            with _events_lock:  # one Event per watch, whichever waiter makes it
                done = self._done
                if done is None:
                    done = self._done = threading.Event()
        # Published before the state is read again, and finish_settling() reads _done after
        # it wrote the state: either this read sees "settled" or that one sees the Event.
        return self._read_state() == "settled" or done.wait(timeout)

    def _read_state(self) -> State:
        return self._state  # read afresh: the reaping thread may have moved it meanwhile

    def add_async_waiter(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]
    ) -> bool:
        """Resolve ``future`` in ``loop`` once settled; False (nothing added) if it already is."""
        with self.lock:
            if self._state == "settled":
                return False
            self._async_waiters.append((loop, future))
            return True

    def remove_async_waiter(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]
    ) -> None:
        """Forget a waiter that stopped waiting (cancelled)."""
        with self.lock:
            try:
                self._async_waiters.remove((loop, future))
            except ValueError:
                pass

    def add_done_callback(self, callback: Callable[[], object]) -> bool:
        """Have the engine call ``callback`` on the reaping thread once settled.

        Returns:
            False (nothing added) if it is settled already: the caller schedules it.
        """
        with self.lock:
            if self._state == "settled":
                return False
            self._done_callbacks.append(callback)
            return True

    # --- moved by the engine only (zombiereaper._engine), with ``lock`` held ---------------

    def begin_settling(self, outcome: ExitStatus | None) -> None:
        """The exit has been read: hold ``outcome`` until the sink has recorded it."""
        self._outcome = outcome
        self._state = "settling"

    def finish_settling(self) -> list[Callable[[], object]]:
        """Mark it settled and wake every waiter; return the callbacks still to run."""
        self._state = "settled"
        done = self._done  # after the state: see wait()
        if done is not None:
            done.set()
        waiters, self._async_waiters = self._async_waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:
                pass  # that event loop is closed: nobody is left to wake
        callbacks, self._done_callbacks = self._done_callbacks, []
        return callbacks

    def __repr__(self) -> str:
        return f"<Watch pid={self.pid} {self._state}>"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
