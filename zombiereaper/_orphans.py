"""All scope: reap every child of the process, orphans included, without stealing from owners.

The rule, and why it is safe:

1. A zombie child is found by listing this process's children in /proc (``waitid(P_ALL,
   WNOWAIT)`` cannot enumerate: it returns the same first zombie forever) and is named by its
   pid *and* start time, so a reused pid is never mistaken for an old zombie.
2. Its status is read at once with ``waitid(WNOWAIT)``, which does not reap, and recorded.
3. It is left alone for ``grace`` seconds: code that waits for its own children (a blocking
   ``Popen.wait()``, asyncio's watcher thread, ``os.waitpid``) reaps it in that time and keeps
   its status.
4. After the grace, the owner is looked for: a live ``subprocess.Popen`` for that pid (its
   ``poll()`` reaps it under Popen's own lock, so the owner's later ``wait()`` returns the real
   code); a live ``multiprocessing`` Process (its exit code is stored in it before reaping);
   multiprocessing's fork server and resource tracker; any pidfd that other code holds for
   that pid (asyncio's pidfd watcher on 3.12+, visible in /proc/self/fdinfo), in which case the
   child is left to that owner for good.
5. Only a zombie with no owner found is reaped directly, through a pidfd checked against the
   start time, so the reaping can never hit another process that took the pid.

An owner we cannot recognize that waits later than the grace (a bare ``os.waitpid`` on a raw
fork, seconds after the exit) is the one case that can lose a status; the grace is the floor.
"""

from __future__ import annotations

import gc
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from . import _fds, _linux, _process
from ._errors import NotOurChildError, StatusLostError, WaitTimeout
from ._owners import store_exit_in_process
from ._process import ProcessGone, ProcessRef
from ._status import ExitStatus, decode_reaped, decode_wait_status, is_same_exit

if TYPE_CHECKING:
    from collections.abc import Callable

#: How long an unknown zombie is left to its owner before it is reaped.
DEFAULT_GRACE: Final = 0.75

#: How soon to look again at zombies held back while one of our spawns is in progress.
_HOLD_RETRY: Final = 0.01


class OrphanSink(Protocol):
    """Where the all scope's records go (the all-scope Reaper's registry and on_exit)."""

    def record(self, status: ExitStatus) -> None:
        """Store the status (no user code, no blocking)."""
        ...

    def announce(self, status: ExitStatus) -> None:
        """Tell user code; called on the reaping thread."""
        ...


def peek_child(pid: int) -> ExitStatus | None:
    """The status of the exited child ``pid``, without reaping it; None while it runs.

    With its resource usage: the sweep records a status when it first sees the zombie, which
    may be long before its reap (or its owner's).

    Raises:
        ChildProcessError: ``pid`` is not an unreaped child of this process.
    """
    peeked = _process.peek_pid_with_usage(pid)
    return None if peeked is None else decode_reaped(pid, *peeked)


def reap_zombie(zombie: _linux.ProcStat) -> ExitStatus | None:
    """Reap exactly the zombie that was seen, never a process that has taken its pid since."""
    try:
        reaped = ProcessRef(zombie.pid, None, zombie.start_time).reap()
    except ProcessGone:
        return None
    return None if reaped is None else decode_reaped(zombie.pid, *reaped)


# --- owners ---------------------------------------------------------------------------------------


def _live_popens(pids: set[int]) -> dict[int, subprocess.Popen[Any]]:
    """Popen objects still alive in this process for the given pids."""
    found: dict[int, subprocess.Popen[Any]] = {}
    for obj in gc.get_objects():
        # getattr: a Popen still in its __init__ may not have its pid yet.
        pid = getattr(obj, "pid", None) if isinstance(obj, subprocess.Popen) else None
        if pid in pids and obj.returncode is None:
            found[pid] = obj
    return found


def _live_processes(pids: set[int]) -> dict[int, Any]:
    """The Popens of multiprocessing Processes started here and not yet cleaned up, by pid."""
    module = sys.modules.get("multiprocessing.process")
    found: dict[int, Any] = {}
    for process in list(getattr(module, "_children", ())):
        popen = getattr(process, "_popen", None)
        pid = getattr(popen, "pid", None)
        if pid in pids:
            found[pid] = popen
    return found


def _multiprocessing_helpers() -> set[int]:
    """The pids of multiprocessing's fork server and resource tracker, which it waits for."""
    pids: set[int] = set()
    forkserver = sys.modules.get("multiprocessing.forkserver")
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    for value in (
        getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None),
        getattr(getattr(tracker, "_resource_tracker", None), "_pid", None),
    ):
        if isinstance(value, int):
            pids.add(value)
    return pids


