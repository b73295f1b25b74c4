"""The reaping engine: one thread per process, shared by every installed Reaper.

Data flows one way: a backend notices an exit (a pidfd turns readable, or a SIGCHLD wakeup or
the safety timer sweeps the pids watched by the sigchld backend) -> the engine reaps the child
through its owner's machinery -> the owning Reaper records the status -> the Child's waiters,
and ``on_exit`` on this thread, learn of it.

The engine reaps the pids it was given one by one, and never calls waitpid(-1). When an
all-scope Reaper is installed, the same thread also runs its sweep (zombiereaper._orphans),
which finds the other zombie children through /proc and leaves owned ones alone.

Past :attr:`Engine.relay_above` pidfds, the engine lends the oldest to the relay
(zombiereaper._relay), a helper process, so that forks in this process stop paying for
thousands of descriptors; the relay hands each one back when its child exits.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import os
import select
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from . import _relay, _sighandler
from ._backends.pidfd import PidfdNotifier
from ._errors import ReaperError
from ._orphans import Ownership
from ._owners import Running

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ._backends import BackendName
    from ._child import Child
    from ._orphans import AllScope
    from ._reaper import Reaper
    from ._status import ExitStatus

logger = logging.getLogger("zombiereaper")

#: How often the sigchld backend sweeps even without a wakeup: a Python-level SIGCHLD handler
#: cannot run while the main thread sits in a long C call, so the timer is what bounds the delay.
SAFETY_SWEEP_INTERVAL: Final = 0.1

#: The first pause after a sweep triggered by a wakeup that found nothing. It doubles while
#: wakeups keep finding nothing, up to SAFETY_SWEEP_INTERVAL, so a storm of spurious SIGCHLD
#: cannot spin a core (go-reap PR #1); a sweep that finds an exit resets it.
_FIRST_QUIET_PERIOD: Final = 0.001

_EPOLL_MAX_EVENTS: Final = 256

#: After this many relays died or could not start, the engine keeps its pidfds itself.
_RELAY_ATTEMPTS: Final = 3


class Engine:
    """The reaping thread and what it watches; use :func:`acquire` and :func:`release`."""

    #: Holding more pidfds than this, the engine lends the oldest to the relay, down to
    #: :attr:`relay_keep`. Forks copy the descriptor table: a few hundred entries cost
    #: little, thousands double the cost of a Popen (see docs/performance.md).
    relay_above: int = 256
    #: How many pidfds (the youngest) stay in this process after a lending round.
    relay_keep: int = 128
    #: Seconds a new relay has to say hello before it is killed and no other is started.
    relay_hello_timeout: float = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake_read, _ = _sighandler.wakeup_fds()
        self._epoll: select.epoll | None = select.epoll() if hasattr(select, "epoll") else None
        if self._epoll is not None:
            self._epoll.register(self._wake_read, select.EPOLLIN)
        self._by_fd: dict[int, Child] = {}
        self._swept: set[Child] = set()
        #: pid -> Child for every child watched: the all-scope sweep leaves these alone.
        self._by_pid: dict[int, Child] = {}
        #: token -> Child whose pidfd the relay holds (see zombiereaper._relay).
        self._lent: dict[int, Child] = {}
        #: How many of _by_fd are our pidfds, which can be lent (the rest are forkserver
        #: workers' sentinels, which belong to their Process).
        self._pidfds_here = 0
        self._tokens = itertools.count(1)
        self._relay: _relay.Relay | None = None
        self._relay_attempts = 0
        #: The relay ran out of descriptors once: lend it nothing more (until another starts).
        self._relay_full = False
        self._lending_asked = False
        self._all_scope: AllScope | None = None
        self._all_deadline: float | None = None
        #: spawn() calls between their fork and the registration of the child's pid: until
        #: then the new child looks like nobody's to the all-scope sweep.
        self._spawning = 0
        self._spawns = 0
        self._callbacks: collections.deque[Callable[[], object]] = collections.deque()
        self._timers: list[Timer] = []
        self._timer_numbers = itertools.count()
        self._users = 0
        self._stopping = False
        _sighandler.wake_on_sigchld = False
        self._thread = threading.Thread(target=self._run, name="zombiereaper", daemon=True)
        #: Sweeps of the sigchld-watched children so far (read by tests of the storm guard).
        self.sweeps = 0

    # --- what the rest of the library calls -------------------------------------------------

    @property
    def thread(self) -> threading.Thread:
        """The reaping thread."""
        return self._thread

    def watch(self, child: Child, backend: BackendName) -> None:
        """Start watching ``child`` for its exit (settling it at once if it is already known).

        Raises:
            ChildProcessError: The child's owner cannot account for its pid.
        """
        with self._lock:
            self._by_pid[child.pid] = child
        try:
            notifier = child._owner.open_notifier(backend)
        except BaseException:
            with self._lock:
                if self._by_pid.get(child.pid) is child:
                    del self._by_pid[child.pid]
            raise
        if notifier is None:
            # The owner has the status already (its Popen or Process reaped it).
            self.settle(child)
            return
        fd = notifier.fileno
        with self._lock:
            if fd is None or self._epoll is None:
                self._swept.add(child)
                self._update_sigchld_need()
                lend = None
            else:
                self._by_fd[fd] = child
                self._epoll.register(fd, select.EPOLLIN)
                self._pidfds_here += isinstance(notifier, PidfdNotifier)
                lend = self._pidfds_here > self.relay_above and not self._lending_asked
                self._lending_asked |= lend
        if lend is None:
            # A SIGCHLD that came before the child was in the swept set woke nobody for it.
            _sighandler.wake()
        elif lend:
            self.call_soon(self._lend_oldest)

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the reaping thread."""
        self._callbacks.append(callback)
        if threading.current_thread() is not self._thread:
            _sighandler.wake()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the reaping thread in ``delay`` seconds (unless cancelled)."""
        timer = Timer(time.monotonic() + max(0.0, delay), next(self._timer_numbers), callback)
        with self._lock:
            heapq.heappush(self._timers, timer)
        if threading.current_thread() is not self._thread:
            _sighandler.wake()
        return timer

    def settle(self, child: Child) -> bool:
        """Reap ``child`` now if it has exited, through its owner's machinery.

        Safe from any thread; returns whether this call settled the child.
        """
        with child._lock:
            if child._settled:
                return False
            outcome = child._owner.read_exit()
            if isinstance(outcome, Running):
                return False
            self._forget(child)
            child._settle(outcome)
        child._reaper._child_exited(child, outcome)
        with self._lock:
            # Dropped only once its Reaper has recorded the status: until then an all-scope
            # wait(pid) must find this Child, which has it.
            if self._by_pid.get(child.pid) is child:
                del self._by_pid[child.pid]
        child._finish()
        return True

    def helper_pids(self) -> frozenset[int]:
        """Pids of the engine's own helper processes (the relay), which it reaps itself."""
        relay = self._relay
        return frozenset() if relay is None else frozenset({relay.pid})

    def owned_child(self, pid: int) -> Child | None:
        """The live Child that an installed Reaper owns for ``pid``, if any."""
        with self._lock:
            return self._by_pid.get(pid)

    def _update_sigchld_need(self) -> None:
        """Tell the SIGCHLD handler whether a signal must wake us (with ``_lock`` held)."""
        _sighandler.wake_on_sigchld = bool(self._swept) or self._all_scope is not None

    def _ownership(self) -> Ownership:
        with self._lock:
            return Ownership(
                owned=frozenset(self._by_pid) | self.helper_pids(),
                our_pidfds=frozenset(self._by_fd),
                spawning=self._spawning,
                spawns=self._spawns,
            )

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Mark a spawn in progress, so that the all scope reaps no unknown child meanwhile."""
        with self._lock:
            self._spawning += 1
            self._spawns += 1
        try:
            yield
        finally:
            with self._lock:
                self._spawning -= 1

    def attach_all_scope(self, scope: AllScope) -> None:
        """Start sweeping for every zombie child on behalf of ``scope``'s Reaper.

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
            scope.reaper._record_foreign(status, self)
        return recorded

    # --- the thread ---------------------------------------------------------------------------

    def _forget(self, child: Child) -> None:
        notifier = child._owner.notifier
        if notifier is None:
            return
        fd = notifier.fileno
        with self._lock:
            if fd is not None and self._by_fd.pop(fd, None) is not None and self._epoll is not None:
                self._epoll.unregister(fd)
                self._pidfds_here -= isinstance(notifier, PidfdNotifier)
            if isinstance(notifier, PidfdNotifier) and notifier.lent_as is not None:
                # The relay hands the pidfd back when the child exits; nobody will take it.
                self._lent.pop(notifier.lent_as, None)
            self._swept.discard(child)
            self._update_sigchld_need()
        notifier.close()

    def _run(self) -> None:
        now = time.monotonic()
        owned_schedule = _SweepSchedule(now)
        all_schedule = _SweepSchedule(now)
        while not self._stopping:
            try:
                self._run_once(owned_schedule, all_schedule)
            except Exception:
                # The thread that reaps every child must outlive any one failure; the pause
                # keeps a failure that repeats from spinning a core.
                logger.exception("zombiereaper's reaping loop failed; going on")
                time.sleep(SAFETY_SWEEP_INTERVAL)
        self._run_callbacks()
        self._close()

    def _run_once(self, owned_schedule: _SweepSchedule, all_schedule: _SweepSchedule) -> None:
        now = time.monotonic()
        timeouts = []
        if self._swept:
            timeouts.append(owned_schedule.timeout(now))
        if self._all_scope is not None:
            timeouts.append(all_schedule.timeout(now))
            if self._all_deadline is not None:
                timeouts.append(max(0.0, self._all_deadline - now))
        if self._timers:
            timeouts.append(max(0.0, self._timers[0].deadline - now))
        woken, ready = self._wait(min(timeouts, default=None))
        if self._stopping:
            return
        for child in ready:
            self._settle_logged(child)
        now = time.monotonic()
        if woken:
            owned_schedule.note_wakeup()
            all_schedule.note_wakeup()
        if owned_schedule.is_due(now):
            owned_schedule.record_sweep(now, found=self._sweep() if self._swept else 0)
        if self._all_scope is not None and (
            all_schedule.is_due(now)
            or (self._all_deadline is not None and now >= self._all_deadline)
        ):
            all_schedule.record_sweep(now, found=len(self.sweep_all_scope()))
        self._run_due_timers(now)
        self._run_callbacks()

    def _run_due_timers(self, now: float) -> None:
        while True:
            with self._lock:
                if not self._timers or self._timers[0].deadline > now:
                    return
                timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._callbacks.append(timer.callback)

    def _wait(self, timeout: float | None) -> tuple[bool, list[Child]]:
        woken = False
        ready: list[Child] = []
        if self._epoll is not None:
            events = self._epoll.poll(-1 if timeout is None else timeout, _EPOLL_MAX_EVENTS)
            fds = [fd for fd, _ in events]
        else:
            readable, _, _ = select.select([self._wake_read], [], [], timeout)
            fds = list(readable)
        relay = self._relay
        for fd in fds:
            if fd == self._wake_read:
                _sighandler.drain(fd)
                woken = True
                continue
            if relay is not None and fd == relay.fileno():
                ready.extend(self._hear_from_relay(relay))
                continue
            child = self._by_fd.get(fd)
            if child is not None:
                ready.append(child)
        return woken, ready

    # --- the relay: pidfds held in a helper process ------------------------------------------

    def _lend_oldest(self) -> None:
        """Lend the oldest pidfds to the relay, down to relay_keep (on the reaping thread)."""
        self._lending_asked = False
        with self._lock:
            if self._pidfds_here <= self.relay_above:
                return
            # Dicts keep insertion order: the first entries are the children watched longest.
            lendable = (
                (fd, child)
                for fd, child in self._by_fd.items()
                if isinstance(child._owner.notifier, PidfdNotifier)
            )
            oldest = list(itertools.islice(lendable, max(0, self._pidfds_here - self.relay_keep)))
        relay = self._start_relay()
        if relay is None or not relay.ready or self._relay_full:
            return  # once it says hello, _hear_from_relay calls this again
        lent: list[tuple[int, int]] = []
        for fd, child in oldest:
            with child._lock:
                notifier = child._owner.notifier
                # Only pidfds of ours: a forkserver worker's sentinel belongs to its Process.
                if child._settled or not isinstance(notifier, PidfdNotifier):
                    continue
                with self._lock:
                    if self._by_fd.get(fd) is not child or self._epoll is None:
                        continue
                    del self._by_fd[fd]
                    self._epoll.unregister(fd)
                    self._pidfds_here -= 1
                    token = next(self._tokens)
                    self._lent[token] = child
                    notifier.lend(token)
            lent.append((token, fd))
        sent = relay.lend(lent)
        for _, fd in lent[:sent]:
            os.close(fd)  # the relay has its own copy now
        for token, fd in lent[sent:]:
            self._take_back(token, fd)

    def _start_relay(self) -> _relay.Relay | None:
        if self._relay is not None or self._epoll is None:
            return self._relay
        if self._relay_attempts >= _RELAY_ATTEMPTS or not _relay.is_available():
            return None
        self._relay_attempts += 1
        try:
            with self.spawning():
                relay = _relay.Relay.start()
                with self._lock:
                    self._relay = relay
        except Exception as err:  # whatever failed, the pidfds just stay here
            logger.warning(
                "zombiereaper could not start its relay (%s); its pidfds stay in this process",
                err,
            )
            return None
        self._epoll.register(relay.fileno(), select.EPOLLIN)
        self.call_later(self.relay_hello_timeout, lambda: self._check_hello(relay))
        return relay

    def _check_hello(self, relay: _relay.Relay) -> None:
        if self._relay is not relay or relay.ready:
            return
        # Not our relay at all, most likely: sys.executable is not a Python (uWSGI...).
        self._relay_attempts = _RELAY_ATTEMPTS
        self._drop_relay(
            relay,
            f"did not start within {self.relay_hello_timeout:g} s (is {sys.executable!r} "
            "a Python interpreter?); no other is started",
            kill=True,
        )

    def _hear_from_relay(self, relay: _relay.Relay) -> list[Child]:
        """Take back the pidfds of children that exited; returns those children."""
        was_ready = relay.ready
        returned, alive = relay.receive()
        exited = []
        for token, fd in returned:
            child = self._take_back(token, fd)
            if child is not None and fd is not None:
                exited.append(child)
        lost = sum(fd is None for _, fd in returned)
        if lost and alive:
            self._relay_full = True
            logger.warning(
                "zombiereaper's relay or this process ran out of descriptors; %d children "
                "are watched by pid, and no more pidfds are lent",
                lost,
            )
        if not alive:
            self._drop_relay(relay, "exited")
        elif relay.ready and not was_ready:
            self._lend_oldest()
        return exited

    def _take_back(self, token: int, fd: int | None) -> Child | None:
        """Watch a lent child here again: by its pidfd, or by pid when ``fd`` is None."""
        with self._lock:
            child = self._lent.get(token)
        if child is None:
            # Settled while away (someone asked before the relay answered).
            if fd is not None:
                os.close(fd)
            return None
        with child._lock:
            notifier = child._owner.notifier
            with self._lock:
                if self._lent.get(token) is not child or not isinstance(notifier, PidfdNotifier):
                    if fd is not None:
                        os.close(fd)
                    return None
                del self._lent[token]
                if fd is None or self._epoll is None:
                    if fd is not None:
                        os.close(fd)
                    notifier.lose()
                    self._swept.add(child)
                    self._update_sigchld_need()
                else:
                    notifier.take_back(fd)
                    self._by_fd[fd] = child
                    self._epoll.register(fd, select.EPOLLIN)
                    self._pidfds_here += 1
        if fd is None:
            _sighandler.wake()  # a sweep soon: it may have exited already
        return child

    def _drop_relay(self, relay: _relay.Relay, what: str, *, kill: bool = False) -> None:
        """The relay is gone, with the pidfds it held: watch those children by pid."""
        if self._epoll is not None:
            self._epoll.unregister(relay.fileno())
        # Reaped before it stops counting as ours: until then the all scope leaves it alone.
        code = relay.close(kill=kill)
        with self._lock:
            self._relay = None
            self._relay_full = False  # a new relay starts with room
            tokens = list(self._lent)
        logger.warning(
            "zombiereaper's relay (pid %d) %s, exit status %s; watching its %d children by pid",
            relay.pid,
            what,
            code,
            len(tokens),
        )
        for token in tokens:
            self._take_back(token, None)

    # --- sweeping ------------------------------------------------------------------------------

    def _sweep(self) -> int:
        self.sweeps += 1
        with self._lock:
            candidates = list(self._swept)
        return sum(self._settle_logged(child) for child in candidates)

    def _settle_logged(self, child: Child) -> bool:
        try:
            return self.settle(child)
        except Exception:
            # A failure to reap one child must not stop the thread that reaps all the others.
            logger.exception("zombiereaper could not reap pid %d", child.pid)
            return False

    def _run_callbacks(self) -> None:
        while self._callbacks:
            callback = self._callbacks.popleft()
            try:
                callback()
            except Exception:
                logger.exception("zombiereaper callback failed")

    def _start(self) -> None:
        self._thread.start()

    def _stop(self) -> None:
        self._stopping = True
        _sighandler.wake()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        # Stopped from its own thread (an on_exit that uninstalls), the loop ends after this
        # callback; either way the thread closes its epoll descriptor on the way out.

    def _close(self) -> None:
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        if self._epoll is not None:
            self._epoll.close()

    def _abandon_after_fork(self) -> None:
        """Close what the forked child inherited; no lock is taken (another thread may own it)."""
        for child in [*self._by_fd.values(), *self._swept]:
            notifier = child._owner.notifier
            if notifier is not None:
                try:
                    notifier.close()
                except OSError:
                    pass
        # zombiereaper._relay's own at-fork hook closed the relay socket: it is the parent's.
        self._relay = None
        try:
            self._close()
        except OSError:
            pass


