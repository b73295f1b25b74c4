"""Sources: who else may wait for a child, and how to reap it through their machinery.

A child is reaped by exactly one wait. When other code can also wait for it (a Popen, a
multiprocessing Process), the reaping must go through that code's own bookkeeping, or the
other waiter sees ECHILD and invents a status: Popen says 0 (bpo-15756), multiprocessing says
None forever. Each source below knows one kind of waiter:

- PopenSource: a ``subprocess.Popen``; reaps under Popen's own lock and stores its returncode.
- ProcessSource: a ``multiprocessing.Process``; stores the exit code in the Process before
  reaping, or, for forkserver workers (not our children at all), reads it from the sentinel.
- PidSource: a bare pid that nobody else waits for; reaps it directly.

Each answers the engine's three questions: :meth:`open` names the child exactly (a
:class:`~zombiereaper._process.ProcessRef`) at a moment when its pid provably is still the
child's, or says that its owner has the status already; ``read_exit`` reads and reaps through
the ref; ``send_signal`` signals through it. The engine calls the last two with the watch's
lock held, so nothing of ours reaps the child meanwhile. A status that cannot be tied to the
child through its ref is reported lost (None), never borrowed from a process that took the
pid (issue 11, race 6).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Final

from . import _process
from ._backends import Sentinel, open_ref
from ._process import Away, ProcessGone, ProcessRef
from ._status import ExitStatus, decode_reaped, decode_wait_status
from ._watch import RETRY, RUNNING, Known, Retry

if TYPE_CHECKING:
    import multiprocessing.process
    import subprocess
    from collections.abc import Callable

    from ._backends import BackendName
    from ._watch import Notice, Outcome, Source

#: How long another waiter that has reaped a child may take to store its status (the gap
#: between its waitpid returning and its assignment is a few bytecodes) before the status is
#: called lost. Meanwhile the engine asks again on its sweeps; nothing blocks.
_OWNER_STORE_TIMEOUT: Final = 1.0

#: How long to wait for an owner's lock (Popen's, or the one around a forkserver Popen's
#: poll) before answering RETRY: its holder is reading an exit that has happened, so it is
#: done in a moment, unless it is the very thread asking (a signal handler interrupted it).
_OWNER_LOCK_WAIT: Final = 0.1


# --- subprocess.Popen ------------------------------------------------------------------------


def _popen_lock(popen: subprocess.Popen[Any]) -> threading.Lock | None:
    """Popen's own reap lock: CPython's ``Popen.wait()`` holds it around its waitpid."""
    lock: threading.Lock | None = getattr(popen, "_waitpid_lock", None)
    return lock


def _returncode(popen: subprocess.Popen[Any]) -> int | None:
    """Popen's returncode, read afresh: another thread's wait() may set it at any moment."""
    return popen.returncode


class PopenSource:
    """A child started by ``subprocess.Popen``, whose ``wait()`` the application may call too."""

    def __init__(self, popen: subprocess.Popen[Any]) -> None:
        self.popen = popen

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.popen.pid

    @property
    def args(self) -> Any:
        """The command, as Popen got it."""
        return self.popen.args

    @property
    def owner(self) -> object:
        """The Popen."""
        return self.popen

    def open(self, backend: BackendName) -> ProcessRef | Known:
        """Name the child, or take the status its Popen already has.

        Under Popen's lock (free unless another thread sits in ``popen.wait()``), nothing but
        a stranger's blanket wait can reap the child while its pid is turned into a ref.
        """
        popen = self.popen
        lock = _popen_lock(popen)
        held = lock is not None and lock.acquire(blocking=False)
        try:
            if popen.returncode is not None:
                return Known(ExitStatus.from_returncode(popen.pid, popen.returncode))
            try:
                ref = open_ref(popen.pid, backend)
            except ChildProcessError:
                if held:
                    # Nothing of Popen's could reap it under its lock: a stranger's wait did.
                    return Known(None)
                # Its own wait() in another thread reaped it since the check.
                return Known(wait_for_gone(self))
            code = _returncode(popen)  # read again: another thread's wait() may have set it
            if not held and code is not None:
                # A wait() in another thread finished meanwhile: its code is the truth, and
                # the pid may already name another process.
                ref.close()
                return Known(ExitStatus.from_returncode(popen.pid, code))
            return ref
        finally:
            if held:
                assert lock is not None
                lock.release()

    def read_exit(self, notice: Notice, *, look_first: bool = True) -> Outcome:
        """Read the exit through the ref, then reap it under Popen's lock and store the code.

        Not ``look_first`` (and named by a pidfd), reaped at once if Popen's lock is free.
        """
        popen = self.popen
        if popen.returncode is not None:
            return ExitStatus.from_returncode(popen.pid, popen.returncode)
        assert isinstance(notice, ProcessRef)
        if not _process.can_peek():
            code = popen.poll()  # no waitid: Popen's own machinery, by pid
            return RUNNING if code is None else ExitStatus.from_returncode(self.pid, code)
        lock = _popen_lock(popen)
        if (
            not look_first
            and notice.fileno is not None
            and lock is not None
            and lock.acquire(False)
        ):
            # Reaped at once, without a look first (a cache-cold system call on the way to
            # on_exit); a child still running answers RUNNING. Stolen meanwhile, the status
            # is what recover() finds. Never waiting for the lock here: a readiness that was
            # meant for an earlier holder of the descriptor's number must not wait out a
            # popen.wait() of a child that still runs.
            return self._reap_holding(lock, notice, None)
        try:
            # By pid, not checked here: the reap checks that it reaches this very process,
            # and returns its status (one /proc read per exit instead of two).
            raw = notice.peek(exact=False)
        except ProcessGone:
            return self._read_taken(notice)
        if raw is None:
            return RUNNING
        return self._reap_under_popen_lock(lock, notice, raw if notice.fileno is not None else None)

    def _read_taken(self, notice: ProcessRef) -> Outcome:
        """Another wait reaped the child: the kernel's record of it, else what Popen stored.

        The kernel's record (Linux 6.15+) is exact whoever reaped it, where Popen stores 0 if
        a stranger's wait took the status first (its waitpid saw ECHILD): Popen gets the
        real code then.
        """
        raw = notice.recover()
        if isinstance(raw, Away):
            return RUNNING  # the pidfd comes back from the relay in a moment: read it then
        if raw is None:
            return self.read_gone()
        popen = self.popen
        lock = _popen_lock(popen)
        if lock is not None and not lock.acquire(timeout=_OWNER_LOCK_WAIT):
            return RETRY
        try:
            popen.returncode = os.waitstatus_to_exitcode(raw)
        finally:
            if lock is not None:
                lock.release()
        return decode_wait_status(self.pid, raw)

    def _reap_under_popen_lock(
        self, lock: threading.Lock | None, notice: ProcessRef, peeked: int | None
    ) -> Outcome:
        """Reap the exited child under Popen's ``lock`` and store its code there.

        ``peeked`` is its status as read through its pidfd, or None when it was not read first
        (named by pid, or its pidfd said it has exited): the reap's own answer, checked
        against the process's identity, is the status then.
        """
        if lock is None:
            return self._reap_through_popen(notice, peeked)
        # A holder sits in waitpid() on a child that has exited: it is done in a moment.
        if not lock.acquire(timeout=_OWNER_LOCK_WAIT):
            return RETRY  # or it is this very thread, in a signal handler: never deadlock
        return self._reap_holding(lock, notice, peeked)

    def _reap_holding(
        self, lock: threading.Lock, notice: ProcessRef, peeked: int | None
    ) -> Outcome:
        """:meth:`_reap_under_popen_lock` once Popen's ``lock`` is taken (released here)."""
        popen = self.popen
        try:
            if popen.returncode is not None:
                return ExitStatus.from_returncode(popen.pid, popen.returncode)
            raw: int | None
            usage = None
            try:
                # The status the reap returns keeps the core-dump bit, which Popen drops.
                reaped = notice.reap()
                if reaped is None:
                    return RUNNING
                raw, usage = reaped
            except ProcessGone:
                # A stranger took it: after our read through the pidfd (its status, then), or
                # before any read (None: recovered through the pidfd if the kernel keeps it).
                raw = peeked
            if raw is not None:
                popen.returncode = os.waitstatus_to_exitcode(raw)
        finally:
            lock.release()
        if raw is None:
            return self._read_taken(notice)  # outside Popen's lock, which it takes
        return decode_reaped(popen.pid, raw, usage)

    def _reap_through_popen(self, notice: ProcessRef, peeked: int | None) -> Outcome:
        """Not CPython's Popen (no wait lock): read the status exactly, then its own wait()."""
        try:
            raw = peeked if peeked is not None else notice.peek()
        except ProcessGone:
            return self._read_taken(notice)
        if raw is None:
            return RUNNING
        self.popen.wait()  # on a zombie, returns at once
        return decode_wait_status(self.pid, raw)

    def send_signal(self, notice: Notice, sig: int, group: bool) -> bool:
        """Signal the child through its ref, unless its own wait() has reaped it."""
        popen = self.popen
        if popen.returncode is not None:
            return False
        assert isinstance(notice, ProcessRef)
        lock = _popen_lock(popen)
        # Held where free: the ref's fallbacks (no pidfd, a group before Linux 6.9) rely on
        # the child staying unreaped while they check and signal.
        held = lock is not None and lock.acquire(blocking=False)
        try:
            if _returncode(popen) is not None:  # read again, under the lock now
                return False
            return notice.send_signal(sig, group=group)
        finally:
            if held:
                assert lock is not None
                lock.release()

    def read_gone(self) -> ExitStatus | Retry | None:
        """The status that the Popen's own wait recorded, or None when a stranger took it."""
        popen = self.popen
        lock = _popen_lock(popen)
        if lock is None:
            returncode = popen.returncode
        else:
            # Popen stores returncode under this lock right after its waitpid: holding the
            # lock means a wait in progress in another thread has finished.
            if not lock.acquire(timeout=_OWNER_LOCK_WAIT):
                return RETRY
            try:
                returncode = popen.returncode
            finally:
                lock.release()
        return None if returncode is None else ExitStatus.from_returncode(popen.pid, returncode)


