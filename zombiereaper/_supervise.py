"""Supervision: keep copies of a program or a Python callable running, by a restart policy.

A Service runs ``replicas`` copies and reacts to each copy's exit on the reaping thread: it
restarts the copy by policy after a backoff delay, gives up when restarts come too often
(Erlang's intensity within a period, systemd's StartLimitBurst), and tells ``on_event`` about
each step. Time goes through a Clock, so that tests drive the backoff schedule by hand.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from . import _engine
from ._child import begin_tree_stop, kill_unheld, on_settled, stop_children
from ._errors import ReaperError

if TYPE_CHECKING:
    import asyncio
    import multiprocessing.process
    from collections.abc import Callable

    from ._child import Child
    from ._engine import Engine
    from ._reaper import Reaper
    from ._status import ExitStatus

logger = logging.getLogger("zombiereaper")

RestartPolicy = Literal["always", "on-failure", "never"]
RESTART_POLICIES: Final[tuple[RestartPolicy, ...]] = ("always", "on-failure", "never")

ServiceState = Literal["starting", "running", "backing-off", "stopping", "stopped", "failed"]
EventKind = Literal["started", "exited", "restarting", "gave-up", "stopped"]


# --- policy records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """How long to wait before restarting a copy: exponential, capped, with jitter.

    The n-th restart in a row of one copy waits ``initial * factor**(n-1)`` seconds, at most
    ``maximum``, shortened by a random fraction up to ``jitter`` (so that copies that crashed
    together do not restart in lockstep, also once they all reach the cap). A copy that stayed
    up ``reset_after`` seconds or more starts again from ``initial``.

    Attributes:
        initial: The first delay, in seconds.
        factor: What each further delay is multiplied by.
        maximum: The longest delay.
        jitter: The largest random cut, as a fraction of the delay (0 for none, at most 1).
        reset_after: Seconds of uptime after which the next failure counts as the first.
    """

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.1
    reset_after: float = 10.0

    def __post_init__(self) -> None:
        for name in ("initial", "factor", "maximum", "jitter", "reset_after"):
            _check_number("Backoff", name, getattr(self, name))
        # Each test is written so that NaN fails it. reset_after may be infinite (never reset);
        # the delays must be finite, or a restart would never come.
        if not (0 <= self.initial < math.inf):
            raise ValueError(f"Backoff needs a finite initial >= 0, got initial={self.initial!r}")
        if not (1 <= self.factor < math.inf):
            raise ValueError(f"Backoff needs a finite factor >= 1, got factor={self.factor!r}")
        if not (self.initial <= self.maximum < math.inf):
            raise ValueError(
                "Backoff needs a finite maximum >= initial, got "
                f"initial={self.initial!r}, maximum={self.maximum!r}"
            )
        if not (0 <= self.jitter <= 1):
            raise ValueError(f"Backoff needs 0 <= jitter <= 1, got jitter={self.jitter!r}")
        if not (self.reset_after >= 0):
            raise ValueError(
                f"Backoff needs reset_after >= 0 (math.inf: never), got "
                f"reset_after={self.reset_after!r}"
            )

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The delay before restart number ``attempt`` (1 for the first in a row)."""
        try:
            grown = self.initial * self.factor ** max(0, attempt - 1)
        except OverflowError:
            # factor ** attempt outgrows a float after enough failures in a row (1024 of
            # them at the default factor): the cap applies all the same.
            grown = math.inf
        base = min(self.maximum, grown)
        return base * (1 - rng.uniform(0, self.jitter))


@dataclass(frozen=True)
class Intensity:
    """At most ``max_restarts`` restarts within ``period`` seconds; past it, give up.

    Attributes:
        max_restarts: Restarts allowed within any ``period`` seconds (all copies together).
        period: The window, in seconds.
    """

    max_restarts: int = 5
    period: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int):
            raise TypeError(
                "Intensity(max_restarts=...) must be an int (a number of restarts), got "
                f"{self.max_restarts!r}"
            )
        _check_number("Intensity", "period", self.period)
        if self.max_restarts < 0:
            raise ValueError(
                f"Intensity needs max_restarts >= 0, got max_restarts={self.max_restarts!r}"
            )
        if not self.period > 0:  # NaN fails it too; math.inf counts every restart ever
            raise ValueError(f"Intensity needs period > 0, got period={self.period!r}")


