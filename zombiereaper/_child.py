"""Child: the handle to one child process that a Reaper owns.

A Child reads its Watch (zombiereaper._watch) and asks the engine to settle or signal it; it
never settles itself. :func:`on_settled` and :func:`stop_children` are the internal interface
that supervision and the init build on.
"""

from __future__ import annotations

import functools
import math
import os
import shlex
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any, Final, Self

from . import _engine, _fds, _process, _tree
from ._errors import (
    NotOurChildError,
    ReaperError,
    StatusLostError,
    WaitTimeout,
    warn_at_caller,
)

if TYPE_CHECKING:
    import asyncio
    import multiprocessing.process
    from collections.abc import Callable, Sequence
    from types import TracebackType

    from ._engine import Engine
    from ._status import ExitStatus
    from ._watch import Watch

#: The longest command that a Child's repr shows before cutting it short with "...".
_REPR_COMMAND_LENGTH: Final = 40

#: How long a run() child may take to exit after a Ctrl-C before it is killed (Popen.wait's).
_SIGINT_GRACE: Final = 0.25

#: While stopping children, how often those not yet reported are checked directly: their
#: exit must be seen even if what normally reports it (the relay) is stuck (issue 11, race 7).
_STOP_CHECK_INTERVAL = 0.1


class Child:
    """A child process owned by a :class:`~zombiereaper.Reaper`, from start to exit status.

    Made by :meth:`Reaper.spawn` and :meth:`Reaper.watch`; not meant to be built directly. The
    reaping thread records the exit as soon as the child dies, so :attr:`status` fills in by
    itself; :meth:`wait` blocks until then, :meth:`wait_async` awaits it. Signals sent after
    the child has been reaped do nothing: they can never reach another process that was given
    the same pid.

    ``with child:`` stops the child when the block ends, if it still runs; a
    :class:`SpawnedChild` then also closes the pipes of its Popen.

    Attributes:
        pid: The child's process id.
        args: The command it runs (Popen's ``args``), a Process's name, or None for a bare pid.
    """

    def __init__(
        self,
        watch: Watch,
        engine: Engine,
        *,
        args: Any,
        popen: subprocess.Popen[Any] | None = None,
        process: multiprocessing.process.BaseProcess | None = None,
        stop_timeout: float,
    ) -> None:
        self.pid = watch.pid
        self.args = args
        self._watch = watch
        self._engine = engine
        self._popen = popen
        self._process = process
        self._stop_timeout = stop_timeout
        self._owner_pid = os.getpid()

    # --- state ----------------------------------------------------------------------------

    @property
    def popen(self) -> subprocess.Popen[Any] | None:
        """The :class:`subprocess.Popen` of the child, or None if it was not started by one.

        A :class:`SpawnedChild`, which :meth:`Reaper.spawn` returns, types it without None.
        """
        return self._popen

    @property
    def process(self) -> multiprocessing.process.BaseProcess | None:
        """The :class:`multiprocessing.Process` watched, or None."""
        return self._process

    @property
    def status(self) -> ExitStatus | None:
        """How the child ended, or None while it runs (or when its status was lost)."""
        watch = self._watch
        return watch.outcome if watch.settled else None

    @property
    def returncode(self) -> int | None:
        """The ``subprocess``-style return code (-N for signal N), or None while it runs."""
        status = self.status
        return None if status is None else status.returncode

    @property
    def running(self) -> bool:
        """Whether the child has not been reaped yet."""
        return not self._watch.settled

    def _result(self) -> ExitStatus:
        return _result(self._watch)

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
        watch = self._watch
        if not watch.settled:
            # Settled under the watch's lock, by this call or another: either way, once the
            # call returns, a settled watch has its outcome recorded.
            self._engine.settle(watch)
            if not watch.settled:
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
            TypeError: ``timeout`` is not a number or None.
            ValueError: ``timeout`` is NaN.
        """
        check_timeout(timeout, "Child.wait()")
        self._check_process()
        return wait_for_watch(self._watch, timeout, cmd=self.args)

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
        self._check_process()
        return await wait_for_watch_async(self._watch)

    # --- signals ----------------------------------------------------------------------------

    def send_signal(self, sig: int, *, group: bool = False) -> None:
        """Send ``sig`` to the child; do nothing if it has already been reaped.

        The signal goes through the child's pidfd, or through its pid only while its start
        time proves that the pid is still the child's: it never reaches a process that took
        the pid after the child was reaped, by the Reaper or by the child's own ``wait()``.

        Args:
            sig: The signal number.
            group: Send it to the child's whole process group instead (the group whose id is
                the child's pid, as ``process_group=0`` or ``start_new_session=True`` make it).
                On Linux 6.9+ this goes through the pidfd, so it reaches the child's group
                even once the child itself has exited, and never another group.

        Raises:
            NotOurChildError: Called in a forked process, where this pid is not a child.
        """
        self._check_process()
        self._engine.send_signal(self._watch, sig, group=group)

    def terminate(self) -> None:
        """Send SIGTERM to the child (nothing if it has already been reaped)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL to the child (nothing if it has already been reaped)."""
        self.send_signal(signal.SIGKILL)

    def stop(self, timeout: float | None = None, *, tree: bool = False) -> ExitStatus:
        """Stop the child: SIGTERM, wait, then SIGKILL if it still runs, and wait again.

        Args:
            timeout: Seconds between SIGTERM and SIGKILL; None takes the Reaper's
                ``stop_timeout``.
            tree: Stop the child's descendants too: the child and every descendant are
                frozen (SIGSTOP, so that none escapes by forking meanwhile), all get SIGTERM
                and SIGCONT, then up to ``timeout`` seconds to end, and SIGKILL if they still
                run. Each is held by a pidfd, so no signal reaches a process that took a pid
                later. A descendant that was already an orphan (a double-forked daemon) is
                no longer in the tree and is not stopped. Needs pidfds (Linux 5.4+).

        Returns:
            The exit status (already there if the child had exited).

        Raises:
            StatusLostError: Other code reaped the child and took its status.
            TypeError: ``tree`` is not a bool.
            ReaperError: ``tree=True`` on a system without pidfds.

        Warns:
            RuntimeWarning: The child (or, with ``tree``, a descendant) ignored SIGTERM and
                was killed; the warning names each process killed.
        """
        check_tree(tree, "Child.stop()")
        status = self.poll()
        if status is not None:
            return status
        stop_children([self], self._stop_timeout if timeout is None else timeout, tree=tree)
        return self._result()

    # --- protocol ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.running:
            self.stop()

    def __repr__(self) -> str:
        watch = self._watch
        if not watch.settled:
            state = "running"
        elif watch.outcome is None:
            state = "status lost"
        else:
            state = watch.outcome.outcome
        command = _short_command(self.args)
        if command is None:
            return f"<Child pid={self.pid} {state}>"
        return f"<Child pid={self.pid} {command!r} {state}>"


def _short_command(args: Any) -> str | None:
    """``args`` as a shell would read it (``sleep 60``), cut to fit a repr; None if unknown."""
    if args is None:
        return None
    if isinstance(args, str | bytes | os.PathLike):
        # A shell=True command line, a lone program, or a Process's name: already one string.
        command = os.fsdecode(args)
    else:
        try:
            command = shlex.join(os.fsdecode(arg) for arg in args)
        except TypeError:  # neither a string nor a sequence of them: show what it is
            command = str(args)
    if not command:
        return None
    if len(command) > _REPR_COMMAND_LENGTH:
        command = command[: _REPR_COMMAND_LENGTH - 3] + "..."
    return command


class SpawnedChild(Child):
    """A child that :meth:`Reaper.spawn() <zombiereaper.Reaper.spawn>` started.

    A :class:`Child` whose :attr:`popen` is always there (typed ``subprocess.Popen``, never
    None), and whose pipes are the Reaper's to close: ``with reaper.spawn(...) as child:`` stops
    the child if it still runs, then closes the ``stdin``, ``stdout`` and ``stderr`` pipes that
    its Popen opened, as ``with subprocess.Popen(...)`` does. Read what you need from them in
    the block; input still buffered for ``stdin`` is dropped, as the child is gone.
    """

    @property
    def popen(self) -> subprocess.Popen[Any]:
        """The :class:`subprocess.Popen` that started the child."""
        popen = self._popen
        assert popen is not None  # spawn() always gives one, and it never changes
        return popen

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            # Also when stopping was interrupted: the pipes are ours either way.
            close_pipes(self.popen)


class CompletedRun(subprocess.CompletedProcess[Any]):
    """What :meth:`Reaper.run() <zombiereaper.Reaper.run>` returns: a finished child.

    A :class:`subprocess.CompletedProcess` (``args``, ``returncode``, ``stdout``, ``stderr``,
    ``check_returncode()``), with the child's :class:`~zombiereaper.ExitStatus` besides.

    Attributes:
        status: How the child ended, as recorded in the Reaper's registry; ``returncode`` is
            ``status.returncode``.
    """

    def __init__(
        self, args: Any, status: ExitStatus, stdout: Any = None, stderr: Any = None
    ) -> None:
        super().__init__(args, status.returncode, stdout, stderr)
        self.status = status

    @property
    def pid(self) -> int:
        """The pid that the child had."""
        return self.status.pid


class RunPopen(subprocess.Popen[Any]):
    """The Popen of a :meth:`Reaper.run` child, whose ``wait()`` waits for the Reaper's record.

    Popen's own wait() would race the reaping thread to reap the child: winning, it leaves the
    record without the core-dump bit; and when other code has stolen the status, it makes up a
    0 (bpo-15756). Through :attr:`reaped_by`, only the Reaper reaps, and a stolen status is
    raised as StatusLostError. ``communicate()`` calls this wait() once its pipes are done.
    """

    #: The Child that reaps this Popen's process, once it is adopted.
    reaped_by: SpawnedChild | None = None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child's exit as the Reaper records it; see ``Popen.wait``.

        Raises:
            subprocess.TimeoutExpired: The child still ran after ``timeout`` seconds.
            StatusLostError: Other code reaped the child and took its status.
        """
        child = self.reaped_by
        if child is None or _engine.is_reaping_thread():
            return super().wait(timeout)
        try:
            return child.wait(timeout).returncode
        except WaitTimeout as err:
            raise subprocess.TimeoutExpired(self.args, err.timeout) from None
        except KeyboardInterrupt:
            # As Popen.wait does (bpo-25942): the child probably got the same Ctrl-C, so it has
            # a moment to exit by itself before run() kills it.
            try:
                child.wait(_SIGINT_GRACE)
            except WaitTimeout:
                pass
            raise