@dataclass(order=True)
class Timer:
    """A callback due on the reaping thread at ``deadline``; see :meth:`Engine.call_later`."""

    deadline: float
    number: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        """Keep the callback from running (if it has not run yet)."""
        self.cancelled = True


class _SweepSchedule:
    """When the sigchld-watched children are swept: on wakeups, but not in a storm, and on a timer.

    A wakeup asks for a sweep. After a sweep that found nothing, the next one asked for by a
    wakeup waits a quiet period that doubles up to SAFETY_SWEEP_INTERVAL, so a storm of
    spurious SIGCHLD costs a bounded number of sweeps (go-reap PR #1); a sweep that finds an
    exit ends the quiet period. The timer sweeps every SAFETY_SWEEP_INTERVAL regardless, which
    is what bounds the delay when no handler can run (prior-art pitfall 4).
    """

    def __init__(self, now: float) -> None:
        self._last_sweep = now
        self._quiet_period = 0.0
        self._quiet_until = now
        self._pending = False

    def timeout(self, now: float) -> float:
        """Seconds until the next sweep is due."""
        deadline = self._last_sweep + SAFETY_SWEEP_INTERVAL
        if self._pending:
            deadline = min(deadline, self._quiet_until)
        return max(0.0, deadline - now)

    def note_wakeup(self) -> None:
        """Something may have exited: ask for a sweep."""
        self._pending = True

    def is_due(self, now: float) -> bool:
        """Whether a sweep should run now."""
        return (self._pending and now >= self._quiet_until) or (
            now - self._last_sweep >= SAFETY_SWEEP_INTERVAL
        )

    def record_sweep(self, now: float, found: int) -> None:
        """A sweep ran at ``now`` and reaped ``found`` children."""
        self._last_sweep = now
        self._pending = False
        if found:
            self._quiet_period = 0.0
        else:
            self._quiet_period = min(
                max(self._quiet_period * 2, _FIRST_QUIET_PERIOD), SAFETY_SWEEP_INTERVAL
            )
        self._quiet_until = now + self._quiet_period