# --- multiprocessing.Process -----------------------------------------------------------------


class ProcessSource:
    """A ``multiprocessing.Process`` worker, whose ``join()`` the application may call too."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process
        pid = process.pid
        assert pid is not None
        self._pid = pid
        # Kept: process.close() drops the Process's own reference once it is joined, and this
        # object is where its exit code stays (and where we store it before reaping).
        self._mp_popen: Any = getattr(process, "_popen", None)
        #: When the worker was first found gone with no code stored (see read_gone).
        self._gone_since: float | None = None

    @property
    def pid(self) -> int:
        """The worker's pid."""
        return self._pid

    @property
    def args(self) -> Any:
        """The worker's name."""
        return self.process.name

    @property
    def owner(self) -> object:
        """The Process."""
        return self.process

    def _returncode(self) -> int | None:
        """The code the Process has stored, without asking it to poll (it would waitpid)."""
        code: int | None = getattr(self._mp_popen, "returncode", None)
        return code

    def _is_forkserver_worker(self) -> bool:
        return type(self._mp_popen).__module__.endswith("popen_forkserver")

    def open(self, backend: BackendName) -> ProcessRef | Sentinel | Known:
        """Name the worker if it is our child, else watch our copy of its sentinel."""
        if self._returncode() is not None:
            return Known(self._status())
        if self._is_forkserver_worker():
            # Not our child: the fork server is its parent. Its pid may even name a child of
            # ours once it has been reaped there: never open a ref for it.
            _serialize_polls(self._mp_popen)
            try:
                return Sentinel.copy(self._pid, self.process.sentinel)
            except (OSError, ValueError):
                # Closed by its owner already (join() then close()): the code is stored.
                return Known(self._status())
        try:
            ref = open_ref(self._pid, backend)
        except ChildProcessError:
            return Known(wait_for_gone(self))  # its join() reaped it
        if self._returncode() is not None:
            ref.close()
            return Known(self._status())
        return ref

    def read_exit(self, notice: Notice, *, look_first: bool = True) -> Outcome:
        """Read the exit and store it in the Process before reaping, or let it read its own.

        Always looks first (``look_first`` or not): the Process must hold its status before the
        reap frees the pid, or a join() meanwhile would find it gone.
        """
        if isinstance(notice, Sentinel):
            return self._read_forkserver_exit(notice)
        assert isinstance(notice, ProcessRef)
        if self._returncode() is not None:
            return self._status()  # joined already: its pid may be reused
        if not _process.can_peek():
            code = self._mp_popen.poll()  # no waitid: the Process's own machinery
            return RUNNING if code is None else ExitStatus.from_returncode(self._pid, code)
        try:
            raw = notice.peek()
        except ProcessGone:
            return self._read_taken(notice)
        if raw is None:
            return RUNNING
        status = decode_wait_status(self._pid, raw)
        store_exit_in_process(self._mp_popen, status)
        try:
            reaped = notice.reap()
        except ProcessGone:
            reaped = None  # its join() reaped it in between: the status is the same
        return status if reaped is None else decode_reaped(self._pid, *reaped)

    def _read_taken(self, notice: ProcessRef) -> Outcome:
        """Reaped by its join(), or by a stranger's wait (the Process then keeps None forever).

        The kernel's record, where it keeps one (Linux 6.15+), is exact either way, and the
        Process gets it; else what its join() stored.
        """
        raw = notice.recover()
        if isinstance(raw, Away):
            return RUNNING  # the pidfd comes back from the relay in a moment: read it then
        if raw is None:
            return self.read_gone()
        status = decode_wait_status(self._pid, raw)
        store_exit_in_process(self._mp_popen, status)
        return status

    def _read_forkserver_exit(self, sentinel: Sentinel) -> Outcome:
        if self._returncode() is not None:
            return self._status()
        if not sentinel.is_ready():
            return RUNNING
        # The status sits in the sentinel pipe and can be read once: a second, concurrent
        # reader gets EOF and multiprocessing then stores 255. So it is read through the
        # Popen's own poll(), under the lock that now guards every poll() of that Popen: the
        # owner's join() and we read it once between us, whoever comes first.
        lock, real_poll = _POLL_LOCKS[self._mp_popen]
        if not lock.acquire(timeout=_OWNER_LOCK_WAIT):
            return RETRY
        try:
            code = real_poll(os.WNOHANG)
        finally:
            lock.release()
        return RUNNING if code is None else ExitStatus.from_returncode(self._pid, code)

    def send_signal(self, notice: Notice, sig: int, group: bool) -> bool:
        """Signal the worker only while it provably has not been reaped."""
        if isinstance(notice, Sentinel):
            sentinel = notice
            # An unready sentinel (our copy) means the worker has not ended: a pidfd opened
            # before that check names it.
            return _process.send_signal_checked(
                self._pid, sig, lambda: not sentinel.is_ready(), group=group
            )
        assert isinstance(notice, ProcessRef)
        if self._returncode() is not None:
            return False  # its join() reaped it: the pid may name another child of ours
        return notice.send_signal(sig, group=group)

    def read_gone(self) -> ExitStatus | Retry | None:
        """The code the Process stored (its join() reaped the worker), or None.

        Only what the Process stored: asking it to poll would waitpid() a pid that may name
        another child of ours by now. A join() in flight stores it in a moment: until
        _OWNER_STORE_TIMEOUT has passed, RETRY (the engine asks again on its sweeps).
        """
        code = self._returncode()
        if code is not None:
            return ExitStatus.from_returncode(self._pid, code)
        now = time.monotonic()
        if self._gone_since is None:
            self._gone_since = now
        return RETRY if now - self._gone_since < _OWNER_STORE_TIMEOUT else None

    def _status(self) -> ExitStatus | None:
        code = self._returncode()
        return None if code is None else ExitStatus.from_returncode(self._pid, code)


