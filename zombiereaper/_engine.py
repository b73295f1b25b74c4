"""The reaping engine: one thread per process, shared by every installed Reaper.

Data flows one way::

    backend notices  ->  engine reaps  ->  sink records  ->  waiters, then callbacks, learn
    (pidfd readable,     (Engine.settle:    (the Reaper's     (Child.wait, wait_async,
     SIGCHLD sweep,       the source reads   registry and     on_exit, done callbacks on
     relay, sentinel)     and reaps under    live set)        the reaping thread)
                          the watch's lock)

A Reaper registers each child with :meth:`Engine.register`, giving the source that reads and
reaps it (zombiereaper._owners) and the sink its outcome goes to; it gets a
:class:`~zombiereaper._watch.Watch` back, fully registered. The engine never imports or
touches a Child or a Reaper: it calls the sink, and hands are read from the Watch.
:meth:`Engine._conclude` is the one place where a child becomes settled.

The engine reaps the pids it was given one by one, and never calls waitpid(-1). When an
all-scope Reaper is installed, the same thread also runs its sweep (zombiereaper._orphans),
which finds the other zombie children through /proc and leaves owned ones alone.
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import logging
import os
import select
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import _fds, _linux, _sighandler
from ._backends import Monitors
from ._backends.sigchld import SweepSchedule
from ._errors import ReaperError
from ._orphans import Ownership
from ._owners import wait_for_gone
from ._status import compact_usage
from ._watch import Known, Retry, Running, Watch

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._backends import BackendName
    from ._orphans import AllScope
    from ._status import ExitStatus
    from ._watch import Sink, Source

logger = logging.getLogger("zombiereaper")

_EPOLL_MAX_EVENTS = 256

#: After a failure of the loop itself, pause this long so that one that repeats cannot spin.
_FAILURE_PAUSE = 0.1

#: The longest single wait of the loop, in seconds (epoll's limit is 24.8 days).
_LONGEST_WAIT = 86_400.0


class Engine:
    """The reaping thread and what it watches; use :func:`acquire` and :func:`release`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Out of descriptors later, two freed for a moment still tell a child from a stranger.
        _fds.fill_reserve()
        #: The process's wakeup pipe, which the SIGCHLD handler writes to: it asks for sweeps.
        self._wake_read, _ = _sighandler.wakeup_fds()
        #: This engine's own: call_soon(), timers and the stop wake it. Never the shared one,
        #: which the engine that replaces a stopping one may drain first (a lost stop hangs
        #: uninstall(); a lost timer stalls a Service).
        with _fds.step():
            own_read, own_write = os.pipe()
            self._own_read = _fds.track(own_read)
            self._own_write = _fds.track(own_write)
        self._own_born = _fds.generation()
        for fd in (self._own_read, self._own_write):
            os.set_blocking(fd, False)
        self._epoll: select.epoll | None = None
        if hasattr(select, "epoll"):
            with _fds.step():
                self._epoll = _fds.above_stdio_object(select.epoll(), select.epoll.fromfd)
                _fds.track(self._epoll.fileno(), self._epoll.close)
            self._epoll_born = _fds.generation()
            self._epoll.register(self._wake_read, select.EPOLLIN)
            self._epoll.register(self._own_read, select.EPOLLIN)
        #: fd -> what to run on the reaping thread when it is readable.
        self._readers: dict[int, Callable[[], object]] = {}
        #: pid -> Watch for every child watched: the all-scope sweep leaves these alone.
        self._by_pid: dict[int, Watch] = {}
        self._closed = False
        self._all_scope: AllScope | None = None
        self._all_deadline: float | None = None
        self._all_schedule = SweepSchedule(time.monotonic())
        #: When each spawn() in progress began (boot ticks): until it registers its child, a
        #: child started since looks like nobody's to the all-scope sweep.
        self._spawning: list[int] = []
        self._callbacks: collections.deque[Callable[[], object]] = collections.deque()
        self._timers: list[Timer] = []
        self._timer_numbers = itertools.count()
        self._users = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="zombiereaper", daemon=True)
        self.monitors = Monitors(self)
        _sighandler.wake_on_sigchld = False

    # --- what Reapers and Children call -------------------------------------------------------

    @property
    def thread(self) -> threading.Thread:
        """The reaping thread."""
        return self._thread

    def register(
        self, source: Source, sink: Sink, backend: BackendName, *, fresh: bool = False
    ) -> Watch:
        """Watch the child ``source`` names; return its Watch once it is fully registered.

        When the child's owner already has its status, the Watch comes back settled. The
        sink hears of the outcome, whichever thread settles it.

        Args:
            source: Reads, reaps and signals the child (zombiereaper._owners).
            sink: Where the outcome goes.
            backend: How to notice the exit.
            fresh: The child has just been started, so any other Watch of its pid names a
                process that is gone (reaped by someone else, its pid reused).

        Raises:
            ChildProcessError: The source cannot account for the pid (not our child).
            ReaperError: Another Reaper watches the same child, or the engine has stopped.
        """
        watch = Watch(source, sink)
        try:
            self._claim_pid(watch, fresh=fresh)
        except ReaperError:
            # The pid is another live watch's. A Popen or Process whose own wait has reaped
            # its child already (the pid reused since) is not that child: its code is known.
            opened = source.open(backend)
            if not isinstance(opened, Known):
                opened.close()
                raise
            with watch.lock:
                self._conclude(watch, opened.outcome)
            return watch
        try:
            opened = source.open(backend)
        except BaseException:
            self._release_pid(watch)
            raise
        if isinstance(opened, Known):
            with watch.lock:
                self._conclude(watch, opened.outcome)
            return watch
        watch.notice = opened
        try:
            self.monitors.add(watch)
        except BaseException:
            opened.close()
            self._release_pid(watch)
            raise
        return watch

    def settle(self, watch: Watch, *, look_first: bool = True) -> bool:
        """Settle ``watch`` now if its child has exited; safe from any thread.

        ``look_first``: False to reap without reading the exit first (see
        :meth:`Source.read_exit`).

        Returns:
            Whether this call settled it.
        """
        with watch.lock:
            if not watch.watching or watch.notice is None:
                return False
            outcome = watch.source.read_exit(watch.notice, look_first=look_first)
            if isinstance(outcome, Running):
                return False
            if isinstance(outcome, Retry):
                # Its descriptor would say "ready" again at once: ask on the sweeps instead,
                # never blocking the reaping thread nor spinning it.
                self.monitors.demote(watch)
                return False
            if threading.current_thread() is not self._thread:
                self._conclude(watch, outcome)
                return True
            announce, callbacks = self._record_and_wake(watch, outcome)
        # The reaping thread calls back at once, outside the lock (user code must not hold
        # it), and forgets the watch after: nobody else touches a settled watch's notice,
        # and its pidfd, readable, is only ever polled by this thread.
        try:
            self._announce(watch, announce, callbacks)
        finally:
            with watch.lock:
                self._forget(watch)
        return True

    def send_signal(self, watch: Watch, sig: int, *, group: bool = False) -> bool:
        """Signal ``watch``'s child (``group``: its process group) unless it is settled.

        Under the watch's lock, so nothing of ours reaps it meanwhile; the source makes sure
        that a process that took the pid is never reached.

        Returns:
            Whether a signal was sent.
        """
        with watch.lock:
            if not watch.watching or watch.notice is None:
                return False
            return watch.source.send_signal(watch.notice, sig, group)

    def on_settled(self, watch: Watch, callback: Callable[[], object]) -> None:
        """Call ``callback`` on the reaping thread once ``watch`` is settled (soon, if it is)."""
        if not watch.add_done_callback(callback):
            self.call_soon(callback)

    def owned_watch(self, pid: int) -> Watch | None:
        """The live Watch of ``pid``, if an installed Reaper owns it."""
        with self._lock:
            return self._by_pid.get(pid)

    def helper_pids(self) -> frozenset[int]:
        """Pids of the engine's own helper processes (the relay), which it reaps itself."""
        return self.monitors.helper_pids()

    def spawning(self) -> _Spawning:
        """Mark a spawn in progress, so that the all scope reaps no unknown child meanwhile.

        ``with engine.spawning(): ...`` around the fork and the registration of the child.
        """
        return _Spawning(self)

    def _spawn_began(self) -> int:
        tick = _linux.boot_ticks()
        with self._lock:
            self._spawning.append(tick)
        return tick

    def _spawn_ended(self, tick: int) -> None:
        with self._lock:
            self._spawning.remove(tick)

    # --- settling: the one place -------------------------------------------------------------

    def _conclude(self, watch: Watch, outcome: ExitStatus | None) -> None:
        """Settle ``watch`` with ``outcome`` (its lock held): record, wake, call back, forget.

        The order is the protocol:

        1. record: the sink stores the outcome (the Reaper's registry, its live set) while
           the Watch says "settling", so a waiter woken next already finds the record;
        2. wake: the Watch turns settled, and its Events and futures resolve;
        3. callbacks: ``on_exit`` and done callbacks are queued for the reaping thread, never
           run here (this may be a user's thread calling poll(), holding the lock), and there
           a BaseException from one is logged and reaping goes on (issue 11, race 3);
        4. forget: the backend stops watching, the pidfd is closed, the record's resource
           usage is compacted (see compact_usage), and only now the pid leaves the owned
           set, so the all-scope sweep cannot take it for nobody's child while it is being
           recorded.

        On the reaping thread, :meth:`settle` runs steps 3 and 4 itself, after the lock.
        """
        announce, callbacks = self._record_and_wake(watch, outcome)
        self._tell_later(watch, announce, callbacks)
        self._forget(watch)

    def _record_and_wake(
        self, watch: Watch, outcome: ExitStatus | None
    ) -> tuple[bool, list[Callable[[], object]]]:
        """Steps 1 and 2 of :meth:`_conclude`; return whether to announce, and the callbacks.

        If recording fails, the rest is done as by :meth:`_conclude` (announced anyway: the
        sink decides then) before the error propagates.
        """
        watch.begin_settling(outcome)
        try:
            announce = watch.sink.record(watch)
        except BaseException:
            self._tell_later(watch, True, watch.finish_settling())
            self._forget(watch)
            raise
        return announce, watch.finish_settling()

    def _tell_later(
        self, watch: Watch, announce: bool, callbacks: list[Callable[[], object]]
    ) -> None:
        if announce or callbacks:
            self.call_soon(functools.partial(self._announce, watch, announce, callbacks))

    def _announce(
        self, watch: Watch, announce: bool, callbacks: list[Callable[[], object]]
    ) -> None:
        if announce:
            self._call_logged(functools.partial(watch.sink.announce, watch))
        for callback in callbacks:
            self._call_logged(callback)

    def _forget(self, watch: Watch) -> None:
        outcome = watch.outcome
        if outcome is not None:
            compact_usage(outcome)  # kept as the reap gave it on the way to on_exit
        monitor = watch.monitor
        if monitor is not None:
            monitor.remove(watch)
        notice = watch.notice
        if notice is not None:
            notice.close()
        self._release_pid(watch)

    def _claim_pid(self, watch: Watch, *, fresh: bool) -> None:
        """List ``watch`` as the owner of its pid, settling a stale Watch of the pid first."""
        with self._lock:
            if self._closed:
                raise ReaperError("the reaping engine has stopped; install a Reaper again")
            old = self._by_pid.get(watch.pid)
            if old is None:
                self._by_pid[watch.pid] = watch
                return
        # The pid is listed already. A settled child leaves the list just after recording,
        # and a child whose status a stranger stole stays listed until its pid is checked.
        self.settle_now(old)
        if old.watching and fresh:
            # The new child has the pid: the old process is gone for sure (its status taken
            # by a blanket wait, the pid reused). Its owner may still have the status.
            with old.lock:
                if old.watching:
                    # Off the sweeps, so a short, bounded wait for the owner to store its
                    # status is the price of this rare case.
                    self._conclude(old, wait_for_gone(old.source))
        with self._lock:
            current = self._by_pid.get(watch.pid)
            if current is not None and current.watching:
                raise ReaperError(
                    f"pid {watch.pid} is already watched by another Reaper in this process, "
                    "which reaps it and records its status; wait for it there (a Reaper with "
                    "scope='all' can wait(pid) for any child)"
                )
            self._by_pid[watch.pid] = watch

    def _release_pid(self, watch: Watch) -> None:
        with self._lock:
            if self._by_pid.get(watch.pid) is watch:
                del self._by_pid[watch.pid]

    # --- the loop, as the backends see it (zombiereaper._backends.loop.Loop) --------------

    @property
    def has_poller(self) -> bool:
        """Whether descriptors can be watched (epoll)."""
        return self._epoll is not None

    def add_reader(self, fd: int, on_ready: Callable[[], object]) -> None:
        """Call ``on_ready`` on the reaping thread whenever ``fd`` is readable."""
        with self._lock:
            if self._closed or self._epoll is None:
                return  # stopped: whatever is still watched is settled by polling it
            self._readers[fd] = on_ready
            self._epoll.register(fd, select.EPOLLIN)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed or handed over)."""
        with self._lock:
            if self._readers.pop(fd, None) is None or self._closed or self._epoll is None:
                return
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # closed already (EBADF): the kernel dropped it from the set

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the reaping thread."""
        self._callbacks.append(callback)
        if threading.current_thread() is not self._thread:
            self._wake_own()

    def _wake_own(self) -> None:
        with self._lock:  # never into a descriptor that _close() has closed (and maybe reused)
            if self._closed:
                return
            try:
                os.write(self._own_write, b"\0")
            except BlockingIOError:
                pass  # full: a wakeup is pending already

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Run ``callback`` on the reaping thread in ``delay`` seconds (unless cancelled)."""
        timer = Timer(time.monotonic() + max(0.0, delay), next(self._timer_numbers), callback)
        with self._lock:
            heapq.heappush(self._timers, timer)
        if threading.current_thread() is not self._thread:
            self._wake_own()
        return timer

    def sweep_needed(self) -> None:
        """Tell the SIGCHLD handler whether a signal must wake us."""
        with self._lock:
            self._update_sigchld_need()

    def _update_sigchld_need(self) -> None:
        if _engine is self:  # a stopping engine must not undo what its successor needs
            _sighandler.wake_on_sigchld = self.monitors.sweep.active or self._all_scope is not None

    def settle_now(self, watch: Watch, *, look_first: bool = True) -> bool:
        """Settle ``watch`` if it has exited, logging a failure instead of raising it."""
        try:
            return self.settle(watch, look_first=look_first)
        except Exception:
            # A failure to reap one child must not stop the thread that reaps all the others,
            # nor, repeating on a descriptor that stays readable, spin it: the child is
            # checked on the sweeps from then on.
            logger.exception("zombiereaper could not reap pid %d", watch.pid)
            with watch.lock:
                if watch.watching:
                    self.monitors.demote(watch)
            return False

    # --- the all scope ------------------------------------------------------------------------

    def attach_all_scope(self, scope: AllScope) -> None:
        """Start sweeping for every zombie child on behalf of ``scope``.

        Raises:
            ReaperError: Another all-scope Reaper is installed.
        """
        with self._lock:
            if self._all_scope is not None:
                raise ReaperError(
                    "another Reaper with scope='all' is installed; only one may reap every "
                    "child of a process: uninstall it first, or use scope='owned' here"
                )
            self._all_scope = scope
            self._update_sigchld_need()
        _sighandler.wake()

    def detach_all_scope(self, scope: AllScope) -> None:
        """Stop sweeping for ``scope``."""
        with self._lock:
            if self._all_scope is scope:
                self._all_scope = None
                self._update_sigchld_need()
                self._all_deadline = None

    def sweep_all_scope(
        self, *, only: int | None = None, skip_grace: bool = False
    ) -> list[ExitStatus]:
        """Run the all-scope sweep now (from any thread); return the statuses it recorded.

        ``only`` limits it to one pid; ``skip_grace`` settles zombies still in their grace
        (see :meth:`AllScope.sweep`).
        """
        scope = self._all_scope
        if scope is None:
            return []
        recorded, deadline = scope.sweep(
            time.monotonic(), self._ownership, only=only, skip_grace=skip_grace
        )
        if only is None:
            self._all_deadline = deadline
        for status in recorded:
            # Record, then call back: the same order as for an owned child.
            compact_usage(status)
            scope.sink.record(status)
            self.call_soon(functools.partial(scope.sink.announce, status))
        return recorded

    def _ownership(self) -> Ownership:
        with self._lock:
            return Ownership(
                owned=frozenset(self._by_pid) | self.helper_pids(),
                our_fds=_fds.snapshot(),
                spawning_since=min(self._spawning, default=None),
            )

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._run_once()
            except BaseException:
                # The thread that reaps every child must outlive any one failure; the pause
                # keeps a failure that repeats from spinning a core.
                logger.exception("zombiereaper's reaping loop failed; going on")
                time.sleep(_FAILURE_PAUSE)
        self._run_callbacks()
        self._close()

    def _run_once(self) -> None:
        sweep = self.monitors.sweep
        now = time.monotonic()
        timeouts = [sweep.timeout(now)]
        if self._all_scope is not None:
            timeouts.append(self._all_schedule.timeout(now))
            if self._all_deadline is not None:
                timeouts.append(max(0.0, self._all_deadline - now))
        self._drop_cancelled_timers()
        if self._timers:
            timeouts.append(max(0.0, self._timers[0].deadline - now))
        timeout = min((t for t in timeouts if t is not None), default=None)
        if timeout is not None:
            # epoll cannot wait longer than 2**31 ms (24.8 days); a timer further off (or
            # never: an infinite delay) is simply looked at again after a day.
            timeout = min(timeout, _LONGEST_WAIT)
        woken = self._wait(timeout)
        if self._stopping:
            return
        now = time.monotonic()
        if woken:
            sweep.note_wakeup()
            if self._all_scope is not None:
                self._all_schedule.note_wakeup()
        sweep.sweep_if_due(now)
        if self._all_scope is not None and (
            self._all_schedule.is_due(now)
            or (self._all_deadline is not None and now >= self._all_deadline)
        ):
            self._all_schedule.record_sweep(now, found=len(self.sweep_all_scope()))
        self._run_due_timers(now)
        self._run_callbacks()

    def _wait(self, timeout: float | None) -> bool:
        """Wait for descriptors or the timeout; run the readers; return whether woken."""
        woken = False
        if self._epoll is not None:
            events = self._epoll.poll(-1 if timeout is None else timeout, _EPOLL_MAX_EVENTS)
        else:
            readable, _, _ = select.select([self._wake_read, self._own_read], [], [], timeout)
            events = [(fd, select.POLLIN) for fd in readable]
        for fd, _ in events:
            if fd == self._own_read:
                _sighandler.drain(fd)
                continue
            if fd == self._wake_read:
                if self._stopping:
                    # The pipe is the process's: a wakeup written now is for the engine that
                    # replaces this one, which must not lose it.
                    return True
                _sighandler.drain(fd)
                woken = True
                continue
            reader = self._readers.get(fd)
            if reader is not None:
                self._call_logged(reader)
        return woken

    def _drop_cancelled_timers(self) -> None:
        """Drop cancelled timers at the head of the heap: they must not shorten the wait."""
        with self._lock:
            while self._timers and self._timers[0].cancelled:
                heapq.heappop(self._timers)

    def _run_due_timers(self, now: float) -> None:
        while True:
            with self._lock:
                if not self._timers or self._timers[0].deadline > now:
                    return
                timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._callbacks.append(timer.callback)

    def _run_callbacks(self) -> None:
        while self._callbacks:
            self._call_logged(self._callbacks.popleft())

    def _call_logged(self, callback: Callable[[], object]) -> None:
        """Run ``callback``; log whatever it raises, BaseException included, and go on.

        A callback's SystemExit or KeyboardInterrupt is not the reaping thread's to die of:
        the children it would reap next would stay zombies, and every wait would hang.
        """
        try:
            callback()
        except BaseException:
            logger.exception("zombiereaper callback %r failed", callback)

    def _start(self) -> None:
        self._thread.start()

    def _stop(self) -> None:
        self._stopping = True
        self._wake_own()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        # Stopped from its own thread (an on_exit that uninstalls), the loop ends after this
        # callback; either way the thread closes its descriptors on the way out.

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            self._readers.clear()
            for fd in (self._own_read, self._own_write):
                _fds.close(fd, self._own_born)
        self.monitors.close()
        epoll = self._epoll
        if epoll is not None:
            _fds.close_with(epoll.fileno(), self._epoll_born, epoll.close)


class _Spawning:
    """The context of one spawn in progress (see :meth:`Engine.spawning`)."""

    __slots__ = ("_engine", "_tick")

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._tick = 0

    def __enter__(self) -> None:
        self._tick = self._engine._spawn_began()

    def __exit__(self, *exc: object) -> None:
        self._engine._spawn_ended(self._tick)


@dataclass(order=True)
class Timer:
    """A callback due on the reaping thread at ``deadline``; see :meth:`Engine.call_later`."""

    deadline: float
    number: int
    callback: Callable[[], object] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        """Keep the callback from running (if it has not run yet)."""
        self.cancelled = True


# --- the process-wide engine ------------------------------------------------------------------

_engine: Engine | None = None
_engine_lock = threading.Lock()


def acquire(*, signals: bool) -> Engine:
    """Count one more user of the engine (an installed Reaper), starting it for the first.

    Args:
        signals: Whether this user relies on SIGCHLD to wake the thread (the sigchld
            backend, the all scope). From the main thread, the handler is then installed;
            else only where SIGCHLD is SIG_IGN, which would discard every exit status.

    Raises:
        ReaperError: SIGCHLD is SIG_IGN and this is not the main thread.
    """
    global _engine
    with _engine_lock:
        _sighandler.check_disposition()
        if _sighandler.is_main_thread() and (signals or _sighandler.is_ignored()):
            _sighandler.install()
        engine = _engine
        if engine is None:
            engine = _engine = Engine()
            engine._start()
        engine._users += 1
        return engine


def release() -> None:
    """Count one user less; the last one stops the thread and restores the handler."""
    global _engine
    with _engine_lock:
        engine = _engine
        if engine is None:
            return
        engine._users -= 1
        if engine._users > 0:
            return
        _engine = None
        # Marked before a successor can exist (under the lock acquire() takes), so that it
        # stops draining the shared wakeup pipe before the successor writes to it.
        engine._stopping = True
        # Else the handler stays, inert but for chaining, until a Reaper is installed or
        # uninstalled from the main thread again: only the main thread may set handlers.
        restoring = _sighandler.is_main_thread() and _sighandler.begin_uninstall()
    engine._stop()
    if restoring:
        # Python's table follows the kernel's once the thread is joined: a SIGCHLD that
        # another thread took just before has had that long to run its handler.
        with _engine_lock:
            _sighandler.finish_uninstall()


def current() -> Engine | None:
    """The running engine, if any Reaper is installed."""
    return _engine


def is_reaping_thread() -> bool:
    """Whether the caller runs on the reaping thread (where blocking waits would deadlock)."""
    engine = _engine
    return engine is not None and threading.current_thread() is engine.thread


def helper_pids() -> frozenset[int]:
    """Pids of the running engine's helper processes (the relay), which are not leaks."""
    engine = _engine
    return frozenset() if engine is None else engine.helper_pids()


def _reset_after_fork() -> None:
    global _engine, _engine_lock
    # The reaping thread does not exist in the child, and its locks may have been held at the
    # fork: replace them rather than take them (uvicorn #894: inherited reaper state).
    # zombiereaper._fds has closed every descriptor the engine held.
    _engine_lock = threading.Lock()
    _engine = None
    _sighandler.reset_after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
