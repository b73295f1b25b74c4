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
import time
from typing import TYPE_CHECKING, Any, Final

from . import _process
from ._backends import Sentinel, open_ref
from ._process import ProcessGone, ProcessRef
from ._status import ExitStatus, decode_wait_status
from ._watch import RUNNING, Known

if TYPE_CHECKING:
    import multiprocessing.process
    import subprocess
    import threading
    from collections.abc import Callable

    from ._backends import BackendName
    from ._watch import Notice, Outcome

#: How long to wait for another waiter that has reaped a child to store its status: the gap
#: between its waitpid returning and its assignment is a few bytecodes.
_OWNER_STORE_TIMEOUT: Final = 1.0

#: How long a forkserver worker's status is left for its owner's join() to read first. The
#: status sits in the sentinel pipe and can be read once: a second, concurrent reader gets EOF
#: and multiprocessing then stores 255. An owner blocked in join() reads it within this time.
_FORKSERVER_OWNER_FIRST: Final = 0.02


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
                # Its own wait() in another thread reaped it since the check.
                return Known(self.read_gone())
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

    def read_exit(self, notice: Notice) -> Outcome:
        """Read the exit through the ref, then reap it under Popen's lock and store the code."""
        popen = self.popen
        if popen.returncode is not None:
            return ExitStatus.from_returncode(popen.pid, popen.returncode)
        assert isinstance(notice, ProcessRef)
        if not _process.can_peek():
            code = popen.poll()  # no waitid: Popen's own machinery, by pid
            return RUNNING if code is None else ExitStatus.from_returncode(self.pid, code)
        try:
            raw = notice.peek()
        except ProcessGone:
            return self.read_gone()
        if raw is None:
            return RUNNING
        lock = _popen_lock(popen)
        if lock is None:
            popen.wait()  # not CPython's Popen: its own wait, on a zombie, returns at once
            return decode_wait_status(self.pid, raw)
        # Blocking is brief: a holder sits in waitpid() on a child that has exited.
        with lock:
            if popen.returncode is None:
                try:
                    notice.reap()
                except ProcessGone:
                    pass  # a stranger took it after our read: the read is still its status
                # What Popen's own wait would store; read before reaping (WNOWAIT), the record
                # keeps the core-dump bit, which Popen drops.
                popen.returncode = os.waitstatus_to_exitcode(raw)
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

    def read_gone(self) -> ExitStatus | None:
        """The status that the Popen's own wait recorded, or None when a stranger took it."""
        popen = self.popen
        lock = _popen_lock(popen)
        if lock is None:
            returncode = popen.returncode
        else:
            # Popen stores returncode under this lock right after its waitpid: holding the
            # lock means a wait in progress in another thread has finished.
            with lock:
                returncode = popen.returncode
        return None if returncode is None else ExitStatus.from_returncode(popen.pid, returncode)


# --- multiprocessing.Process -----------------------------------------------------------------