def unowned(pids: set[int]) -> set[int]:
    """Those of the children ``pids`` that no owner in this process is known to wait for.

    Owners are the ones the sweep looks for (a live Popen, a multiprocessing Process or
    helper, a pidfd held, an installed Reaper's included). What is left is an orphan that came
    back to this process as a subreaper, or a raw ``os.fork()`` child nobody waits for.
    """
    held = _linux.pidfd_targets()
    left = pids - held - _multiprocessing_helpers()
    left -= _live_popens(left).keys()
    left -= _live_processes(left).keys()
    return left


# --- the sweep ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ownership:
    """What the installed Reapers own, as the all-scope sweep must leave it alone.

    Attributes:
        owned: Pids of the children that Reapers watch as their own.
        our_fds: The library's own descriptors (its pidfds are not another owner's).
        spawning_since: When the oldest spawn() in progress began (boot ticks, the unit of
            a start time), or None: a child that started since may be one that spawn() has
            forked and not registered yet.
    """

    owned: frozenset[int]
    our_fds: frozenset[int]
    spawning_since: int | None


class AllScope:
    """The all-scope part of one Reaper: finds, records and reaps every other zombie child."""

    def __init__(self, sink: OrphanSink, grace: float) -> None:
        self._sink = sink
        self._grace = grace
        self._lock = threading.Lock()
        #: zombie (pid, start time) -> when to look at it again
        self._next_look: dict[tuple[int, int], float] = {}
        #: zombie (pid, start time) -> the status recorded for it (each is recorded once)
        self._recorded: dict[tuple[int, int], ExitStatus] = {}
        self._left_alone: set[int] = set()

    @property
    def sink(self) -> OrphanSink:
        """Where the statuses this sweep finds are recorded."""
        return self._sink

    @property
    def grace(self) -> float:
        """Seconds an unknown zombie is left to its owner."""
        return self._grace

    def take_over(self, status: ExitStatus) -> bool:
        """A Reaper settled a child whose exit the sweep may have recorded already.

        Returns:
            Whether the sweep recorded this very exit (its ``on_exit`` has run for it then).
        """
        with self._lock:
            for key, recorded in self._recorded.items():
                if key[0] == status.pid and is_same_exit(recorded, status):
                    del self._recorded[key]
                    return True
        return False

    def leave_alone(self, pid: int) -> None:
        """Never touch ``pid`` (a helper of ours that we reap ourselves) until released."""
        with self._lock:
            self._left_alone.add(pid)

    def release(self, pid: int) -> None:
        """Undo :meth:`leave_alone`."""
        with self._lock:
            self._left_alone.discard(pid)

    def sweep(
        self,
        now: float,
        ownership: Callable[[], Ownership],
        *,
        only: int | None = None,
        skip_grace: bool = False,
    ) -> tuple[list[ExitStatus], float | None]:
        """Record new zombies, reap those whose grace is over; return statuses and next deadline.

        Args:
            now: The monotonic time.
            ownership: What the installed Reapers own right now (asked before and after the
                listing of zombies).
            only: Look at this pid only.
            skip_grace: Settle now the zombies still in their grace (owners found keep theirs).
        """
        with self._lock:
            if not _process.has_zombie_child():
                self._next_look.clear()
                self._forget_records(keep=set(), owned=ownership().owned)
                return [], None
            before = ownership()
            # Owned children are skipped unread: the cost stays with the zombies, not with
            # every child alive (4,000 stat files made a sweep take 127 ms).
            listed = _linux.zombie_children(skip=before.owned | self._left_alone)
            after = ownership()
            skip = before.owned | after.owned | self._left_alone
            zombies = [z for z in listed if z.pid not in skip and (only is None or z.pid == only)]
            # A zombie that started while one of our spawns was in progress may be the child
            # it forked and has not registered yet: it would look like nobody's. Only those are
            # held back, so that spawns one after another never starve the orphans.
            since = after.spawning_since
            held = since is not None and any(z.start_time >= since for z in zombies)
            if since is not None:
                zombies = [z for z in zombies if z.start_time < since]
            if only is None:
                present = {z.key for z in zombies}
                self._next_look = {k: t for k, t in self._next_look.items() if k in present}
                self._forget_records(keep=present, owned=before.owned | after.owned)
            recorded = [status for z in zombies if (status := self._record_once(z)) is not None]
            due = [
                z
                for z in zombies
                if self._next_look.setdefault(z.key, now + self._grace) <= now or skip_grace
            ]
            if due:
                self._settle(due, after.our_fds, now)
            deadlines = [*self._next_look.values(), *([now + _HOLD_RETRY] if held else [])]
            return recorded, min(deadlines, default=None)

    def _forget_records(self, keep: set[tuple[int, int]], owned: frozenset[int]) -> None:
        """Drop the records of zombies gone, except those of pids a Reaper owns now.

        A child watch()ed within its grace is owned (so no longer listed) and may even be
        reaped already, yet its record must stay until :meth:`take_over` takes it, or its
        ``on_exit`` would run a second time.
        """
        self._recorded = {k: s for k, s in self._recorded.items() if k in keep or k[0] in owned}

    def _record_once(self, zombie: _linux.ProcStat) -> ExitStatus | None:
        if zombie.key in self._recorded:
            return None
        try:
            status = peek_child(zombie.pid)
        except ChildProcessError:
            return None  # its owner reaped it since the listing
        if status is None:
            return None
        self._recorded[zombie.key] = status
        return status

    def _settle(self, due: list[_linux.ProcStat], our_fds: frozenset[int], now: float) -> None:
        pids = {z.pid for z in due}
        held = _linux.pidfd_targets(exclude=our_fds)
        unheld = pids - held
        popens = _live_popens(unheld) if unheld else {}
        processes = _live_processes(unheld - popens.keys())
        helpers = _multiprocessing_helpers()
        for zombie in due:
            pid = zombie.pid
            if pid in held or pid in helpers:
                reaped = False  # its owner holds a pidfd for it, or waits for it by design
            elif pid in popens:
                # Through Popen's own lock: its later wait() returns the real code. None means
                # its owner holds the lock (is reaping it right now).
                reaped = popens[pid].poll() is not None
            elif pid in processes:
                reaped = self._reap_for_process(zombie, processes[pid])
            else:
                reaped = reap_zombie(zombie) is not None
            if reaped:
                self._next_look.pop(zombie.key, None)
            else:
                self._next_look[zombie.key] = now + self._grace

    def _reap_for_process(self, zombie: _linux.ProcStat, mp_popen: Any) -> bool:
        try:
            status = peek_child(zombie.pid)
        except ChildProcessError:
            return True
        if status is not None:
            store_exit_in_process(mp_popen, status)
        return reap_zombie(zombie) is not None