@dataclass(frozen=True)
class ServiceEvent:
    """One step in a Service's life, as ``on_event`` hears it.

    Attributes:
        kind: ``"started"``, ``"exited"``, ``"restarting"``, ``"gave-up"`` or ``"stopped"``.
        service: The Service's name.
        replica: Which copy (0-based), or None for the whole Service.
        pid: The copy's pid (started, exited).
        status: How the copy ended (exited).
        delay: Seconds until the restart (restarting).
        time: When it happened, on the Service's clock (NaN if the clock itself failed).
        restarts: The restarts that the intensity limit counted, the one it refused included
            (gave-up, when the limit was hit).
        window: The seconds between the oldest of those restarts and the refused one
            (gave-up, when the limit was hit).
        intensity: The limit that was hit (gave-up).
        error: The unexpected error that ended the Service (gave-up, when the Service failed
            on an error in its own machinery or its clock instead of hitting the limit).
    """

    kind: EventKind
    service: str
    replica: int | None = None
    pid: int | None = None
    status: ExitStatus | None = None
    delay: float | None = None
    time: float = 0.0
    restarts: int | None = None
    window: float | None = None
    intensity: Intensity | None = None
    error: BaseException | None = None

    def describe(self) -> str:
        """Say what happened in words."""
        who = self.service if self.replica is None else f"{self.service}[{self.replica}]"
        if self.kind == "started":
            return f"{who} started as pid {self.pid}"
        if self.kind == "exited":
            outcome = self.status.outcome if self.status is not None else "status lost"
            return f"{who} pid {self.pid} {outcome}"
        if self.kind == "restarting":
            return f"{who} restarting in {self.delay:.3g} s"
        if self.kind == "gave-up":
            return f"{who} gave up: {self._why_given_up()}"
        return f"{who} stopped"

    def _why_given_up(self) -> str:
        if self.error is not None:
            return (
                f"unexpected error {type(self.error).__name__}: {self.error} (its traceback is "
                "logged); its copies are stopped"
            )
        if self.restarts is None or self.intensity is None:
            return "too many restarts"
        plural = "" if self.restarts == 1 else "s"
        return (
            f"{self.restarts} restart{plural} in {self.window or 0.0:.3g} s, limit "
            f"{self.intensity.max_restarts} in {self.intensity.period:g} s"
        )


class ServiceTimeout(ReaperError, TimeoutError):
    """A Service still ran when :meth:`Service.wait` had waited as long as it was allowed to.

    Attributes:
        service: The Service's name.
        timeout: The number of seconds that the wait allowed.
    """

    def __init__(self, service: str, timeout: float, message: str | None = None) -> None:
        super().__init__(
            message
            or f"service {service!r} still ran after {timeout:g} s; wait again, or stop() it"
        )
        self.service = service
        self.timeout = timeout


# --- clocks ---------------------------------------------------------------------------------------


class Cancellable(Protocol):
    """A scheduled call that can be called off."""

    def cancel(self) -> None:
        """Keep it from running."""
        ...


class Clock(Protocol):
    """Where a Service reads the time and schedules its restarts.

    The real clock is used unless ``supervise(clock=...)`` names another, such as
    :class:`~zombiereaper.testing.ManualClock`.
    """

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        """Run ``callback`` once ``delay`` seconds have passed; return a way to call it off."""
        ...


# Public in zombiereaper.testing, where users import them from and the docs show them.
Cancellable.__module__ = Clock.__module__ = "zombiereaper.testing"

#: The longest timer handed to the engine: its epoll waits cannot take more than 2**31 ms
#: (about 24.8 days; a longer one fails the reaping loop), so longer delays go in steps.
_LONGEST_TIMER: Final = 86_400.0


