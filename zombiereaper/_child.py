"""Child: the handle to one child process that a Reaper owns."""

from __future__ import annotations

import functools
import math
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Self

from ._errors import (
    NotOurChildError,
    ReaperError,
    StatusLostError,
    WaitTimeout,
    warn_at_caller,
)
from ._owners import PopenOwner, ProcessOwner

if TYPE_CHECKING:
    import asyncio
    import multiprocessing.process
    import subprocess
    from collections.abc import Callable, Sequence
    from types import TracebackType

    from ._engine import Engine
    from ._owners import Owner
    from ._reaper import Reaper
    from ._status import ExitStatus


class Child:
    """A child process owned by a :class:`~zombiereaper.Reaper`, from start to exit status.

    Made by :meth:`Reaper.spawn` and :meth:`Reaper.watch`; not meant to be built directly. The
    reaping thread records the exit as soon as the child dies, so :attr:`status` fills in by
    itself; :meth:`wait` blocks until then, :meth:`wait_async` awaits it. Signals sent after
    the child has been reaped do nothing: they can never reach another process that was given
    the same pid.

    ``with reaper.spawn(...) as child:`` stops the child when the block ends, if it still runs.

    Attributes:
        pid: The child's process id.
        args: The command it runs (Popen's ``args``), a Process's name, or None for a bare pid.
    """

    def __init__(self, reaper: Reaper, engine: Engine, owner: Owner) -> None:
        self.pid = owner.pid
        self.args = owner.args
        self._owner = owner
        self._reaper = reaper
        self._engine = engine
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._settled = False
        self._status: ExitStatus | None = None
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._done_callbacks: list[Callable[[Child], object]] = []

    # --- state ----------------------------------------------------------------------------

    @property
    def popen(self) -> subprocess.Popen[Any] | None:
        """The :class:`subprocess.Popen` of the child, or None if it was not started by one."""
        owner = self._owner
        return owner.popen if isinstance(owner, PopenOwner) else None

    @property
    def process(self) -> multiprocessing.process.BaseProcess | None:
        """The :class:`multiprocessing.Process` watched, or None."""
        owner = self._owner
        return owner.process if isinstance(owner, ProcessOwner) else None

    def _owner_object(self) -> object:
        """The Popen or Process behind the child, or None."""
        return self.popen or self.process

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

    def _finish(self) -> None:
        """Wake every waiter, threads and event loops (the engine calls this once recorded)."""
        self._done.set()
        with self._lock:
            waiters, self._async_waiters = self._async_waiters, []
            callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            self._engine.call_soon(functools.partial(callback, self))
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_wake_future, future)
            except RuntimeError:
                pass  # that event loop is closed: nobody is left to wake

    def _add_done_callback(self, callback: Callable[[Child], object]) -> None:
        """Call ``callback(child)`` on the reaping thread once the child is settled."""
        with self._lock:
            if not self._done.is_set():
                self._done_callbacks.append(callback)
                return
        self._engine.call_soon(functools.partial(callback, self))

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
            if not self._done.wait(finite_or_none(timeout)):
                raise WaitTimeout(self.pid, 0.0 if timeout is None else timeout)
        return self._result()

    async def wait_async(self) -> ExitStatus:
        """Wait, in a running event loop, until the child exits, and return its status.

        The reaping thread resolves the wait through ``loop.call_soon_threadsafe``: nothing
        polls. Cancelling the wait (``asyncio.wait_for`` with a timeout, say) leaves nothing
        behind, and the child runs on.

        Returns:
            The exit status.

        Raises:
            StatusLostError: Other code reaped the child and took its status.
        """
        import asyncio  # noqa: PLC0415 - importing asyncio costs more than all of zombiereaper

        self._check_process()
        if not self._done.is_set():
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            waiter = (loop, future)
            with self._lock:
                # Checked under the lock that _finish() takes to collect the waiters, so the
                # wakeup cannot fall between the check and the registration.
                if not self._done.is_set():
                    self._async_waiters.append(waiter)
                else:
                    future.set_result(None)
            try:
                await future
            finally:
                with self._lock:
                    if waiter in self._async_waiters:
                        self._async_waiters.remove(waiter)
        return self._result()

    # --- signals ----------------------------------------------------------------------------

    def send_signal(self, sig: int, *, group: bool = False) -> None:
        """Send ``sig`` to the child; do nothing if it has already been reaped.

        Args:
            sig: The signal number.
            group: Send it to the child's whole process group instead (the group whose id is
                the child's pid, as ``process_group=0`` or ``start_new_session=True`` make it).
                Until the child is reaped its pid cannot be reused, so neither can the group id.

        Raises:
            NotOurChildError: Called in a forked process, where this pid is not a child.
        """
        self._check_process()
        with self._lock:
            if self._settled:
                return
            try:
                if group:
                    os.killpg(self.pid, sig)
                else:
                    self._owner.send_signal(sig)
            except ProcessLookupError:
                # Its own waiter in another thread reaped it a moment ago: nothing to signal.
                pass

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
            self.kill()
            status = self.wait()
            # Warned only once it is reaped: with warnings turned into errors, a warning sent
            # before the SIGKILL would leave the child running.
            warn_at_caller(
                f"pid {self.pid} still ran {grace:g} s after SIGTERM; sent SIGKILL", RuntimeWarning
            )
            return status

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


def stop_children(children: Sequence[Child], timeout: float) -> None:
    """Stop ``children`` together: SIGTERM to all, one shared wait, SIGKILL to the rest.

    Warns:
        RuntimeWarning: Some ignored SIGTERM and were killed (sent once all are reaped: with
            warnings turned into errors, a warning sent before the SIGKILL would leave them
            running).
    """
    if not children:
        return
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        child._done.wait(finite_or_none(deadline - time.monotonic()))
    stubborn = [child for child in children if not child._done.is_set()]
    if not stubborn:
        return
    for child in stubborn:
        child.kill()
    for child in stubborn:
        child._done.wait()
    warn_at_caller(
        f"{len(stubborn)} child(ren) still ran {timeout:g} s after SIGTERM "
        f"(pids {', '.join(str(child.pid) for child in stubborn)}); sent SIGKILL",
        RuntimeWarning,
    )


def finite_or_none(timeout: float | None) -> float | None:
    """A timeout that threading accepts: infinity means no timeout at all."""
    if timeout is None or math.isinf(timeout):
        return None
    return max(0.0, timeout)


def _wake_future(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