def close_pipes(popen: subprocess.Popen[Any]) -> None:
    """Close the pipes that ``popen`` opened, in the order ``Popen.__exit__`` closes them.

    Called once the child is gone, or going. Unlike Popen's, what is still buffered for stdin
    is dropped, not flushed: nothing will read it, and writing it could block on a full pipe
    that an orphaned grandchild holds, raise BrokenPipeError, or kill a program that restored
    SIGPIPE's default action (as command-line tools do).
    """
    for stream in (popen.stdout, popen.stderr):
        if stream is not None:
            stream.close()
    stdin = popen.stdin
    if stdin is not None:
        # Closing the descriptor underneath first: the buffering layers above then see it
        # closed, and close without writing (TextIOWrapper -> BufferedWriter -> FileIO).
        raw = getattr(getattr(stdin, "buffer", stdin), "raw", None)
        if raw is not None:
            raw.close()
        stdin.close()


def wait_for_watch(watch: Watch, timeout: float | None, *, cmd: Any = None) -> ExitStatus:
    """Block until ``watch`` is settled; see :meth:`Child.wait` (``cmd`` names it in a timeout)."""
    if not watch.settled:
        if _engine.is_reaping_thread():
            raise ReaperError(
                f"wait() for pid {watch.pid} was called on the reaping thread (from on_exit?), "
                "which would wait for itself; use child.poll() there, or wait from another "
                "thread"
            )
        if not watch.wait(finite_or_none(timeout)):
            raise WaitTimeout(watch.pid, 0.0 if timeout is None else timeout, cmd=cmd)
    return _result(watch)