#: A forkserver Popen -> the lock now around its poll(), and its own poll. Weak: the entry
#: goes with the Popen.
_POLL_LOCKS: weakref.WeakKeyDictionary[Any, tuple[threading.RLock, Callable[[int], Any]]] = (
    weakref.WeakKeyDictionary()
)
_POLL_LOCKS_LOCK = threading.Lock()


def _serialize_polls(mp_popen: Any) -> None:
    """Make every poll() of a forkserver Popen take one lock (once per Popen).

    Its poll() reads the worker's status from the sentinel pipe, where it can be read only
    once: two readers at a time (the owner's join() and our reaping thread) leave one of them
    with EOF, and multiprocessing then stores a made-up 255. The instance's poll is replaced
    by a locked one (Popen.wait(), Process.exitcode and is_alive() all call self.poll()), so
    the second reader finds the code stored by the first.
    """
    with _POLL_LOCKS_LOCK:
        if mp_popen in _POLL_LOCKS:
            return
        lock = threading.RLock()
        real_poll = mp_popen.poll

        def poll(flag: int = os.WNOHANG) -> Any:
            with lock:
                return real_poll(flag)

        _POLL_LOCKS[mp_popen] = (lock, real_poll)
        mp_popen.poll = poll


def store_exit_in_process(mp_popen: Any, status: ExitStatus) -> None:
    """Give a multiprocessing Process's Popen its exit code before its child is reaped.

    multiprocessing has no lock: a join() racing our reap would see ECHILD and keep exitcode
    None forever. With the code stored first, its poll() answers without calling waitpid.
    """
    if mp_popen is not None and getattr(mp_popen, "returncode", 0) is None:
        mp_popen.returncode = status.returncode


