"""Reaper: the public front of the library."""

from __future__ import annotations

import collections
import functools
import logging
import os
import random
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Final, Literal, NamedTuple, Self, TypeAlias, TypeGuard

from . import _engine, _linux
from ._backends import BackendName, resolve_backend
from ._child import (
    Child,
    CompletedRun,
    RunPopen,
    SpawnedChild,
    check_timeout,
    check_tree,
    close_pipes,
    stop_children,
    wait_for_watch,
    wait_for_watch_async,
)
from ._detach import DEFAULT_CWD, check_command, command_argv, spawn_detached
from ._errors import (
    NotInstalledError,
    NotOurChildError,
    ReaperError,
    StatusLostError,
)
from ._orphans import DEFAULT_GRACE, AllScope, wait_for_child, wait_for_child_async
from ._owners import PidSource, PopenSource, ProcessSource
from ._registry import Registry, record_exit
from ._status import ExitStatus

if TYPE_CHECKING:
    import multiprocessing.process
    from types import TracebackType

    from ._supervise import Backoff, Clock, Intensity, RestartPolicy, Service, ServiceEvent
    from ._watch import Watch

logger = logging.getLogger("zombiereaper")

Scope: TypeAlias = Literal["owned", "all"]
_SCOPES: Final = ("owned", "all")

_Arg: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"
#: What ``subprocess.Popen`` takes as its first argument.
Command: TypeAlias = "_Arg | Sequence[_Arg]"
OnExit: TypeAlias = Callable[[ExitStatus], object]
_Source: TypeAlias = "PopenSource | ProcessSource | PidSource"

#: Every installed Reaper, for wait(pid) in the all scope and the at-fork reset.
_installed: weakref.WeakSet[Reaper] = weakref.WeakSet()


class _Live(NamedTuple):
    """A child that a Reaper owns and that has not been settled: its Watch and its handle."""

    watch: Watch
    child: Child


def _is_process(target: object) -> TypeGuard[multiprocessing.process.BaseProcess]:
    """Whether ``target`` is a ``multiprocessing`` Process, without importing multiprocessing.

    An object can only be one if multiprocessing was imported (by whoever made it).
    """
    module = sys.modules.get("multiprocessing.process")
    return module is not None and isinstance(target, module.BaseProcess)