# --- the process-wide engine ------------------------------------------------------------------

_engine: Engine | None = None
_engine_lock = threading.Lock()
_installed_reapers: weakref.WeakSet[Reaper] = weakref.WeakSet()


def acquire(reaper: Reaper) -> Engine:
    """Count ``reaper`` as a user of the engine, starting the thread for the first one."""
    global _engine
    with _engine_lock:
        _sighandler.check_disposition()
        if _sighandler.is_main_thread():
            _sighandler.install()
        engine = _engine
        if engine is None:
            engine = _engine = Engine()
            engine._start()
        engine._users += 1
        _installed_reapers.add(reaper)
        return engine


def release(reaper: Reaper) -> None:
    """Stop counting ``reaper``; the last one stops the thread and restores the handler."""
    global _engine
    with _engine_lock:
        _installed_reapers.discard(reaper)
        engine = _engine
        if engine is None:
            return
        engine._users -= 1
        if engine._users > 0:
            return
        _engine = None
        if _sighandler.is_main_thread():
            _sighandler.uninstall()
        # Else the handler stays, inert but for chaining, until a Reaper is installed or
        # uninstalled from the main thread again: only the main thread may set handlers.
    engine._stop()


def current() -> Engine | None:
    """The running engine, if any Reaper is installed."""
    return _engine


def find_record(pid: int) -> ExitStatus | None:
    """The latest exit of ``pid`` that any installed Reaper has recorded."""
    for reaper in list(_installed_reapers):
        status = reaper.registry.get(pid)
        if status is not None:
            return status
    return None


def _reset_after_fork() -> None:
    global _engine, _engine_lock
    # The reaping thread does not exist in the child, and its locks may have been held at the
    # fork: replace them rather than take them (uvicorn #894: inherited reaper state).
    _engine_lock = threading.Lock()
    engine, _engine = _engine, None
    reapers = list(_installed_reapers)
    _installed_reapers.clear()
    for reaper in reapers:
        reaper._reset_after_fork()
    if engine is not None:
        engine._abandon_after_fork()
    _sighandler.reset_after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