async def wait_for_watch_async(watch: Watch) -> ExitStatus:
    """Await, in a running event loop, until ``watch`` is settled; see :meth:`Child.wait_async`."""
    import asyncio  # noqa: PLC0415 - importing asyncio costs more than all of zombiereaper

    if not watch.settled:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        # Added under the lock that settling holds while it wakes the waiters, so the wakeup
        # cannot fall between the check and the registration.
        if watch.add_async_waiter(loop, future):
            try:
                await future
            finally:
                watch.remove_async_waiter(loop, future)
    return _result(watch)


def _result(watch: Watch) -> ExitStatus:
    status = watch.outcome
    if status is None:
        raise StatusLostError(watch.pid)
    return status


def on_settled(child: Child, callback: Callable[[Child], object]) -> None:
    """Call ``callback(child)`` on the reaping thread once ``child`` is settled.

    Runs after the Reaper has recorded the outcome and woken the waiters, once per call; an
    exception from it is logged. Supervision and the init are built on this.
    """
    child._engine.on_settled(child._watch, functools.partial(callback, child))


def stop_children(children: Sequence[Child], timeout: float, *, tree: bool = False) -> None:
    """Stop ``children`` together: SIGTERM to all, one shared wait, SIGKILL to the rest.

    Children not yet reported settled are also checked directly while waiting, so that an
    exit is seen even when what normally reports it is stuck: nothing here waits on the relay
    (issue 11, race 7), and a child that has exited is never called one that "still ran".

    With ``tree``, each child's descendants are stopped with it (zombiereaper._tree): all are
    frozen, then SIGTERM, SIGCONT, the shared wait, and SIGKILL for what remains.

    Warns:
        RuntimeWarning: Some ignored SIGTERM and were killed (sent once all are reaped: with
            warnings turned into errors, a warning sent before the SIGKILL would leave them
            running).
    """
    if not children:
        return
    if tree:
        _stop_trees(children, timeout)
        return
    for child in children:
        child.terminate()
    _wait_for(children, time.monotonic() + timeout)
    stubborn = [child for child in children if not child._watch.settled]
    if not stubborn:
        return
    for child in stubborn:
        child.kill()
    _wait_for(stubborn, None)
    if len(stubborn) == 1:
        message = f"pid {stubborn[0].pid} still ran {timeout:g} s after SIGTERM; sent SIGKILL"
    else:
        message = (
            f"{len(stubborn)} children still ran {timeout:g} s after SIGTERM "
            f"(pids {', '.join(str(child.pid) for child in stubborn)}); sent SIGKILL"
        )
    warn_at_caller(message, RuntimeWarning)