class EngineClock:
    """The real clock: time.monotonic, and timers run on the reaping thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def now(self) -> float:
        """Seconds on the monotonic clock."""
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        """Run ``callback`` on the reaping thread in ``delay`` seconds (never, for infinity)."""
        if delay <= _LONGEST_TIMER:
            return self._engine.call_later(delay, callback)
        return _LongTimer(self._engine, time.monotonic() + delay, callback)


class _LongTimer:
    """A timer further off than the engine's longest wait: re-armed a day at a time.

    An infinite (or NaN) delay never comes due and never wakes the engine at all.
    """

    def __init__(self, engine: Engine, due: float, callback: Callable[[], None]) -> None:
        self._engine = engine
        self._due = due
        self._callback = callback
        self._lock = threading.Lock()
        self._cancelled = False
        self._step: Cancellable | None = None
        if math.isfinite(due):
            self._arm()

    def _arm(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            remaining = self._due - time.monotonic()
            if remaining <= _LONGEST_TIMER:
                self._step = self._engine.call_later(remaining, self._fire)
            else:
                self._step = self._engine.call_later(_LONGEST_TIMER, self._arm)

    def _fire(self) -> None:
        with self._lock:
            if self._cancelled:
                return
        self._callback()

    def cancel(self) -> None:
        """Keep it from running."""
        with self._lock:
            self._cancelled = True
            if self._step is not None:
                self._step.cancel()


# --- the service ----------------------------------------------------------------------------------


@dataclass
class _Replica:
    index: int
    child: Child | None = None
    started_at: float = 0.0
    in_a_row: int = 0
    timer: Cancellable | None = None
    #: Copies being replaced or removed: their exits restart nothing.
    retiring: set[int] = field(default_factory=set)


class Service:
    """Copies of a program or callable kept running by a restart policy.

    Made by :meth:`Reaper.supervise`; see there for the arguments.

    Attributes:
        name: The Service's name, used in events and logs.
    """

    def __init__(
        self,
        reaper: Reaper,
        *,
        name: str,
        start: Callable[[], Child],
        replicas: int,
        restart: RestartPolicy,
        backoff: Backoff,
        intensity: Intensity,
        stop_timeout: float | None,
        on_event: Callable[[ServiceEvent], object] | None,
        clock: Clock,
        stop_tree: bool = False,
        rng: random.Random,
    ) -> None:
        self.name = name
        self._reaper = reaper
        self._start = start
        self._restart_policy = restart
        self._backoff = backoff
        self._intensity = intensity
        self._stop_timeout = stop_timeout
        self._stop_tree = stop_tree
        self._on_event = on_event
        self._clock = clock
        self._rng = rng
        self._lock = threading.RLock()
        self._ended = threading.Event()
        self._replicas = [_Replica(i) for i in range(replicas)]
        self._restart_times: deque[float] = deque()
        self._restarts = 0
        self._last_status: ExitStatus | None = None
        self._state: ServiceState = "starting"
        self._final = False
        #: The state the Service ends in once its copies have exited (set when stopping).
        self._ending: ServiceState | None = None
        #: Copies whose exit has not been handled yet (retiring ones included).
        self._unhandled: set[Child] = set()
        self._handled = threading.Condition(self._lock)
        self._killer: Cancellable | None = None
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    # --- state ----------------------------------------------------------------------------

    @property
    def state(self) -> ServiceState:
        """``starting``, ``running``, ``backing-off``, ``stopping``, ``stopped`` or ``failed``."""
        return self._state

    @property
    def children(self) -> tuple[Child, ...]:
        """The copies running now."""
        with self._lock:
            return tuple(r.child for r in self._replicas if r.child is not None)

    @property
    def replicas(self) -> int:
        """How many copies the Service keeps."""
        return len(self._replicas)

    @property
    def restarts(self) -> int:
        """How many restarts the Service has made."""
        return self._restarts

    @property
    def last_status(self) -> ExitStatus | None:
        """How the last copy to exit ended."""
        return self._last_status

    def __repr__(self) -> str:
        return (
            f"<Service {self.name!r} {self._state} replicas={len(self._replicas)} "
            f"running={len(self.children)} restarts={self._restarts}>"
        )

    # --- starting and exits ---------------------------------------------------------------

    def _launch_all(self) -> None:
        with self._lock:
            for replica in self._replicas:
                self._launch(replica)
            self._update_state()

    def _launch(self, replica: _Replica) -> None:
        """Start one copy into ``replica`` (with the lock held)."""
        replica.timer = None
        child = self._start()
        # Followed before anything else can fail (the clock, say): a copy that runs is always
        # one that a stop reaches and whose exit is handled.
        replica.child = child
        self._unhandled.add(child)
        on_settled(child, lambda done: self._on_exit(replica, done))
        replica.started_at = self._clock.now()
        self._emit(ServiceEvent("started", self.name, replica.index, pid=child.pid))

    def _on_exit(self, replica: _Replica, child: Child) -> None:
        try:
            try:
                _close_pipes(child)
            finally:
                # Whatever fails, the exit counts as handled: a stop waits for every one.
                with self._lock:
                    try:
                        self._handle_exit(replica, child)
                    finally:
                        self._unhandled.discard(child)
                        if self._ending is not None and not self._unhandled and not self._final:
                            self._finish(self._ending)
                        self._handled.notify_all()
        except Exception as err:
            self._fail(err, f"handling the exit of {self.name}[{replica.index}] pid {child.pid}")

    def _handle_exit(self, replica: _Replica, child: Child) -> None:
        status = child.status
        self._last_status = status if status is not None else self._last_status
        self._emit(ServiceEvent("exited", self.name, replica.index, child.pid, status))
        if child.pid in replica.retiring:
            replica.retiring.discard(child.pid)
            return
        if replica.child is not child:
            return
        replica.child = None
        if self._final or self._ending is not None:
            return
        if not self._wants_restart(status):
            self._update_state()
            return
        self._schedule_restart(replica)

    def _wants_restart(self, status: ExitStatus | None) -> bool:
        if self._restart_policy == "always":
            return True
        if self._restart_policy == "never":
            return False
        return status is None or not status.success

    def _schedule_restart(self, replica: _Replica) -> None:
        now = self._clock.now()
        period = self._intensity.period
        while self._restart_times and now - self._restart_times[0] >= period:
            self._restart_times.popleft()
        if len(self._restart_times) >= self._intensity.max_restarts:
            oldest = self._restart_times[0] if self._restart_times else now
            self._give_up(restarts=len(self._restart_times) + 1, window=now - oldest)
            return
        self._restart_times.append(now)
        if now - replica.started_at >= self._backoff.reset_after:
            replica.in_a_row = 0
        replica.in_a_row += 1
        delay = self._backoff.delay(replica.in_a_row, self._rng)
        replica.timer = self._clock.call_later(delay, lambda: self._restart(replica))
        self._update_state()
        # Told once the state says so: a listener woken by the event sees "backing-off".
        self._emit(ServiceEvent("restarting", self.name, replica.index, delay=delay))

    def _restart(self, replica: _Replica) -> None:
        try:
            with self._lock:
                if self._final or self._ending is not None or replica.child is not None:
                    return
                if replica not in self._replicas:
                    return
                self._restarts += 1
                try:
                    self._launch(replica)
                except ReaperError:
                    return  # its Reaper is being uninstalled: the Service is about to stop
                except OSError:
                    logger.exception("%s[%d] could not be restarted", self.name, replica.index)
                    self._schedule_restart(replica)
                    return
                self._update_state()
        except Exception as err:
            self._fail(err, f"restarting {self.name}[{replica.index}]")

    def _give_up(self, restarts: int, window: float) -> None:
        self._emit(
            ServiceEvent(
                "gave-up", self.name, restarts=restarts, window=window, intensity=self._intensity
            )
        )
        self._stop_copies(final_state="failed")

    def _fail(self, error: Exception, doing: str) -> None:
        """End the Service ``failed`` after an unexpected error in its own machinery.

        It ran on the reaping thread or in a timer, where nobody would hear of it: without
        this, the Service would go on saying "running" with nothing running or scheduled.
        Nothing here blocks and nothing is raised.
        """
        logger.error(
            "%s failed while %s; it stops its copies and ends failed",
            self.name,
            doing,
            exc_info=error,
        )
        with self._lock:
            if self._final or self._ending is not None:
                return  # a stop is under way: it ends the Service as it was asked to
            self._emit(ServiceEvent("gave-up", self.name, error=error), clock_may_fail=True)
            try:
                self._stop_copies(final_state="failed", block=False)
            except Exception:
                # Say so and end: the copies left running are the Reaper's, stopped with it.
                logger.exception("%s could not stop its copies", self.name)
                if not self._final:
                    self._finish("failed")

    def _update_state(self) -> None:
        if self._final or self._ending is not None:
            return
        if any(r.timer is not None for r in self._replicas):
            self._state = "backing-off"
        elif any(r.child is not None for r in self._replicas):
            self._state = "running"
        else:
            # Every copy ended and the policy restarts none: the Service is done.
            self._finish("stopped")

    def _finish(self, state: ServiceState) -> None:
        self._final = True
        self._state = state
        try:
            if self._killer is not None:
                self._killer.cancel()
            if state == "stopped":
                self._emit(ServiceEvent("stopped", self.name), clock_may_fail=True)
        finally:
            # Whatever failed above, the waiters must learn that the Service has ended.
            self._ended.set()
            waiters, self._async_waiters = self._async_waiters, []
            for loop, future in waiters:
                try:
                    loop.call_soon_threadsafe(_wake, future)
                except RuntimeError:
                    pass  # that event loop is closed

    # --- control ------------------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> None:
        """Stop every copy (SIGTERM, wait, then SIGKILL) and restart none; state ``stopped``.

        Args:
            timeout: Seconds between SIGTERM and SIGKILL; None takes the Service's
                ``stop_timeout`` (or else the Reaper's).
        """
        self._stop_copies(final_state="stopped", timeout=timeout)

    def _stop_copies(
        self, final_state: ServiceState, timeout: float | None = None, *, block: bool = True
    ) -> None:
        """Stop every copy and end in ``final_state`` once all their exits are handled.

        A stop already under way (a give-up, say) keeps its final state: this only waits.
        From the reaping thread, or without ``block``, nothing blocks: SIGTERM now, SIGKILL
        from a timer.
        """
        nonblocking = _engine.is_reaping_thread() or not block
        with self._lock:
            if self._final:
                return
            already = self._ending is not None
            if not already:
                self._ending = final_state
                self._state = "stopping"
                for replica in self._replicas:
                    if replica.timer is not None:
                        try:
                            replica.timer.cancel()
                        except Exception:
                            # Harmless once _ending is set: a restart that runs does nothing.
                            logger.exception("%s could not cancel a restart", self.name)
                        replica.timer = None
            children = list(self._unhandled)
            if not children:
                self._finish(self._ending or final_state)
                return
        grace = timeout if timeout is not None else self._stop_timeout
        if nonblocking:
            if not already:
                kill_after = grace if grace is not None else self._reaper.stop_timeout
                if self._stop_tree:
                    self._stop_trees_later(children, kill_after)
                    return
                for child in children:
                    child.terminate()
                self._kill_later(children, kill_after)
            return
        if not already:
            stop_children(
                children,
                grace if grace is not None else self._reaper.stop_timeout,
                tree=self._stop_tree,
            )
        with self._handled:
            # Returns once every exit has been handled: events told, pipes closed.
            self._handled.wait_for(lambda: self._final)

    def _stop_trees_later(self, children: list[Child], delay: float) -> None:
        """Freeze and SIGTERM the copies' trees now; SIGKILL what still runs in ``delay`` s.

        Nothing here waits (this runs on the reaping thread, or after a failure): the freeze
        only sends signals and reads /proc, and the timer sends the SIGKILLs.
        """
        stopping, unheld = begin_tree_stop(children)

        def kill_the_stubborn() -> None:
            try:
                kill_unheld(unheld, time.monotonic())
                killed = stopping.kill()
                if killed:
                    logger.warning(
                        "%s: %s still ran %g s after SIGTERM; sent SIGKILL",
                        self.name,
                        ", ".join(proc.describe() for proc in killed),
                        delay,
                    )
            except Exception:
                logger.exception("%s could not kill the trees of its copies", self.name)
            finally:
                stopping.close()

        # Not self._killer, which the end of the Service cancels: the copies may all have
        # exited by then while descendants that ignored SIGTERM still run.
        try:
            self._clock.call_later(delay, kill_the_stubborn)
        except Exception:
            logger.exception("%s could not schedule SIGKILL; sending it now", self.name)
            kill_the_stubborn()

    def _kill_later(self, children: list[Child], delay: float) -> None:
        """Send SIGKILL to those of ``children`` that still run in ``delay`` seconds."""

        def kill_the_stubborn() -> None:
            for child in children:
                try:
                    child.kill()  # a no-op for those already reaped
                except Exception:
                    logger.exception("%s could not kill pid %d", self.name, child.pid)

        with self._lock:
            try:
                self._killer = self._clock.call_later(delay, kill_the_stubborn)
            except Exception:
                # Without the timer nothing would ever kill a copy that ignores SIGTERM, and
                # the Service would stay "stopping": kill them now instead.
                logger.exception("%s could not schedule SIGKILL; sending it now", self.name)
                kill_the_stubborn()

    def _refuse_on_reaping_thread(self, what: str) -> None:
        if _engine.is_reaping_thread():
            raise ReaperError(
                f"{what} waits for copies to exit, which the reaping thread reports: it cannot "
                "run there (from on_event?); call it from another thread"
            )

    def restart(self) -> None:
        """Restart every copy, one at a time: start the new copy, then stop the old one.

        The pool never drops below its size while this runs (it briefly holds one more).

        Raises:
            ReaperError: Called from ``on_event`` on the reaping thread, or the Service is
                stopping or has ended.
        """
        self._refuse_on_reaping_thread("restart()")
        for replica in list(self._replicas):
            with self._lock:
                if self._final or self._ending is not None:
                    raise ReaperError(f"{self!r} is stopping or has ended: nothing to restart")
                old = replica.child
                if old is not None:
                    replica.retiring.add(old.pid)
                if replica.timer is not None:
                    replica.timer.cancel()
                try:
                    self._launch(replica)
                except BaseException:
                    if old is not None:
                        # The old copy stays in charge: its exit must be handled as usual.
                        replica.retiring.discard(old.pid)
                        replica.child = old
                    raise
                self._update_state()
            if old is not None:
                old.stop(self._stop_timeout, tree=self._stop_tree)

    def scale(self, replicas: int) -> None:
        """Run ``replicas`` copies: start new ones, or stop the highest-numbered ones.

        Raises:
            TypeError: ``replicas`` is not an int.
            ValueError: ``replicas`` < 1.
        """
        _check_replicas(replicas)
        if replicas < len(self._replicas):
            self._refuse_on_reaping_thread("scale() down")
        retired: list[Child] = []
        with self._lock:
            if self._final or self._ending is not None:
                raise ReaperError(f"{self!r} is stopping or has ended; supervise() it again")
            while len(self._replicas) < replicas:
                replica = _Replica(len(self._replicas))
                self._replicas.append(replica)
                self._launch(replica)
            while len(self._replicas) > replicas:
                replica = self._replicas.pop()
                if replica.timer is not None:
                    replica.timer.cancel()
                if replica.child is not None:
                    replica.retiring.add(replica.child.pid)
                    retired.append(replica.child)
            self._update_state()
        for child in retired:
            child.stop(self._stop_timeout, tree=self._stop_tree)

    def wait(self, timeout: float | None = None) -> ServiceState:
        """Block until the Service is ``stopped`` or ``failed``; return that state.

        Raises:
            ServiceTimeout: It still ran after ``timeout`` seconds (a TimeoutError).
            ReaperError: Called from ``on_event`` on the reaping thread.
        """
        if not self._ended.is_set():
            self._refuse_on_reaping_thread("wait()")
        if not self._ended.wait(timeout):
            assert timeout is not None  # without one, the wait lasts until the end
            raise ServiceTimeout(
                self.name,
                timeout,
                f"{self!r} still ran after {timeout:g} s; wait again, or stop() it",
            )
        return self._state

    async def wait_async(self) -> ServiceState:
        """Await, in a running event loop, the end of the Service; return its final state."""
        import asyncio  # noqa: PLC0415 - importing asyncio costs more than all of zombiereaper

        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        waiter = (loop, ended)
        with self._lock:
            if self._ended.is_set():
                return self._state
            self._async_waiters.append(waiter)
        try:
            await ended
        finally:
            with self._lock:
                if waiter in self._async_waiters:
                    self._async_waiters.remove(waiter)
        return self._state

    # --- events -----------------------------------------------------------------------------

    def _emit(self, event: ServiceEvent, *, clock_may_fail: bool = False) -> None:
        """Log ``event`` and tell ``on_event``, stamped with the clock's time.

        With ``clock_may_fail`` (on the way to a final state), a clock that raises is logged
        and the event told with a NaN time: the end of the Service must be told all the same.
        """
        try:
            now = self._clock.now()
        except Exception:
            if not clock_may_fail:
                raise
            logger.exception("%s: the clock's now() failed", self.name)
            now = math.nan
        event = dataclasses.replace(event, time=now)
        level = logging.WARNING if event.kind == "gave-up" else logging.INFO
        logger.log(level, "%s", event.describe())
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("on_event callback failed for %s", event.describe())


def launch(service: Service) -> None:
    """Start every copy of a new Service (Reaper.supervise() calls this once).

    Raises:
        OSError: A copy could not be started (the program is missing, say).
    """
    service._launch_all()


def _close_pipes(child: Child) -> None:
    """Close the pipes of a copy that has exited: nobody else holds its Popen."""
    popen = child.popen
    if popen is None:
        return
    for stream in (popen.stdin, popen.stdout, popen.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass  # a broken pipe on flush: the reader is gone


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _check_number(owner: str, name: str, value: object) -> None:
    """Refuse a ``value`` for ``owner(name=...)`` that is not an int or a float (bools neither)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}({name}=...) must be a number (an int or a float), got {value!r}")


