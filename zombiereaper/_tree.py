"""Whole process trees: stop a process and every descendant, none escaping, no stranger hit.

A tree is stopped in four steps: **freeze** (SIGSTOP to every process, found again and again
from the frozen ones until a listing finds nobody new and every one has stopped: a frozen
process cannot fork, and the kernel's children lists are only complete for frozen processes,
see proc(5) on ``/proc/PID/task/TID/children``), **SIGTERM** to all, **SIGCONT** to all, a
shared **wait**, then, for what still runs, a second freeze (what the survivors forked since)
and **SIGKILL**.

Each process is held by a pidfd, opened and then checked once: its parent in /proc is the
member it was listed under, and both pidfds still say "running" after that read, so the read
was of these very processes. Every signal goes through the pidfd (``pidfd_send_signal``),
which can never reach another process that was given the pid later. Waiting is "the pidfd
became readable" (the process exited): the descendants are reaped by their own parents, or by
init or the subreaper they are reparented to, never here by pid. The one exception: a
descendant that came back to this process (a subreaper) is reaped through its pidfd, which
cannot reap anything else, unless the caller leaves that to an all-scope Reaper.

What escapes: a process that was already an orphan (a double-forked daemon: its parent exited
before the freeze, so it is nobody's descendant any more, unless it came back to this process
as a subreaper and the caller stops this process's children), and a process that a member
forks after its SIGCONT and that outlives its parent (a SIGTERM handler that spawns a helper).

Every pidfd is opened, signalled, waited on and closed through zombiereaper._process and
zombiereaper._fds, the home of those calls: a process forked meanwhile holds none of them.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import time

from . import _fds, _linux, _process

# `typing` costs the init (whose --drain uses this module) as much as starting Python: type
# checkers treat any name TYPE_CHECKING as true, Python never imports what is under it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable
    from typing import Final

#: How long the freeze waits for every signalled process to show as stopped; past it, it goes
#: on (a process in uninterruptible sleep, or a vfork parent waiting for its frozen child,
#: stops only later).
FREEZE_PATIENCE: Final = 2.0

#: The longest pause between two listings while processes are still stopping.
_FREEZE_STEP: Final = 0.01

#: States in /proc/PID/stat that say a process can no longer fork: stopped, traced, zombie, dead.
_CANNOT_FORK: Final = frozenset("TtZXx")


class TreeProcess:
    """One process of a tree, held by a pidfd.

    Attributes:
        pid: Its pid.
        name: Its command name (``comm``, as ``ps`` shows it), or ``?`` when unknown.
        parent: The pid of the parent it was found under (this process's, for a root).
        start_time: Its start time in clock ticks since boot (see ``_linux.ProcStat``).
        root: Whether it was given as a root (reaped by its owner, not here).
    """

    __slots__ = ("_born", "fd", "name", "parent", "pid", "root", "start_time")

    def __init__(
        self, pid: int, fd: int, *, name: str, parent: int, start_time: int, root: bool
    ) -> None:
        self.pid = pid
        self.fd: int | None = fd
        self._born = _fds.generation()
        self.name = name
        self.parent = parent
        self.start_time = start_time
        self.root = root

    def send(self, sig: int) -> bool:
        """Send ``sig`` through the pidfd; False if the process is gone (or the pidfd closed)."""
        fd = self.fd
        if fd is None:
            return False
        return _process.signal_pidfd(fd, self.pid, sig)

    def has_exited(self) -> bool:
        """Whether the process has exited (a zombie counts, and so does a reaped one)."""
        fd = self.fd
        return fd is None or _is_readable(fd)

    def close(self) -> None:
        """Let go of the pidfd."""
        fd, self.fd = self.fd, None
        if fd is not None:
            _fds.close(fd, self._born)

    def describe(self) -> str:
        """``pid 12 (sleep)``; for a descendant, ``pid 12 (sleep, child of pid 11)``."""
        if self.root:
            return f"pid {self.pid} ({self.name})"
        return f"pid {self.pid} ({self.name}, child of pid {self.parent})"

    def __repr__(self) -> str:
        state = "closed" if self.fd is None else ("exited" if self.has_exited() else "running")
        return f"<TreeProcess {self.describe()} {state}>"


def _is_readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def can_stop_trees() -> bool:
    """Whether trees can be stopped here: pidfds (Linux 5.4+) to hold each process, and /proc."""
    return _process.can_use_pidfd() and _linux.has_proc()


def hold(pid: int, fd: int, *, root: bool = True) -> TreeProcess | None:
    """A root held by ``fd``, a pidfd that the caller has proven to name its child ``pid``.

    Takes ``fd`` over (closed with the TreeProcess, or here when None is returned).

    Args:
        pid: The child's pid.
        fd: Its pidfd.
        root: Whether its owner reaps it. False: nobody in this process waits for it (an
            orphan that came back to this subreaper), and ``reap`` reaps it like a descendant.

    Returns:
        The root, or None when it has exited already (its children are orphans by now).
    """
    stat = _linux.read_stat(pid)
    name = _linux.read_name(pid)
    if stat is None or _is_readable(fd):
        _fds.close(fd, _fds.generation())
        return None
    return TreeProcess(pid, fd, name=name, parent=stat.ppid, start_time=stat.start_time, root=root)


def open_child(pid: int) -> TreeProcess | None:
    """Hold the child ``pid`` of this process as a root; None if it is no running child of ours.

    For a caller that knows a pid only: what it holds is whatever child of ours has the pid
    now (checked through its parent pid), so the caller makes sure that nobody of ours reaps
    it meanwhile.

    Raises:
        OSError: No room for a pidfd (EMFILE, ENFILE, ENOMEM).
    """
    return _open(pid, os.getpid(), lambda: False, root=True)


def _open(
    pid: int, parent: int, parent_exited: Callable[[], bool], *, root: bool
) -> TreeProcess | None:
    """Hold ``pid`` if it is a running child of ``parent`` (see the module docstring).

    Raises:
        OSError: No room for a pidfd (EMFILE, ENFILE, ENOMEM).
    """
    try:
        fd = _process.open_pidfd(pid)
    except ProcessLookupError:
        return None
    stat = _linux.read_stat(pid)
    name = _linux.read_name(pid)
    # Both still running after the reads: the reads were of the process behind the pidfd, and
    # its parent was then (and is) the very process we listed it under.
    if stat is None or stat.ppid != parent or _is_readable(fd) or parent_exited():
        _fds.close(fd, _fds.generation())
        return None
    return TreeProcess(pid, fd, name=name, parent=parent, start_time=stat.start_time, root=root)


class TreeStop:
    """Stopping some trees, one step at a time (see :func:`stop_tree`, which runs them all).

    The steps, in order: :meth:`terminate` (freeze, SIGTERM, SIGCONT), :meth:`wait`,
    :meth:`kill` (freeze what is left, SIGKILL), :meth:`wait` again, :meth:`reap_returned`,
    :meth:`close`. A caller that must not block (the reaping thread) runs :meth:`terminate`
    now and :meth:`kill` from a timer.

    Args:
        roots: The roots, held (their pidfds become this object's); None: every child of
            this process.
        exclude: Pids of children of this process to leave alone with their descendants
            (roots None only): the library's own helpers, say.
    """

    def __init__(
        self, roots: Iterable[TreeProcess] | None, *, exclude: Collection[int] = ()
    ) -> None:
        self._members: dict[int, TreeProcess] = {}
        #: Every process ever held, exited ones too (a pid may be held twice, when reused).
        self._held: list[TreeProcess] = []
        if roots is None:
            roots = self._own_children(exclude)
        for root in roots:
            self._add(root)

    @property
    def members(self) -> list[TreeProcess]:
        """Every process held so far."""
        return list(self._held)

    def _own_children(self, exclude: Collection[int]) -> list[TreeProcess]:
        roots = []
        for pid in _linux.child_pids():
            if pid in exclude:
                continue
            try:
                root = open_child(pid)
            except OSError as err:
                if err.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                    raise
                continue  # no room to hold it: it cannot be signalled safely
            if root is not None:
                roots.append(root)
        return roots

    def _add(self, proc: TreeProcess) -> None:
        # A pid held before is taken over only from an exited process, which stays held.
        self._members[proc.pid] = proc
        self._held.append(proc)

    def alive(self) -> list[TreeProcess]:
        """The held processes that have not exited."""
        return [proc for proc in self._members.values() if not proc.has_exited()]

    # --- the steps ------------------------------------------------------------------------

    def terminate(self) -> None:
        """Freeze every process of the trees, then send all of them SIGTERM, then SIGCONT."""
        self.freeze()
        alive = self.alive()
        for proc in alive:
            proc.send(signal.SIGTERM)
        # Only after every SIGTERM: a process resumed earlier could fork before its SIGTERM.
        for proc in alive:
            proc.send(signal.SIGCONT)

    def kill(self) -> list[TreeProcess]:
        """Freeze what is still running (and what it forked since), and SIGKILL all of it.

        Returns:
            The processes that got SIGKILL.
        """
        self.freeze()
        killed = [proc for proc in self.alive() if proc.send(signal.SIGKILL)]
        for proc in killed:
            # A stopped process dies of SIGKILL all the same; the SIGCONT only spares its
            # parent a "stopped" notification that it may wait for forever.
            proc.send(signal.SIGCONT)
        return killed

    def freeze(self) -> None:
        """SIGSTOP every running process held, and every descendant found, until none is new.

        A listing is repeated until it finds nobody new and every process held shows as
        stopped (or has exited), so that none can fork any more; or until ``FREEZE_PATIENCE``
        seconds have passed.
        """
        for proc in self.alive():
            proc.send(signal.SIGSTOP)
        patience = time.monotonic() + FREEZE_PATIENCE
        pause = 0.0005
        while True:
            found = self._find_new()
            for proc in found:
                proc.send(signal.SIGSTOP)
            if found:
                continue
            if all(self._cannot_fork(proc) for proc in self.alive()):
                return
            if time.monotonic() >= patience:
                return
            time.sleep(pause)
            pause = min(pause * 2, _FREEZE_STEP)

    def wait(self, deadline: float | None) -> bool:
        """Wait until every held process has exited, or ``deadline`` (time.monotonic) passes.

        Returns:
            Whether all have exited.
        """
        pending = {proc.fd: proc for proc in self.alive() if proc.fd is not None}
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLIN)
        while pending:
            if deadline is None:
                timeout_ms = None
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                timeout_ms = max(1, int(remaining * 1000))
            for fd, _ in poller.poll(timeout_ms):
                poller.unregister(fd)
                pending.pop(fd, None)
        return True

    def reap_returned(self) -> None:
        """Reap the exited descendants that came back to this process (as a subreaper).

        Through each one's pidfd (``waitid(P_PIDFD)``): only that very process can be reaped,
        and only if it is our child now. Roots are left to their owners.
        """
        for proc in self._held:
            fd = proc.fd
            if proc.root or fd is None or not _is_readable(fd):
                continue
            try:
                _process.reap_pidfd(fd)
            except ChildProcessError:
                pass  # not ours: its parent, init or another subreaper reaps it

    def close(self) -> None:
        """Let go of every pidfd."""
        for proc in self._held:
            proc.close()

    # --- finding ------------------------------------------------------------------------

    def _find_new(self) -> list[TreeProcess]:
        """Hold the children of the held running processes that are not held yet."""
        parents = self.alive()
        by_parent = None if _linux.has_proc_children() else _children_by_parent()
        found = []
        for parent in parents:
            if by_parent is None:
                pids = _listed_children(parent.pid)
            else:
                pids = by_parent.get(parent.pid, [])
            for pid in pids:
                known = self._members.get(pid)
                if known is not None and not known.has_exited():
                    continue
                try:
                    proc = _open(pid, parent.pid, parent.has_exited, root=False)
                except OSError as err:
                    if err.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                        raise
                    continue  # no room to hold it: it cannot be signalled safely, so it is not
                if proc is not None:
                    self._add(proc)
                    found.append(proc)
        return found

    def _cannot_fork(self, proc: TreeProcess) -> bool:
        stat = _linux.read_stat(proc.pid)
        if proc.has_exited():
            return True
        # Still running after the read: the state read was this process's.
        return stat is not None and stat.state in _CANNOT_FORK


def _listed_children(pid: int) -> list[int]:
    """The children of ``pid`` from /proc/PID/task/*/children (those of all its threads)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    pids: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as file:
                pids.extend(int(word) for word in file.read().split())
        except OSError:
            continue
    return pids


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from a scan of /proc/*/stat (without CONFIG_PROC_CHILDREN)."""
    by_parent: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return by_parent
    for name in names:
        if name.isdigit():
            stat = _linux.read_stat(int(name))
            if stat is not None:
                by_parent.setdefault(stat.ppid, []).append(stat.pid)
    return by_parent


def stop_tree(
    roots: Iterable[TreeProcess] | None,
    timeout: float,
    *,
    exclude: Collection[int] = (),
    reap: bool = True,
) -> list[TreeProcess]:
    """Stop whole process trees: freeze, SIGTERM, SIGCONT, wait, then SIGKILL what remains.

    Every process of the trees is frozen first (SIGSTOP), found again and again from the
    frozen ones until no new one appears, so that none escapes by forking while they are
    looked at. Then all get SIGTERM, then SIGCONT, and up to ``timeout`` seconds to end;
    what still runs then (and what it forked meanwhile) is frozen again and gets SIGKILL,
    and is waited for. Every process is held by a pidfd, so a signal never reaches a process
    that took a pid after its owner was reaped.

    Nothing is reaped here but what came back to this process (a subreaper) from the trees,
    and only with ``reap``: the roots are their owners' to reap (a Reaper's, the caller's);
    other descendants are reaped by their parents, or by init or a subreaper.

    Args:
        roots: The roots of the trees, held by pidfds (:func:`hold`, :func:`open_child`);
            their pidfds are closed before this returns. None: every child of this process
            (the init's drain).
        timeout: Seconds between SIGTERM and SIGKILL (``math.inf``: never SIGKILL).
        exclude: With ``roots=None``, the pids of children to leave alone, with their trees.
        reap: Reap the descendants that exited as children of this process (a subreaper).
            False where an all-scope Reaper reaps (and records) them.

    Returns:
        The processes that were still running after ``timeout`` and got SIGKILL, roots
        included, in the order they were found (roots first); each with ``pid``, ``name``,
        ``parent`` and ``describe()``. Their pidfds are closed.

    Raises:
        OSError: Pidfds are not supported here (see :func:`can_stop_trees`).
    """
    stopping = TreeStop(roots, exclude=exclude)
    try:
        stopping.terminate()
        deadline = None if timeout == float("inf") else time.monotonic() + max(0.0, timeout)
        killed: list[TreeProcess] = []
        if not stopping.wait(deadline):
            killed = stopping.kill()
            stopping.wait(None)
        if reap:
            stopping.reap_returned()
        return killed
    finally:
        stopping.close()