def _stop_trees(children: Sequence[Child], timeout: float) -> None:
    """Stop ``children`` and all their descendants; see :func:`stop_children`."""
    stopping, unheld = begin_tree_stop(children)
    try:
        deadline = None if math.isinf(timeout) else time.monotonic() + timeout
        killed = [f"pid {child.pid}" for child in kill_unheld(unheld, deadline)]
        if not stopping.wait(deadline):
            killed += [proc.describe() for proc in stopping.kill()]
            stopping.wait(None)
        # The roots are ours: the Reaper reaps them (also when the relay is stuck).
        _wait_for(children, None)
        _reap_returned(children, stopping)
    finally:
        stopping.close()
    if not killed:
        return
    if len(killed) == 1:
        message = f"{killed[0]} still ran {timeout:g} s after SIGTERM; sent SIGKILL"
    else:
        message = (
            f"{len(killed)} processes still ran {timeout:g} s after SIGTERM "
            f"({', '.join(killed)}); sent SIGKILL"
        )
    warn_at_caller(message, RuntimeWarning)


def begin_tree_stop(children: Sequence[Child]) -> tuple[_tree.TreeStop, list[Child]]:
    """Hold each running child's tree, freeze it, and send it SIGTERM and SIGCONT.

    Returns:
        The trees being stopped, and the children that could not be held (out of
        descriptors): those got a plain SIGTERM, their descendants nothing.

    Raises:
        ReaperError: Pidfds are missing here.
    """
    if not _tree.can_stop_trees():
        raise ReaperError(_NO_TREES)
    roots = []
    unheld = []
    for child in children:
        try:
            root = _hold_root(child)
        except OSError:  # EMFILE, ENFILE, ENOMEM: no room for a pidfd
            unheld.append(child)
            child.terminate()
            continue
        if root is not None:
            roots.append(root)
    stopping = _tree.TreeStop(roots)
    try:
        stopping.terminate()
    except BaseException:
        stopping.close()
        raise
    return stopping, unheld