def _check_replicas(replicas: object) -> None:
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise TypeError(f"replicas must be an int (the number of copies), got {replicas!r}")
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas!r}")


def _check_command(args: object) -> None:
    """Refuse what Popen would refuse as a command, and a command that a restart cannot reuse."""
    if isinstance(args, str | bytes | os.PathLike):
        return
    if not isinstance(args, Sequence):
        # An iterator would be used up by the first copy: each restart needs the command again.
        raise TypeError(
            "args must be the program as a str, bytes or path, or a sequence (a list) of its "
            f"arguments, got {args!r}"
        )
    if not args:
        raise ValueError("args is empty: a command needs a program to run (args=['prog', ...])")
    for arg in args:
        if not isinstance(arg, str | bytes | os.PathLike):
            raise TypeError(
                f"each argument in args must be a str, bytes or path, got {arg!r} in {args!r}"
            )


def _check_start_method(start_method: object) -> None:
    import multiprocessing  # noqa: PLC0415 - only services of callables need it

    methods = multiprocessing.get_all_start_methods()
    if not isinstance(start_method, str):
        raise TypeError(
            f"start_method must be a str, one of {', '.join(map(repr, methods))}, or None; "
            f"got {start_method!r}"
        )
    if start_method not in methods:
        raise ValueError(
            f"start_method must be one of {', '.join(map(repr, methods))} here, or None for "
            f"multiprocessing's default; got {start_method!r}"
        )