class Reaper:
    """Reaps the children it starts as soon as they exit, and keeps a record of each exit.

    A Reaper owns the children it spawns (or watches) and, in the default owned scope, reaps
    only those: children that ``subprocess``, ``multiprocessing`` or asyncio start for other
    code keep their exact exit codes. With ``scope="all"`` (for PID 1 and subreapers) it also
    reaps orphans and leaked children, still leaving alone those whose owners wait for them.
    Every installed Reaper in the process shares one reaping thread.

    Use it as a context manager, which installs it and, on the way out, stops every child it
    spawned that still runs (SIGTERM, then SIGKILL after ``stop_timeout`` seconds)::

        with Reaper() as reaper:
            child = reaper.spawn(["sleep", "1"])
            print(child.wait())

    Args:
        scope: ``"owned"`` (the default) reaps only the children this Reaper started or
            watches; ``"all"`` reaps every child of the process, orphans included, after
            ``grace`` seconds for those it cannot tie to an owner. One all-scope Reaper at most
            may be installed at a time.
        history: How many exit records :attr:`registry` keeps; the oldest goes first.
        on_exit: Called with each :class:`ExitStatus` recorded, on the reaping thread, once per
            child (in the all scope, also for other code's children that it sees exit); never
            for a status that other code took. An exception in it is logged to the
            ``zombiereaper`` logger and reaping goes on.
        stop_timeout: Seconds between SIGTERM and SIGKILL when children are stopped.
        backend: ``"pidfd"``, ``"sigchld"``, or None to take pidfd where the system has it.
        grace: All scope: seconds a zombie child that no owner can be found for is left to
            whoever may still wait for it before it is reaped (0.75 by default).
        subreaper: All scope, Linux: make this process a child subreaper while installed, so
            that orphaned descendants (double-forked daemons included) come back to it.
        stop_tree: When the Reaper is uninstalled, stop each child with its descendants
            (:meth:`Child.stop` with ``tree=True``): the whole trees are frozen, then get
            SIGTERM, and SIGKILL after ``stop_timeout``. Also the default of
            :meth:`supervise`'s ``stop_tree``. Needs pidfds (Linux 5.4+).

    Raises:
        TypeError: ``stop_tree`` is not a bool.
        ValueError: An argument is out of range or not one of the choices.
        BackendUnavailableError: ``backend="pidfd"`` on a system without pidfds.
        ReaperError: ``subreaper=True`` without ``scope="all"``, or where the system has no
            subreaper flag; ``stop_tree=True`` where it has no pidfds.
    """

    def __init__(
        self,
        *,
        scope: Scope = "owned",
        history: int = 10_000,
        on_exit: OnExit | None = None,
        stop_timeout: float = 5.0,
        backend: BackendName | None = None,
        grace: float = DEFAULT_GRACE,
        subreaper: bool = False,
        stop_tree: bool = False,
    ) -> None:
        check_tree(stop_tree, "Reaper()", "stop_tree")
        if scope not in _SCOPES:
            raise ValueError(f"scope must be 'owned' or 'all', got {scope!r}")
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
            raise ValueError(f"grace must be a number of seconds >= 0, got {grace!r}")
        if subreaper and scope != "all":
            raise ReaperError(
                "subreaper=True needs scope='all': orphans that come back to a subreaper are "
                "nobody's children but ours, and only the all scope reaps them"
            )
        if scope == "all" and not _linux.can_list_children():
            raise ReaperError(
                "scope='all' finds zombie children through /proc, which this system lacks; "
                "use scope='owned' and spawn() or watch() each child"
            )
        if subreaper and not _linux.can_be_subreaper():
            raise ReaperError(
                "subreaper=True needs Linux 3.4+ (prctl PR_SET_CHILD_SUBREAPER); this system "
                "has no child subreaper flag"
            )
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            raise ValueError(f"history must be an int >= 0, got {history!r}")
        if isinstance(stop_timeout, bool) or not isinstance(stop_timeout, int | float):
            raise ValueError(f"stop_timeout must be a number of seconds, got {stop_timeout!r}")
        if not stop_timeout >= 0:
            raise ValueError(f"stop_timeout must be >= 0 seconds, got {stop_timeout!r}")
        if on_exit is not None and not callable(on_exit):
            raise ValueError(f"on_exit must be callable or None, got {on_exit!r}")
        self._scope: Scope = scope
        self._backend: BackendName = resolve_backend(backend)
        self._on_exit = on_exit
        self._stop_timeout = float(stop_timeout)
        self._registry = Registry(history)
        self._lock = threading.Lock()
        #: Signalled when the last spawn() or watch() in flight has published its child.
        self._adoptions_done = threading.Condition(self._lock)
        self._adoptions = 0
        #: uninstall() has begun: no new child may be adopted.
        self._closing = False
        #: pid -> the live children, published only once fully registered with the engine.
        self._live: dict[int, _Live] = {}
        self._records = _ChildRecords(self)
        #: Children whose exit the all-scope sweep announced before a watch() settled them.
        self._announced: set[int] = set()
        # Popen and Process objects already watched, so that watching one again, even after
        # it exited, returns the same Child.
        # Keyed by id(): a WeakKeyDictionary would never let go, as each Child holds its target.
        # While an entry lives, its Child keeps the target alive, so the id cannot be reused.
        self._by_target: weakref.WeakValueDictionary[int, Child] = weakref.WeakValueDictionary()
        self._engine: _engine.Engine | None = None
        # pids whose status other code took (bounded like the registry): wait() says so.
        self._lost: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._grace = float(grace)
        self._subreaper = subreaper
        self._stop_tree = stop_tree
        self._subreaper_before: bool | None = None
        self._all_scope: AllScope | None = None
        self._services: list[Service] = []

    # --- configuration and state --------------------------------------------------------------

    @property
    def scope(self) -> Scope:
        """Which children this Reaper reaps."""
        return self._scope

    @property
    def backend(self) -> BackendName:
        """The way this Reaper notices exits, ``"pidfd"`` or ``"sigchld"``."""
        return self._backend

    @property
    def stop_timeout(self) -> float:
        """Seconds between SIGTERM and SIGKILL when children are stopped."""
        return self._stop_timeout

    @property
    def stop_tree(self) -> bool:
        """Whether uninstalling stops each child's descendants with it."""
        return self._stop_tree

    @property
    def installed(self) -> bool:
        """Whether the Reaper is installed (and can spawn)."""
        return self._engine is not None

    @property
    def registry(self) -> Registry:
        """Map pid -> latest :class:`ExitStatus`, read-only, bounded by ``history``, thread-safe."""
        return self._registry

    @property
    def children(self) -> tuple[Child, ...]:
        """The children this Reaper owns that have not been reaped yet."""
        with self._lock:
            return tuple(live.child for live in self._live.values())

    # --- installing ---------------------------------------------------------------------------

    def install(self) -> Self:
        """Start reaping: join the process's reaping thread (starting it if needed).

        A Reaper that relies on SIGCHLD (``backend="sigchld"`` or ``scope="all"``) installed
        from the main thread also installs the SIGCHLD handler that wakes the thread, chained
        to the handler that was there; a pidfd Reaper needs no signal and leaves SIGCHLD as
        it is, so exits do not interrupt the main thread. Either resets SIGCHLD from SIG_IGN,
        which would discard every exit status. Any other thread may install too, without a
        handler (the sigchld backend and the all scope then find exits on a timer).

        Returns:
            The Reaper itself, to chain: ``reaper = Reaper().install()``.

        Raises:
            ReaperError: Already installed; or SIGCHLD is SIG_IGN and this is not the main thread.
        """
        with self._lock:
            if self._engine is not None:
                raise ReaperError(
                    "this Reaper is already installed; pair each install() with one uninstall()"
                )
            engine = _engine.acquire(signals=self._backend == "sigchld" or self._scope == "all")
            try:
                if self._scope == "all":
                    self._all_scope = AllScope(_OrphanRecords(self), self._grace)
                    engine.attach_all_scope(self._all_scope)
                if self._subreaper:
                    self._subreaper_before = _linux.is_child_subreaper()
                    _linux.set_child_subreaper(True)
            except BaseException:
                if self._all_scope is not None:
                    engine.detach_all_scope(self._all_scope)
                    self._all_scope = None
                _engine.release()
                raise
            self._engine = engine
            _installed.add(self)
        return self

    def uninstall(self) -> None:
        """Stop every Service and every child this Reaper still owns, reap them, stop reaping.

        Services stop first, the newest first; then children get SIGTERM, and SIGKILL after
        ``stop_timeout`` seconds. No child of this Reaper outlives the call, as a process or
        as a zombie; with ``stop_tree=True`` neither do their descendants, but for those that
        were orphans already (a double-forked daemon). Does nothing when the Reaper is not
        installed.

        Interrupted (a KeyboardInterrupt while it waits for children to stop), the Reaper
        stays installed, with the children that still run: call ``uninstall()`` again.

        Warns:
            RuntimeWarning: Some children ignored SIGTERM and were killed.
        """
        with self._lock:
            engine = self._engine
            if engine is None or self._closing:
                return
            if threading.current_thread() is engine.thread and (self._live or self._adoptions):
                raise ReaperError(
                    "uninstall() cannot stop children from the reaping thread (from on_exit?); "
                    "call it from another thread"
                )
            # From now on spawn() and watch() refuse; those already under way publish their
            # child first, so that the stop below sees every child (issue 11, race 2).
            self._closing = True
            try:
                self._adoptions_done.wait_for(lambda: not self._adoptions)
            except BaseException:
                self._closing = False  # interrupted (Ctrl-C): still installed, as before
                raise
        try:
            with self._lock:
                services = list(self._services)
            for service in reversed(services):
                service.stop()
                with self._lock:
                    if service in self._services:
                        self._services.remove(service)
            # It may raise its RuntimeWarning (as an error, under -W error) once all are reaped.
            self._stop_children(engine)
        except BaseException:
            with self._lock:
                interrupted = bool(self._live or self._services)
                if interrupted:
                    # Leaving now would stop the engine under children that still run: their
                    # exits could never be recorded. Still installed: uninstall() again.
                    self._closing = False
            if not interrupted:
                self._leave(engine)
            raise
        self._leave(engine)

    def _leave(self, engine: _engine.Engine) -> None:
        with self._lock:
            self._engine = None
            self._closing = False
        _installed.discard(self)
        try:
            if self._all_scope is not None:
                # Orphans still in their grace would stay zombies for good once nobody sweeps.
                engine.sweep_all_scope(skip_grace=True)
        finally:
            if self._all_scope is not None:
                engine.detach_all_scope(self._all_scope)
                self._all_scope = None
            if self._subreaper_before is not None:
                # Restored, not cleared: an outer init may have made this process a subreaper.
                _linux.set_child_subreaper(self._subreaper_before)
                self._subreaper_before = None
            _engine.release()

    def __enter__(self) -> Self:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    def _stop_children(self, engine: _engine.Engine) -> None:
        stop_children(self.children, self._stop_timeout, tree=self._stop_tree)

    def _begin_adoption(self, what: str) -> _engine.Engine:
        """Count a spawn() or watch() in flight (uninstall() waits for it to publish)."""
        with self._lock:
            engine = self._engine
            if engine is None or self._closing:
                raise self._not_installed(what)
            self._adoptions += 1
            return engine

    def _end_adoption(self) -> None:
        with self._lock:
            self._adoptions -= 1
            if not self._adoptions and self._closing:  # only uninstall() waits for it
                self._adoptions_done.notify_all()

    # --- children -----------------------------------------------------------------------------

    def spawn(self, args: Command, **popen_kwargs: Any) -> SpawnedChild:
        """Start a child through :class:`subprocess.Popen` and own it.

        Every Popen keyword works (``cwd``, ``env``, ``stdin``/``stdout``/``stderr``,
        ``pass_fds``, ``start_new_session``, ``process_group``...). The returned
        :attr:`SpawnedChild.popen` stays fully usable: ``popen.wait()`` and
        ``popen.returncode`` keep the real code even though the Reaper reaps the child.

        Args:
            args: The program and its arguments, as Popen takes them.
            **popen_kwargs: Passed to :class:`subprocess.Popen` unchanged.

        Returns:
            The handle to the new child, whose ``popen`` is never None.

        Raises:
            NotInstalledError: The Reaper is not installed.
            ValueError: ``args`` is an empty list (Popen would raise an IndexError).
            FileNotFoundError: The program does not exist (as Popen raises it).
            PermissionError: The program cannot be executed (as Popen raises it).
        """
        return self._spawn("spawn()", args, popen_kwargs, subprocess.Popen)

    def _spawn(
        self,
        what: str,
        args: Command,
        popen_kwargs: dict[str, Any],
        popen_class: type[subprocess.Popen[Any]],
    ) -> SpawnedChild:
        check_command(args)
        engine = self._begin_adoption(what)
        try:
            with engine.spawning():
                popen = popen_class(args, **popen_kwargs)
                try:
                    child = self._adopt(engine, PopenSource(popen), popen, fresh=True)
                except BaseException:
                    # Nothing may be left behind: no process, no zombie, no record, no pipe.
                    popen.kill()
                    popen.wait()
                    close_pipes(popen)
                    raise
        finally:
            self._end_adoption()
        assert isinstance(child, SpawnedChild)
        return child

    def run(
        self,
        args: Command,
        *,
        input: str | bytes | None = None,
        capture_output: bool = False,
        timeout: float | None = None,
        check: bool = False,
        **popen_kwargs: Any,
    ) -> CompletedRun:
        """Run a program to its end, as :func:`subprocess.run` does, as a child of this Reaper.

        The child is spawned (:meth:`spawn`), fed ``input``, its output collected, and its
        exit recorded like any spawned child's: in :attr:`registry`, and once to ``on_exit``.
        Only the Reaper reaps it, so the status is exact (``core_dumped`` included). Its pipes
        are closed before this returns or raises. A timeout, a KeyboardInterrupt or any other
        exception while the child runs kills it and waits until it is reaped before the
        exception propagates, as :func:`subprocess.run` does (after a Ctrl-C, the child first
        has a quarter of a second to exit by itself, as it probably got the SIGINT too).

        Args:
            args: The program and its arguments, as Popen takes them.
            input: Written to the child's stdin, which is then closed: bytes, or str in text
                mode (``text``, ``encoding``, ``errors`` or ``universal_newlines``). Not with a
                ``stdin`` argument.
            capture_output: Collect stdout and stderr (``stdout=PIPE, stderr=PIPE``). Not with
                a ``stdout`` or ``stderr`` argument.
            timeout: Seconds that the child may take, or None. When they run out, the child is
                killed and reaped, then ``subprocess.TimeoutExpired`` is raised with the output
                collected so far (as bytes, as subprocess gives it).
            check: Raise ``subprocess.CalledProcessError`` (with ``output`` and ``stderr``)
                when the child does not exit with code 0.
            **popen_kwargs: Passed to :class:`subprocess.Popen` unchanged (``stdout=PIPE``,
                ``text=True``, ``cwd``, ``env``...).

        Returns:
            A :class:`CompletedRun`: a ``subprocess.CompletedProcess`` with the child's
            :class:`ExitStatus` as ``status`` (``returncode`` is its return code).

        Raises:
            NotInstalledError: The Reaper is not installed.
            ValueError: ``args`` is empty, ``input`` or ``capture_output`` comes with the
                streams that it sets, or ``timeout`` is NaN.
            FileNotFoundError: The program does not exist (as Popen raises it).
            PermissionError: The program cannot be executed (as Popen raises it).
            subprocess.TimeoutExpired: ``timeout`` ran out; the child has been killed and
                reaped.
            subprocess.CalledProcessError: ``check=True`` and a non-zero return code.
            StatusLostError: Other code reaped the child and took its status (a
                ``waitpid(-1)`` loop, or ``SIGCHLD`` set to ``SIG_IGN``): no return code is made
                up, and the output is dropped.
            TypeError: ``timeout`` is not a number or None.
        """
        check_timeout(timeout, "run()")
        if input is not None:
            if popen_kwargs.get("stdin") is not None:
                raise ValueError(
                    "stdin and input may not both be used: input is written to the child's "
                    "stdin through a pipe; drop one of them"
                )
            popen_kwargs["stdin"] = subprocess.PIPE
        if capture_output:
            if popen_kwargs.get("stdout") is not None or popen_kwargs.get("stderr") is not None:
                raise ValueError(
                    "stdout and stderr may not be used with capture_output=True, which sets "
                    "both to subprocess.PIPE; drop one or the other"
                )
            popen_kwargs["stdout"] = subprocess.PIPE
            popen_kwargs["stderr"] = subprocess.PIPE
        child = self._spawn("run()", args, popen_kwargs, RunPopen)
        popen = child.popen
        assert isinstance(popen, RunPopen)
        popen.reaped_by = child
        try:
            try:
                stdout, stderr = popen.communicate(input, timeout=timeout)
            except BaseException:
                # A timeout, a KeyboardInterrupt (the child has had its moment to exit on the
                # same SIGINT), bad input: the child goes, and is reaped before the error
                # propagates. TimeoutExpired holds the output so far, as subprocess.run's does.
                if child.running:
                    child.kill()
                    child.wait()
                raise
            status = child.wait()
        finally:
            close_pipes(popen)
            popen.reaped_by = None  # no cycle: the Child holds the Popen
            if popen.returncode is None and not child.running:
                # The status was lost. Never read; set so that Popen's __del__ does not queue
                # the pid for a later waitpid, which could reap a process that reused it.
                popen.returncode = 0
        if check and status.returncode != 0:
            raise subprocess.CalledProcessError(
                status.returncode, popen.args, output=stdout, stderr=stderr
            )
        return CompletedRun(popen.args, status, stdout, stderr)

    def watch(
        self, target: int | subprocess.Popen[Any] | multiprocessing.process.BaseProcess
    ) -> Child:
        """Own a child that other code started, and record its exit like a spawned one's.

        The owner's own API keeps working exactly: ``popen.wait()``/``popen.returncode`` and
        ``process.join()``/``process.exitcode`` give the real code, whoever notices the exit
        first, because the status is taken through the owner's own machinery. Watching a child
        that has already exited records it at once; watching the same target again returns the
        same Child.

        Args:
            target: A started :class:`subprocess.Popen`, a started
                :class:`multiprocessing.Process` (any start method: a forkserver worker is not
                even our child, and is followed through its sentinel), or the pid of a direct
                child that no other code waits for (from ``os.fork()``, say).

        Returns:
            The handle to the child.

        Raises:
            NotInstalledError: The Reaper is not installed.
            NotOurChildError: ``target`` is a pid that is not an unreaped child of this process.
            TypeError: ``target`` is none of the above.
            ValueError: ``target`` is a Process that has not been started, or a pid <= 0.
        """
        source: _Source
        key: object | None = None
        if isinstance(target, subprocess.Popen):
            source, key = PopenSource(target), target
        elif _is_process(target):
            if target.pid is None:
                raise ValueError(f"{target!r} has not been started: call start() before watch()")
            if target._parent_pid != os.getpid():  # type: ignore[attr-defined]
                raise NotOurChildError(
                    target.pid,
                    f"{target!r} was started by another process; only the process that started "
                    "it can watch it",
                )
            source, key = ProcessSource(target), target
        elif isinstance(target, int) and not isinstance(target, bool):
            if target <= 0:
                raise ValueError(f"watch() takes the pid of one child (> 0), got {target}")
            source = PidSource(target)
        else:
            raise TypeError(
                "watch() takes a pid, a subprocess.Popen or a multiprocessing.Process, "
                f"got {type(target).__name__}"
            )
        engine = self._begin_adoption("watch()")
        try:
            with self._lock:
                live = self._live.get(source.pid)
                known = live.child if live is not None else None
                if known is None and key is not None:
                    known = self._by_target.get(id(key))
                if known is not None and (key is None or key in (known.popen, known.process)):
                    return known
            try:
                return self._adopt(engine, source, key)
            except ChildProcessError:
                raise NotOurChildError(
                    source.pid,
                    f"pid {source.pid} is not a child of this process, or other code has reaped "
                    "it already; watch() takes direct children only (pass the subprocess.Popen "
                    "or multiprocessing.Process itself when there is one)",
                ) from None
        finally:
            self._end_adoption()

    def _adopt(
        self, engine: _engine.Engine, source: _Source, key: object | None, *, fresh: bool = False
    ) -> Child:
        """Register the child with the engine, then publish its handle.

        Published only once fully registered: until then reap(), children, terminate() and
        uninstall() cannot see it (issue 11, races 1 and 2). A child settled at once (its
        owner had reaped it) is never published: the sink has recorded it already.
        """
        watch = engine.register(source, self._records, self._backend, fresh=fresh)
        child: Child
        if fresh and isinstance(source, PopenSource):
            # Started by spawn(): its Popen, and the pipes that it opened, are ours.
            child = SpawnedChild(
                watch, engine, args=source.args, popen=source.popen, stop_timeout=self._stop_timeout
            )
        else:
            child = Child(
                watch,
                engine,
                args=source.args,
                popen=source.popen if isinstance(source, PopenSource) else None,
                process=source.process if isinstance(source, ProcessSource) else None,
                stop_timeout=self._stop_timeout,
            )
        with self._lock:
            # Checked under the lock that the sink takes to drop a settled child: either the
            # child is published before the sink drops it, or the sink has run already.
            if watch.watching:
                self._live[child.pid] = _Live(watch, child)
            if key is not None:
                self._by_target[id(key)] = child
        return child

    def supervise(
        self,
        args: Command | None = None,
        *,
        target: Callable[..., object] | None = None,
        name: str | None = None,
        replicas: int = 1,
        restart: RestartPolicy = "on-failure",
        backoff: Backoff | None = None,
        intensity: Intensity | None = None,
        stop_timeout: float | None = None,
        stop_tree: bool | None = None,
        on_event: Callable[[ServiceEvent], object] | None = None,
        target_args: Sequence[Any] = (),
        target_kwargs: Mapping[str, Any] | None = None,
        start_method: str | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        **spawn_kwargs: Any,
    ) -> Service:
        """Keep ``replicas`` copies of a program or a Python callable running.

        Each copy that exits is restarted by ``restart``: ``"always"``, ``"on-failure"``
        (a non-zero exit or a fatal signal) or ``"never"``, after a ``backoff`` delay. When
        restarts come faster than ``intensity`` allows, the Service gives up: it stops its
        copies and ends ``failed``. Leaving the Reaper's ``with`` block stops every Service, the
        newest first.

        Args:
            args: The program to run, as :meth:`spawn` takes it.
            target: Or a Python callable, run in a ``multiprocessing`` Process.
            name: The Service's name in events and logs (the program's or callable's name).
            replicas: How many copies to keep (>= 1).
            restart: The restart policy.
            backoff: The delays between restarts (:class:`Backoff` defaults: 0.1 s doubling up
                to 30 s, 10 % jitter, reset after 10 s up).
            intensity: At most this many restarts in this period (:class:`Intensity`
                defaults: 5 in 60 s).
            stop_timeout: Seconds between SIGTERM and SIGKILL when copies are stopped (None:
                the Reaper's; ``math.inf``: never SIGKILL).
            stop_tree: Stop each copy with its descendants (see :meth:`Child.stop`'s
                ``tree``) whenever copies are stopped; None: the Reaper's ``stop_tree``.
            on_event: Called with each :class:`ServiceEvent`; events are also logged.
            target_args: Positional arguments for ``target``.
            target_kwargs: Keyword arguments for ``target``.
            start_method: The multiprocessing start method for ``target`` (None: the default).
            clock: Where time is read and restarts are scheduled (tests pass a
                :class:`~zombiereaper.testing.ManualClock`); the real clock by default.
            rng: The random source of the backoff jitter.
            **spawn_kwargs: Popen keywords for each copy of ``args``.

        Returns:
            The running Service.

        Raises:
            TypeError: An argument of the wrong type (``backoff=5``, ``target=42``,
                ``stop_tree="yes"``...).
            ValueError: Both or neither of ``args`` and ``target``, ``replicas`` < 1, an unknown
                policy or start method, a negative ``stop_timeout``, an empty ``args`` or
                ``name``, Popen keywords with ``target``, or ``target_args``,
                ``target_kwargs`` or ``start_method`` with ``args``.
            NotInstalledError: The Reaper is not installed.
            FileNotFoundError: The program does not exist (raised at once, nothing started).
        """
        # Imported here: a program that never supervises does not pay for it.
        from ._supervise import (  # noqa: PLC0415
            Backoff,
            EngineClock,
            Intensity,
            Service,
            check_supervise_arguments,
            process_starter,
        )
        from ._supervise import launch as launch_service  # noqa: PLC0415

        check_supervise_arguments(
            args=args, target=target, name=name, replicas=replicas, restart=restart,
            backoff=backoff, intensity=intensity, stop_timeout=stop_timeout, on_event=on_event,
            target_args=target_args, target_kwargs=target_kwargs, start_method=start_method,
            clock=clock, rng=rng, spawn_kwargs=spawn_kwargs,
        )  # fmt: skip
        if stop_tree is not None:
            check_tree(stop_tree, "supervise()", "stop_tree")
        engine = self._engine
        if engine is None:
            raise self._not_installed("supervise()")
        start: Callable[[], Child]
        if args is not None:
            program = args
            start = functools.partial(self.spawn, program, **spawn_kwargs)
            default_name = os.path.basename(command_argv(program)[0])
        else:
            assert target is not None
            start = process_starter(self, target, target_args, target_kwargs or {}, start_method)
            default_name = getattr(target, "__name__", "target")
        service = Service(
            self,
            name=name or default_name,
            start=start,
            replicas=replicas,
            restart=restart,
            backoff=backoff or Backoff(),
            intensity=intensity or Intensity(),
            stop_timeout=stop_timeout,
            stop_tree=self._stop_tree if stop_tree is None else stop_tree,
            on_event=on_event,
            clock=clock or EngineClock(engine),
            rng=rng or random.Random(),
        )
        try:
            launch_service(service)
        except BaseException:
            service.stop()
            raise
        with self._lock:
            self._services.append(service)
        return service

    @property
    def services(self) -> tuple[Service, ...]:
        """The Services this Reaper supervises, oldest first."""
        with self._lock:
            return tuple(self._services)

    def _not_installed(self, what: str) -> NotInstalledError:
        return NotInstalledError(
            f"{what} needs an installed Reaper: use `with Reaper() as reaper:` or call "
            "reaper.install() first"
        )

    def wait(self, pid: int, timeout: float | None = None) -> ExitStatus:
        """Wait for the child ``pid`` and return its exit status.

        In the owned scope ``pid`` must be a child this Reaper spawned or watches. In the all
        scope it may be any child of the process (a reparented daemon, say); a child that
        other code waits for is never taken from it: the status is read without reaping.

        Args:
            pid: The child's pid.
            timeout: Seconds to wait at most; None waits as long as it takes.

        Raises:
            NotOurChildError: ``pid`` is not a child this Reaper can wait for (or its record
                left the history).
            WaitTimeout: The child still ran after ``timeout`` seconds (a TimeoutError).
            TypeError: ``pid`` is not an int, or ``timeout`` not a number or None.
            ValueError: ``pid`` is not > 0, or ``timeout`` is NaN.
        """
        _check_pid(pid, "wait()")
        check_timeout(timeout, "wait()")
        watch = self._watch_for(pid)
        if watch is not None:
            return wait_for_watch(watch, timeout)
        if self._all_scope is not None:
            try:
                status = wait_for_child(pid, timeout)
            except (NotOurChildError, StatusLostError) as err:
                return self._recorded_after(pid, err)
            return self._after_waiting(pid, status)
        return self._recorded(pid)

    def _watch_for(self, pid: int) -> Watch | None:
        """The live Watch for ``pid``: ours, or, in the all scope, another Reaper's."""
        with self._lock:
            live = self._live.get(pid)
        if live is not None:
            return live.watch
        engine = self._engine
        if self._all_scope is not None and engine is not None:
            # Another Reaper owns it: it reaps it, so its Watch will have the status.
            return engine.owned_watch(pid)
        return None

    def _recorded_after(self, pid: int, err: NotOurChildError | StatusLostError) -> ExitStatus:
        # It is no child of ours now, or its owner reaped it while we waited: a record may
        # still tell (ours from the sweep, or the owning Reaper's).
        status = self._registry.get(pid)
        if status is None:
            status = find_record(pid)
        if status is not None:
            return status
        if isinstance(err, NotOurChildError):
            return self._recorded(pid)
        raise err

    def _after_waiting(self, pid: int, status: ExitStatus) -> ExitStatus:
        engine = self._engine
        if engine is not None:
            # The caller waited for it: unless other code owns it, nobody else will reap it.
            engine.sweep_all_scope(only=pid, skip_grace=True)
        return status

    def _recorded(self, pid: int) -> ExitStatus:
        status = self._registry.get(pid)
        if status is not None:
            return status
        if pid in self._lost:
            raise StatusLostError(pid)
        raise NotOurChildError(
            pid,
            f"pid {pid} is not a child of this Reaper, or its record has left the history "
            f"(history={self._registry.history}); only children started with this Reaper's "
            "spawn() or watch() can be waited for here",
        )

    async def wait_async(self, pid: int) -> ExitStatus:
        """Await, in a running event loop, the exit of the child ``pid``; see :meth:`wait`.

        Resolved without polling (by the reaping thread, or, for a child this Reaper does not
        own in the all scope, by the event loop watching its pidfd); safe to cancel
        (``asyncio.wait_for``).

        Raises:
            NotOurChildError: ``pid`` is not a child this Reaper can wait for (or its record
                left the history).
            TypeError: ``pid`` is not an int.
            ValueError: ``pid`` is not > 0.
        """
        _check_pid(pid, "wait_async()")
        watch = self._watch_for(pid)
        if watch is not None:
            return await wait_for_watch_async(watch)
        if self._all_scope is not None:
            try:
                status = await wait_for_child_async(pid)
            except (NotOurChildError, StatusLostError) as err:
                return self._recorded_after(pid, err)
            return self._after_waiting(pid, status)
        return self._recorded(pid)

    def status(self, pid: int) -> ExitStatus | None:
        """The latest exit recorded for ``pid``, or None (still running, or never ours).

        Raises:
            TypeError: ``pid`` is not an int.
            ValueError: ``pid`` is not > 0.
        """
        _check_pid(pid, "status()")
        return self._registry.get(pid)

    def reap(self) -> list[ExitStatus]:
        """Reap, right now and without blocking, every owned child that has exited.

        The reaping thread does this by itself; call it to be sure that an exit you know has
        happened is recorded before you go on.

        Returns:
            The statuses recorded by this call (not those the thread had recorded already).
        """
        engine = self._engine
        if engine is None:
            return []
        reaped: list[ExitStatus] = []
        with self._lock:
            watches = [live.watch for live in self._live.values()]
        for watch in watches:
            if engine.settle(watch) and watch.outcome is not None:
                reaped.append(watch.outcome)
        if self._all_scope is not None:
            reaped.extend(engine.sweep_all_scope())
        return reaped

    def spawn_detached(
        self,
        args: Command,
        *,
        cwd: str | os.PathLike[str] = DEFAULT_CWD,
        env: Mapping[str, str] | None = None,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        pass_fds: Iterable[int] = (),
    ) -> int:
        """Start a daemon: a double fork into an orphan in a session of its own.

        The intermediate process is reaped before this returns, so no zombie is ever left,
        also when the program fails to start. The daemon runs in a new session and process
        group, with an empty signal mask and default signal dispositions; it is not a child
        of ours: it is reparented to init, or to the nearest subreaper (this process, with
        ``Reaper(scope="all", subreaper=True)``, which then reaps it and records its exit).
        Nothing of ours runs between fork and exec: a fresh helper process does the forking.
        The Reaper need not be installed.

        Args:
            args: The program and its arguments, as for ``subprocess.Popen``: str, bytes or
                path-like objects, passed to the program unchanged, of any size that its exec
                accepts.
            cwd: Its working directory ("/" by default, so that it pins no mount). Given, it
                is where a relative program (``./run.sh``) is looked up, as with Popen; left
                at the default, a relative program is looked up from this process's working
                directory, as Popen without a ``cwd`` would, and the daemon still runs in "/"
                (so make paths in its arguments absolute).
            env: Its environment (this process's by default), keys and values str or bytes.
            stdin: Its standard input: an open file object or a descriptor (or
                ``subprocess.DEVNULL``); /dev/null by default. Not a path: open the file.
            stdout: Its standard output, likewise; /dev/null by default.
            stderr: Its standard error, likewise (or ``subprocess.STDOUT``); /dev/null by
                default.
            pass_fds: Descriptors it inherits; it inherits no other descriptor of ours.

        Returns:
            The daemon's pid, once its program has been executed.

        Raises:
            FileNotFoundError: The program, or the ``cwd``, does not exist; the error's
                ``filename`` says which, as ``subprocess.Popen``'s does.
            PermissionError: The program cannot be executed (``filename`` names it).
            OSError: The program could not start for another reason, raised as Popen raises
                it, such as ``E2BIG`` when its arguments and environment exceed the kernel's
                limits for exec (one string over 128 KiB, or all of them over
                ``getconf ARG_MAX``). Also ``EBADF`` when an entry of ``pass_fds`` is not an
                open descriptor: checked before anything starts, the message names it.
            TypeError: A part of the command, ``cwd``, or an ``env`` key or value is not str,
                bytes or path-like, as Popen refuses it; or ``stdin``, ``stdout`` or
                ``stderr`` is a path, or no file object with a descriptor. Nothing is started.
            ValueError: The command is empty, an ``env`` key holds "=", a string holds a
                null byte, an entry of ``pass_fds`` is not an int >= 0, or a stream is
                ``subprocess.PIPE`` (nothing would be at the other end), a negative number or
                a closed file; nothing is started.
            ReaperError: The helper process could not start or run (this Python,
                ``sys.executable``, must be runnable).
        """
        scope = self._all_scope
        helper_pids: list[int] = []

        def leave_helper_alone(pid: int) -> None:
            # An all-scope sweep must not reap (and record) our own helper: we reap it.
            helper_pids.append(pid)
            if scope is not None:
                scope.leave_alone(pid)

        try:
            return spawn_detached(
                args,
                cwd=cwd,
                env=env,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                pass_fds=pass_fds,
                on_helper=leave_helper_alone,
            )
        finally:
            if scope is not None:
                for pid in helper_pids:
                    scope.release(pid)

    # --- what the engine hands back (through _ChildRecords and _OrphanRecords) -----------

    def _record_child(self, watch: Watch) -> bool:
        """Record a settled child; return whether _announce_child() has anything to tell."""
        status = watch.outcome
        scope = self._all_scope
        # A lost status is logged; an exit goes to on_exit, if there is one.
        announce = status is None or self._on_exit is not None
        if status is not None and scope is not None and scope.take_over(status) and announce:
            # The sweep saw this exit first (the child was watch()ed within its grace): it is
            # recorded, and on_exit has run for it, once.
            with self._lock:
                self._announced.add(watch.pid)
        if status is not None:
            # Recorded before the child leaves the live set, so wait(pid) always finds it.
            record_exit(self._registry, status)
        with self._lock:
            live = self._live.get(watch.pid)
            if live is not None and live.watch is watch:
                del self._live[watch.pid]
            if status is None:
                self._lost[watch.pid] = None
                while len(self._lost) > max(self._registry.history, 1):
                    self._lost.popitem(last=False)
            else:
                self._lost.pop(watch.pid, None)
        return announce

    def _announce_child(self, pid: int, status: ExitStatus | None) -> None:
        with self._lock:
            if pid in self._announced:
                self._announced.discard(pid)
                return
        self._announce(pid, status)

    def _announce(self, pid: int, status: ExitStatus | None) -> None:
        if status is None:
            logger.warning(
                "pid %d was reaped by other code before zombiereaper could read its exit status",
                pid,
            )
            return
        on_exit = self._on_exit
        if on_exit is None:
            return
        try:
            on_exit(status)
        except BaseException:
            # SystemExit and KeyboardInterrupt too: they would otherwise end the reaping
            # thread, and every later child would stay a zombie (issue 11, race 3).
            logger.exception("on_exit callback %r failed for %s", on_exit, status)

    def _reset_after_fork(self) -> None:
        """Forget the parent's state in a forked child: its children are not ours here."""
        self._lock = threading.Lock()
        self._adoptions_done = threading.Condition(self._lock)
        self._adoptions = 0
        self._closing = False
        self._engine = None
        self._live = {}
        self._announced = set()
        self._by_target = weakref.WeakValueDictionary()
        self._registry = Registry(self._registry.history)
        self._all_scope = None
        # The flag is per process and a fork does not inherit it: nothing to restore here.
        self._subreaper_before = None

    def __repr__(self) -> str:
        state = "installed" if self.installed else "not installed"
        return (
            f"<Reaper scope={self._scope} backend={self._backend} {state} "
            f"children={len(self._live)} recorded={len(self._registry)}>"
        )