def kill_unheld(unheld: Sequence[Child], deadline: float | None) -> list[Child]:
    """Wait for ``unheld`` children until ``deadline``, SIGKILL those left; return them."""
    if not unheld:
        return []
    _wait_for(unheld, deadline)
    stubborn = [child for child in unheld if not child._watch.settled]
    for child in stubborn:
        child.kill()
    return stubborn


def _hold_root(child: Child) -> _tree.TreeProcess | None:
    """Hold ``child`` by a pidfd proven to be its own; None once it has exited.

    The pidfd names whatever had the pid when it was opened. The signal 0 that follows goes
    through the child's own machinery, which never reaches a process that took its pid: if it
    reaches the child, the child had the pid all along, so at the opening too.

    Raises:
        OSError: No room for a pidfd (EMFILE, ENFILE, ENOMEM).
    """
    child._check_process()
    try:
        fd = _process.open_pidfd(child.pid)
    except ProcessLookupError:
        return None
    if not child._engine.send_signal(child._watch, 0):
        _fds.close(fd, _fds.generation())
        return None
    return _tree.hold(child.pid, fd)


def _reap_returned(children: Sequence[Child], stopping: _tree.TreeStop) -> None:
    """Reap the descendants that came back to this process (a subreaper), dead now.

    An all-scope Reaper reaps (and records) orphans: it is asked first, for these pids only,
    without their grace (we killed them: nobody else waits for them). What is left, when no
    all scope is installed, is reaped through the pidfds, which reach nothing else.
    """
    engines = {id(child._engine): child._engine for child in children}
    for proc in stopping.members:
        if not proc.root and proc.has_exited():
            for engine in engines.values():
                engine.sweep_all_scope(only=proc.pid, skip_grace=True)
    stopping.reap_returned()


#: Why tree=True is refused.
_NO_TREES: Final = (
    "stopping a process tree needs pidfds (Linux 5.4+) and /proc, which this system lacks; "
    "stop the children alone (tree=False), or put them in a process group and signal it"
)


def check_tree(tree: object, what: str, name: str = "tree") -> None:
    """Refuse a ``tree`` or ``stop_tree`` argument (``name``) that is not a bool.

    Raises:
        TypeError: It is not a bool.
        ReaperError: It is True where trees cannot be stopped (no pidfds).
    """
    if not isinstance(tree, bool):
        raise TypeError(
            f"{what}: {name} must be True or False, got {tree!r} ({type(tree).__name__})"
        )
    if tree and not _tree.can_stop_trees():
        raise ReaperError(f"{what}: {_NO_TREES}")


def _wait_for(children: Sequence[Child], deadline: float | None) -> None:
    """Wait until every child is settled or ``deadline`` (time.monotonic) has passed."""
    pending = list(children)
    while pending:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        step = _STOP_CHECK_INTERVAL if remaining is None else min(remaining, _STOP_CHECK_INTERVAL)
        if pending[0]._watch.wait(step):
            pending.pop(0)
            continue
        for child in pending:
            child._engine.settle(child._watch)
        pending = [child for child in pending if not child._watch.settled]


def check_timeout(timeout: object, what: str) -> None:
    """Refuse a ``timeout`` that is neither None nor a number of seconds.

    Raises:
        TypeError: It is not an int, a float or None.
        ValueError: It is NaN.
    """
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"{what}: timeout must be a number of seconds or None, got {timeout!r} "
            f"({type(timeout).__name__})"
        )
    if math.isnan(timeout):
        raise ValueError(f"{what}: timeout must be a number of seconds or None, got nan")


def finite_or_none(timeout: float | None) -> float | None:
    """A timeout that threading accepts: infinity means no timeout at all."""
    if timeout is None or math.isinf(timeout):
        return None
    return max(0.0, timeout)