def wait_for_child(pid: int, timeout: float | None) -> ExitStatus:
    """Wait for any child of ours to exit and return its status, without reaping it.

    Raises:
        NotOurChildError: ``pid`` is not an unreaped child of this process.
        WaitTimeout: It still ran after ``timeout`` seconds.
        StatusLostError: Its owner reaped it while we waited, and kept the status to itself.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    status = _peek_our_child(pid)
    if status is not None:
        return status
    if _process.can_use_pidfd():
        return _wait_with_pidfd(pid, deadline, timeout)
    delay = 0.001
    while True:
        try:
            status = peek_child(pid)
        except ChildProcessError:
            raise StatusLostError(pid) from None
        if status is not None:
            return status
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(pid, timeout or 0.0)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


async def wait_for_child_async(pid: int) -> ExitStatus:
    """:func:`wait_for_child` for a running event loop, watching the child's pidfd.

    Where pidfds are missing, a worker thread waits instead.

    Raises:
        NotOurChildError: ``pid`` is not an unreaped child of this process.
        StatusLostError: Its owner reaped it while we waited, and kept the status to itself.
    """
    import asyncio  # noqa: PLC0415 - importing asyncio costs more than all of zombiereaper

    status = _peek_our_child(pid)
    if status is not None:
        return status
    loop = asyncio.get_running_loop()
    if not _process.can_use_pidfd():
        return await loop.run_in_executor(None, wait_for_child, pid, None)
    fd = _open_pidfd(pid)
    born = _fds.generation()
    try:
        status = _peek_pidfd(pid, fd)
        if status is not None:
            return status
        readable: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, on_readable)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        return _status_once_readable(pid, fd)
    finally:
        _fds.close(fd, born)


def _peek_pidfd(pid: int, fd: int) -> ExitStatus | None:
    """The status behind a pidfd that must name our unreaped child (else StatusLostError).

    The pidfd names whatever had the pid when it was opened: ECHILD here means that was no
    longer our child (its owner reaped it; the pid may even be a stranger's now).
    """
    try:
        raw = _process.peek_pidfd(fd)
    except ChildProcessError:
        raise StatusLostError(pid) from None
    return None if raw is None else decode_wait_status(pid, raw)


def _status_once_readable(pid: int, fd: int) -> ExitStatus:
    """The status behind a pidfd that has turned readable (its process has exited)."""
    status = _peek_pidfd(pid, fd)
    if status is None:  # pragma: no cover - a readable pidfd means it has exited
        raise StatusLostError(pid)
    return status


def _peek_our_child(pid: int) -> ExitStatus | None:
    try:
        return peek_child(pid)
    except ChildProcessError:
        raise NotOurChildError(pid, f"pid {pid} is not a child of this process") from None


def _open_pidfd(pid: int) -> int:
    try:
        return _process.open_pidfd(pid)
    except ProcessLookupError:
        raise StatusLostError(pid) from None


def _wait_with_pidfd(pid: int, deadline: float | None, timeout: float | None) -> ExitStatus:
    fd = _open_pidfd(pid)
    born = _fds.generation()
    try:
        status = _peek_pidfd(pid, fd)
        if status is not None:
            return status
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if poller.poll(None if remaining is None else remaining * 1000):
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(pid, timeout or 0.0)
        return _status_once_readable(pid, fd)
    finally:
        _fds.close(fd, born)