class _ChildRecords:
    """The sink of a Reaper's children: its registry and live set, then ``on_exit``."""

    def __init__(self, reaper: Reaper) -> None:
        self._reaper = reaper

    def record(self, watch: Watch) -> bool:
        """Store the outcome (under the watch's lock: no user code); say if there is news."""
        return self._reaper._record_child(watch)

    def announce(self, watch: Watch) -> None:
        """Tell ``on_exit`` (on the reaping thread)."""
        self._reaper._announce_child(watch.pid, watch.outcome)


class _OrphanRecords:
    """The sink of the all scope: other code's children seen exiting, and orphans."""

    def __init__(self, reaper: Reaper) -> None:
        self._reaper = reaper

    def record(self, status: ExitStatus) -> None:
        """Store the status."""
        record_exit(self._reaper.registry, status)

    def announce(self, status: ExitStatus) -> None:
        """Tell ``on_exit`` (on the reaping thread)."""
        self._reaper._announce(status.pid, status)


def _check_pid(pid: object, what: str) -> None:
    """Refuse a ``pid`` argument that cannot name a child, naming the parameter.

    Raises:
        TypeError: It is not an int (a bool is not one either).
        ValueError: It is 0 or negative (a process group, or every child, to waitpid).
    """
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(
            f"{what}: pid must be an int, the process id of one child, got {pid!r} "
            f"({type(pid).__name__})"
        )
    if pid <= 0:
        raise ValueError(
            f"{what}: pid must be > 0, the process id of one child, got {pid}; waiting for "
            "a process group or for any child is not supported"
        )


def find_record(pid: int) -> ExitStatus | None:
    """The latest exit of ``pid`` that any installed Reaper has recorded."""
    for reaper in list(_installed):
        status = reaper.registry.get(pid)
        if status is not None:
            return status
    return None


def _reset_after_fork() -> None:
    reapers = list(_installed)
    _installed.clear()
    for reaper in reapers:
        reaper._reset_after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