def wait_for_gone(source: Source) -> ExitStatus | None:
    """The owner's status of a child known to be gone, waiting briefly for the owner to store it.

    For registration, where there is no sweep to ask again later: a join() or wait() in
    flight stores the code within a few bytecodes; a stranger's blanket wait never does.
    """
    deadline = time.monotonic() + _OWNER_STORE_TIMEOUT
    while True:
        outcome = source.read_gone()
        if not isinstance(outcome, Retry):
            return outcome
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.001)


# --- a bare pid --------------------------------------------------------------------------------


class PidSource:
    """A direct child known only by its pid: nobody else waits for it."""

    def __init__(self, pid: int) -> None:
        self._pid = pid

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self._pid

    @property
    def args(self) -> Any:
        """Nothing is known of the command."""
        return None

    @property
    def owner(self) -> object:
        """Nobody."""
        return None

    def open(self, backend: BackendName) -> ProcessRef:
        """Name the pid, which must be an unreaped child of ours.

        Raises:
            ChildProcessError: It is not.
        """
        return open_ref(self._pid, backend)

    def read_gone(self) -> ExitStatus | Retry | None:
        """Nobody else may wait for a bare pid: a stranger took its status."""
        return None

    def read_exit(self, notice: Notice, *, look_first: bool = True) -> Outcome:
        """Reap the child directly (it never looks first, ``look_first`` or not)."""
        assert isinstance(notice, ProcessRef)
        try:
            reaped = notice.reap()
        except ProcessGone:
            # Somebody else's waitpid took it: the kernel may still have its status.
            recovered = notice.recover()
            if isinstance(recovered, Away):
                return RUNNING  # the pidfd comes back from the relay in a moment
            return None if recovered is None else decode_wait_status(self._pid, recovered)
        return RUNNING if reaped is None else decode_reaped(self._pid, *reaped)

    def send_signal(self, notice: Notice, sig: int, group: bool) -> bool:
        """Signal the child: only the engine reaps it, and the watch's lock is held."""
        assert isinstance(notice, ProcessRef)
        return notice.send_signal(sig, group=group)