class ProcessSource:
    """A ``multiprocessing.Process`` worker, whose ``join()`` the application may call too."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process
        pid = process.pid
        assert pid is not None
        self._pid = pid

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

    def _mp_popen(self) -> Any:
        return getattr(self.process, "_popen", None)

    def _returncode(self) -> int | None:
        """The code the Process has stored, without asking it to poll (it would waitpid)."""
        return getattr(self._mp_popen(), "returncode", None)

    def _is_forkserver_worker(self) -> bool:
        return type(self._mp_popen()).__module__.endswith("popen_forkserver")

    def open(self, backend: BackendName) -> ProcessRef | Sentinel | Known:
        """Name the worker if it is our child, else watch its sentinel."""
        if self._returncode() is not None:
            return Known(self.read_gone())
        if self._is_forkserver_worker():
            # Not our child: the fork server is its parent. Its pid may even name a child of
            # ours once it has been reaped there: never open a ref for it.
            return Sentinel(self._pid, self.process.sentinel)
        try:
            ref = open_ref(self._pid, backend)
        except ChildProcessError:
            return Known(self.read_gone())  # its join() reaped it
        if self._returncode() is not None:
            ref.close()
            return Known(self.read_gone())
        return ref

    def read_exit(self, notice: Notice) -> Outcome:
        """Read the exit and store it in the Process before reaping, or let it read its own."""
        if isinstance(notice, Sentinel):
            return self._read_forkserver_exit(notice)
        assert isinstance(notice, ProcessRef)
        if self._returncode() is not None:
            return self.read_gone()  # joined already: its pid may be reused
        if not _process.can_peek():
            code = self.process.exitcode  # no waitid: the Process's own machinery
            return RUNNING if code is None else ExitStatus.from_returncode(self._pid, code)
        try:
            raw = notice.peek()
        except ProcessGone:
            return self.read_gone()
        if raw is None:
            return RUNNING
        status = decode_wait_status(self._pid, raw)
        store_exit_in_process(self.process, status)
        try:
            notice.reap()
        except ProcessGone:
            pass  # its join() reaped it in between: the status is the same
        return status

    def _read_forkserver_exit(self, sentinel: Sentinel) -> Outcome:
        if not sentinel.is_ready():
            return RUNNING
        code = _wait_for_owner(self._returncode, _FORKSERVER_OWNER_FIRST)
        if code is None:
            # exitcode reads the fork server's report from the sentinel (no waitpid there).
            code = _wait_for_owner(lambda: self.process.exitcode, _OWNER_STORE_TIMEOUT)
        return None if code is None else ExitStatus.from_returncode(self._pid, code)

    def send_signal(self, notice: Notice, sig: int, group: bool) -> bool:
        """Signal the worker only while it provably has not been reaped."""
        if isinstance(notice, Sentinel):
            sentinel = notice
            # An unready sentinel means the worker has not ended: a pidfd opened before that
            # check names it.
            return _process.send_signal_checked(
                self._pid, sig, lambda: not sentinel.is_ready(), group=group
            )
        assert isinstance(notice, ProcessRef)
        if self._returncode() is not None:
            return False  # its join() reaped it: the pid may name another child of ours
        return notice.send_signal(sig, group=group)

    def read_gone(self) -> ExitStatus | None:
        """The code the Process stored (its join() reaped the worker), or None."""
        # Only what the Process stored: asking it to poll would waitpid() a pid that may
        # name another child of ours by now. A join() in flight stores it in a moment.
        code = _wait_for_owner(self._returncode, _OWNER_STORE_TIMEOUT)
        return None if code is None else ExitStatus.from_returncode(self._pid, code)


def store_exit_in_process(process: Any, status: ExitStatus) -> None:
    """Give a multiprocessing Process its exit code before its child is reaped.

    multiprocessing has no lock: a join() racing our reap would see ECHILD and keep exitcode
    None forever. With the code stored first, its poll() answers without calling waitpid.
    """
    popen = getattr(process, "_popen", None)
    if popen is not None and getattr(popen, "returncode", 0) is None:
        popen.returncode = status.returncode


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

    def read_gone(self) -> ExitStatus | None:
        """Nobody else may wait for a bare pid: a stranger took its status."""
        return None

    def read_exit(self, notice: Notice) -> Outcome:
        """Reap the child directly."""
        assert isinstance(notice, ProcessRef)
        try:
            raw = notice.reap()
        except ProcessGone:
            return None  # somebody else's waitpid took it
        return RUNNING if raw is None else decode_wait_status(self._pid, raw)

    def send_signal(self, notice: Notice, sig: int, group: bool) -> bool:
        """Signal the child: only the engine reaps it, and the watch's lock is held."""
        assert isinstance(notice, ProcessRef)
        return notice.send_signal(sig, group=group)


def _wait_for_owner(read: Callable[[], int | None], timeout: float) -> int | None:
    value = read()
    deadline = time.monotonic() + timeout
    while value is None and time.monotonic() < deadline:
        time.sleep(0.001)
        value = read()
    return value
