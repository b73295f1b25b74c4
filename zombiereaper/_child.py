"""Child: the handle to one child process that a Reaper owns."""

from __future__ import annotations

import os
import signal
import threading
import warnings
from typing import TYPE_CHECKING, Any, Self

from ._backends import pidfd
from ._errors import NotOurChildError, ReaperError, StatusLostError, WaitTimeout

if TYPE_CHECKING:
    import subprocess
    from types import TracebackType

    from ._backends import Notifier
    from ._engine import Engine
    from ._reaper import Reaper
    from ._status import ExitStatus


class Child:
    """A child process owned by a :class:`~zombiereaper.Reaper`, from start to exit status.

    Made by :meth:`Reaper.spawn`; not meant to be built directly. The reaping thread records
    the exit as soon as the child dies, so :attr:`status` fills in by itself; :meth:`wait`
    blocks until then. Signals sent after the child has been reaped do nothing: they can never
    reach another process that was given the same pid.

    ``with reaper.spawn(...) as child:`` stops the child when the block ends, if it still runs.

    Attributes:
        pid: The child's process id.
        args: The command the child was started with.
        popen: The :class:`subprocess.Popen` that started it, or None.
    """

    def __init__(
        self,
        reaper: Reaper,
        engine: Engine,
        pid: int,
        args: Any,
        popen: subprocess.Popen[Any] | None,
    ) -> None:
        self.pid = pid
        self.args = args
        self.popen = popen
        self._reaper = reaper
        self._engine = engine
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._notifier: Notifier | None = None
        self._settled = False
        self._status: ExitStatus | None = None

    # --- state ----------------------------------------------------------------------------

    @property
    def status(self) -> ExitStatus | None:
        """How the child ended, or None while it runs (or when its status was lost)."""
        return self._status

    @property
    def returncode(self) -> int | None:
        """The ``subprocess``-style return code (-N for signal N), or None while it runs."""
        status = self._status
        return None if status is None else status.returncode

    @property
    def running(self) -> bool:
        """Whether the child has not been reaped yet."""
        return not self._settled

    def _settle(self, status: ExitStatus | None) -> None:
        """Record the outcome (the engine calls this with ``_lock`` held)."""
        self._settled = True
        self._status = status

    def _result(self) -> ExitStatus:
        status = self._status
        if status is None:
            raise StatusLostError(self.pid)
        return status

    def _check_process(self) -> None:
        if os.getpid() != self._owner_pid:
            raise NotOurChildError(
                self.pid,
                f"pid {self.pid} is a child of process {self._owner_pid}, not of this forked "
                "process; install a new Reaper here for the children this process starts",
            )

    # --- waiting ----------------------------------------------------------------------------

    def poll(self) -> ExitStatus | None:
        """Reap the child now if it has exited, without blocking.

        Returns:
            The exit status, or None while the child runs.

        Raises:
            StatusLostError: Other code reaped the child and took its status.
        """
        self._check_process()
        if not self._settled:
            self._engine.settle(self)
            if not self._settled:
                return None
        return self._result()

    def wait(self, timeout: float | None = None) -> ExitStatus:
        """Block until the child exits and return its status.

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.

        Returns:
            The exit status.

        Raises:
            WaitTimeout: The child still ran after ``timeout`` seconds (a TimeoutError).
            StatusLostError: Other code reaped the child and took its status.
            ReaperError: Called from ``on_exit`` on the reaping thread, which would wait for
                itself.
        """
        self._check_process()
        if not self._done.is_set():
            if threading.current_thread() is self._engine.thread:
                raise ReaperError(
                    f"wait() for pid {self.pid} was called on the reaping thread (from on_exit?), "
                    "which would wait for itself; use child.poll() there, or wait from another "
                    "thread"
                )
            if not self._done.wait(timeout):
                raise WaitTimeout(self.pid, 0.0 if timeout is None else timeout)
        return self._result()

    # --- signals ----------------------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child; do nothing if it has already been reaped.

        Raises:
            NotOurChildError: Called in a forked process, where this pid is not a child.
        """
        self._check_process()
        with self._lock:
            if self._settled:
                return
            notifier = self._notifier
            assert notifier is not None
            try:
                if notifier.fileno is not None:
                    # A pidfd names exactly this process, reaped or not: no reuse race at all.
                    notifier.send_signal(sig)
                else:
                    self._send_signal_by_pid(notifier, sig)
            except ProcessLookupError:
                # Its Popen.wait() in another thread reaped it a moment ago: nothing to signal.
                pass

    def _send_signal_by_pid(self, notifier: Notifier, sig: int) -> None:
        # A bare pid is safe to signal only while nobody can reap it (prior-art pitfall 6).
        # The engine reaps under self._lock, which we hold; the owner's Popen reaps under
        # its _waitpid_lock, which we take too if we can.
        popen = self.popen
        lock = getattr(popen, "_waitpid_lock", None) if popen is not None else None
        if popen is None or lock is None:
            notifier.send_signal(sig)
            return
        if lock.acquire(blocking=False):
            try:
                if popen.returncode is None:
                    notifier.send_signal(sig)
            finally:
                lock.release()
            return
        # Another thread sits in popen.wait() and may reap the child at any moment.
        _send_signal_while_owner_waits(self.pid, sig)

    def terminate(self) -> None:
        """Send SIGTERM to the child (nothing if it has already been reaped)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL to the child (nothing if it has already been reaped)."""
        self.send_signal(signal.SIGKILL)

    def stop(self, timeout: float | None = None) -> ExitStatus:
        """Stop the child: SIGTERM, wait, then SIGKILL if it still runs, and wait again.

        Args:
            timeout: Seconds between SIGTERM and SIGKILL; None takes the Reaper's
                ``stop_timeout``.

        Returns:
            The exit status (already there if the child had exited).

        Warns:
            RuntimeWarning: The child ignored SIGTERM and was killed.
        """
        grace = self._reaper.stop_timeout if timeout is None else timeout
        status = self.poll()
        if status is not None:
            return status
        self.terminate()
        try:
            return self.wait(grace)
        except WaitTimeout:
            warnings.warn(
                f"pid {self.pid} still ran {grace:g} s after SIGTERM; sent SIGKILL",
                RuntimeWarning,
                stacklevel=2,
            )
            self.kill()
            return self.wait()

    # --- protocol ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._settled:
            self.stop()

    def __repr__(self) -> str:
        if not self._settled:
            state = "running"
        elif self._status is None:
            state = "status lost"
        else:
            state = self._status.outcome
        return f"<Child pid={self.pid} {state}>"


def _send_signal_while_owner_waits(pid: int, sig: int) -> None:
    """Signal ``pid`` while another thread may be reaping it, without reaching a stranger."""
    if pidfd.is_available():
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                # The pidfd pins whatever process has the pid now; waitid answers ECHILD when
                # that is not our child any more (reaped, maybe reused), so only ours is signalled.
                os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            else:
                signal.pidfd_send_signal(fd, sig)
            finally:
                os.close(fd)
            return
    # No pidfd here (macOS, old kernels, no descriptors left): check that the child has not
    # exited, then signal. The window left is the child exiting, being reaped by the other
    # thread, and its pid being handed to a new process, all between these two calls.
    try:
        if (
            hasattr(os, "waitid")
            and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        ):
            return
    except ChildProcessError:
        return
    os.kill(pid, sig)