def check_supervise_arguments(  # noqa: PLR0912 - one check per argument, in order
    *,
    args: object,
    target: object,
    name: object,
    replicas: object,
    restart: object,
    backoff: object,
    intensity: object,
    stop_timeout: object,
    on_event: object,
    target_args: object,
    target_kwargs: object,
    start_method: object,
    clock: object,
    rng: object,
    spawn_kwargs: Mapping[str, object],
) -> None:
    """Refuse bad supervise() arguments at once, before anything starts.

    Raises:
        TypeError: An argument of the wrong type.
        ValueError: Both or neither of ``args`` and ``target``, ``replicas`` < 1, an unknown
            restart policy or start method, a negative ``stop_timeout``, an empty ``args`` or
            ``name``, Popen keywords with ``target``, or ``target_args``, ``target_kwargs`` or
            ``start_method`` with ``args``.
    """
    if (args is None) == (target is None):
        raise ValueError(
            "supervise() takes a program (args=[...]) or a Python callable (target=...), "
            "exactly one of them"
        )
    if args is not None:
        _check_command(args)
    if target is not None and not callable(target):
        raise TypeError(f"target must be a callable (a function, say), got {target!r}")
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        if not name:
            raise ValueError(
                "name must not be empty: pass None to name the Service after its program"
            )
    _check_replicas(replicas)
    if not isinstance(restart, str):
        raise TypeError(
            f"restart must be one of {', '.join(map(repr, RESTART_POLICIES))}, got {restart!r}"
        )
    if restart not in RESTART_POLICIES:
        raise ValueError(
            f"restart must be one of {', '.join(map(repr, RESTART_POLICIES))}, got {restart!r}"
        )
    if backoff is not None and not isinstance(backoff, Backoff):
        raise TypeError(
            f"backoff must be a Backoff, such as Backoff(initial=0.5, maximum=60), or None for "
            f"the defaults; got {backoff!r}"
        )
    if intensity is not None and not isinstance(intensity, Intensity):
        raise TypeError(
            "intensity must be an Intensity, such as Intensity(max_restarts=5, period=60), or "
            f"None for the defaults; got {intensity!r}"
        )
    if stop_timeout is not None:
        if isinstance(stop_timeout, bool) or not isinstance(stop_timeout, int | float):
            raise TypeError(
                f"stop_timeout must be a number of seconds or None (the Reaper's), got "
                f"{stop_timeout!r}"
            )
        if not stop_timeout >= 0:
            raise ValueError(
                f"stop_timeout must be >= 0 seconds (math.inf: never SIGKILL), got {stop_timeout!r}"
            )
    if on_event is not None and not callable(on_event):
        raise TypeError(
            f"on_event must be a callable that takes a ServiceEvent, or None; got {on_event!r}"
        )
    if not isinstance(target_args, Sequence) or isinstance(target_args, str | bytes):
        raise TypeError(
            f"target_args must be a tuple or list of arguments for target, got {target_args!r}"
        )
    if target_kwargs is not None and (
        not isinstance(target_kwargs, Mapping) or not all(isinstance(k, str) for k in target_kwargs)
    ):
        raise TypeError(
            "target_kwargs must be a dict of keyword arguments (str keys) for target, or None; "
            f"got {target_kwargs!r}"
        )
    if start_method is not None:
        _check_start_method(start_method)
    if clock is not None and not (
        callable(getattr(clock, "now", None)) and callable(getattr(clock, "call_later", None))
    ):
        raise TypeError(
            "clock must have now() and call_later() (see zombiereaper.testing.Clock), such as "
            f"zombiereaper.testing.ManualClock(), or be None for the real clock; got {clock!r}"
        )
    if rng is not None and not isinstance(rng, random.Random):
        raise TypeError(
            f"rng must be a random.Random, such as random.Random(7), or None; got {rng!r}"
        )
    if target is not None and spawn_kwargs:
        raise ValueError(
            f"Popen keywords ({', '.join(spawn_kwargs)}) apply to programs (args=...), "
            "not to a target callable"
        )
    if args is not None:
        given = [
            f"{what}=..."
            for what, value in (
                ("target_args", target_args),
                ("target_kwargs", target_kwargs),
                ("start_method", start_method),
            )
            if value  # the defaults, (), None, and empty ones are fine
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} apply to a target callable (target=...), not to a program: "
                "put the program's arguments in args"
            )


def process_starter(
    reaper: Reaper,
    target: Callable[..., object],
    target_args: Sequence[Any],
    target_kwargs: Mapping[str, Any],
    start_method: str | None,
) -> Callable[[], Child]:
    """Make the function that starts one copy of ``target`` through multiprocessing."""
    import multiprocessing  # noqa: PLC0415 - only services of callables need it

    context = multiprocessing.get_context(start_method)

    def start() -> Child:
        process: multiprocessing.process.BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=target, args=tuple(target_args), kwargs=dict(target_kwargs), daemon=False
        )
        process.start()
        return reaper.watch(process)

    return start


# Imported on first use (Reaper.supervise(), or one of these names asked of the package), maybe
# after a Service was made: shown as zombiereaper.X from the start, where users import them from.
for _public in (Backoff, Intensity, ServiceEvent, ServiceTimeout, Service):
    _public.__module__ = __name__.rpartition(".")[0]
del _public
