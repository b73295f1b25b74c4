"""The portable backend: SIGCHLD wakeups and a timer, then a non-blocking check of each child.

Serves macOS, kernels without pidfd, children whose pidfd could not be opened (EMFILE), and
children whose pidfd the relay held when it died. It never calls waitpid(-1): each child is
checked on its own through its ProcessRef (pid and start time), so a sweep costs O(n) in the
number of children watched this way (dotnet/corefx #26291 shows why that matters), and a
stolen status is never mistaken for another child's that took the pid (issue 11, race 6).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Final

from .. import _sighandler
from .._process import ProcessRef, can_peek

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._watch import Watch
    from .loop import Loop

#: How often swept children are checked even without a wakeup: a Python-level SIGCHLD handler
#: cannot run while the main thread sits in a long C call, so the timer is what bounds the delay.
SAFETY_SWEEP_INTERVAL: Final = 0.1

#: The first pause after a sweep triggered by a wakeup that found nothing. It doubles while
#: wakeups keep finding nothing, up to SAFETY_SWEEP_INTERVAL, so a storm of spurious SIGCHLD
#: cannot spin a core (go-reap PR #1); a sweep that finds an exit resets it.
_FIRST_QUIET_PERIOD: Final = 0.001


def _still_running(watch: Watch) -> bool:
    """Whether ``watch``'s child is seen running now (False: exited, gone, or can't tell)."""
    notice = watch.notice
    if not isinstance(notice, ProcessRef) or not can_peek():
        return False
    try:
        return notice.peek(exact=False) is None
    except OSError:  # ProcessGone (reaped), or anything unexpected: let a sweep look
        return False


class SweepSchedule:
    """When to sweep: on wakeups, but not in a storm, and on a timer.

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

    def record_idle(self, now: float) -> None:
        """A sweep was due at ``now`` but nothing was watched: no sign of a storm.

        The next wakeup sweeps at once (a spawn's child may exit a moment later).
        """
        self._last_sweep = now
        self._pending = False
        self._quiet_period = 0.0
        self._quiet_until = now


class SweepMonitor:
    """Watches the children that have no descriptor to wait on: each is checked every sweep.

    The reaping thread arms the timer while anything is watched, and for one
    SAFETY_SWEEP_INTERVAL after the last watch left: a program that spawns one short-lived
    child after another then spawns each without waking the thread (its exit's SIGCHLD
    does), at the price of a sweep or two of nothing once it stops.
    """

    def __init__(
        self, loop: Loop, now: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._loop = loop
        self._clock = clock
        self._lock = threading.Lock()
        self._watches: set[Watch] = set()
        self._schedule = SweepSchedule(now)
        #: Whether the reaping thread's current wait ends in time for a timer sweep (it
        #: asked timeout() while something was swept, or soon after): a child added
        #: meanwhile is swept by then without a wakeup.
        self._timer_armed = False
        #: When the last watch left (by ``clock``): the timer stays armed for one interval
        #: after, so that the next spawn of a busy program need not wake the thread.
        self._emptied_at = float("-inf")
        #: Sweeps so far (read by tests of the storm guard).
        self.sweeps = 0

    @property
    def active(self) -> bool:
        """Whether any child is watched this way (then SIGCHLD must wake the loop)."""
        return bool(self._watches)

    def add(self, watch: Watch) -> None:
        """Check ``watch`` on every sweep from now on."""
        with self._lock:
            armed = self._timer_armed
            first = not self._watches
            self._watches.add(watch)
            watch.monitor, watch.slot = self, None
        if first:  # SIGCHLD must wake the loop from now on (see remove())
            self._loop.sweep_needed()
        # From now on its exit raises a SIGCHLD that wakes a sweep. One that came before (it
        # has exited already; a demoted watch has) woke nobody for it: wake the sweep then.
        # So does a reaping thread that sleeps with no sweep timer (nothing swept lately): the
        # timer is what finds an exit while the main thread cannot run the handler. Else a
        # child seen running needs no wakeup, and spawn() saves one.
        if not armed or not _still_running(watch):
            _sighandler.wake()

    def remove(self, watch: Watch) -> None:
        """Stop checking ``watch`` (settled)."""
        with self._lock:
            self._watches.discard(watch)
            last = not self._watches
            if last:
                self._emptied_at = self._clock()
        watch.monitor = None
        # Only a change between empty and not changes what SIGCHLD must do; the loop reads
        # the set's state when told, so the last of two racing calls sees the latest one.
        if last:
            self._loop.sweep_needed()

    def timeout(self, now: float) -> float | None:
        """Seconds until the next sweep is due; None when nothing is swept, nor was lately.

        Lately: within the last SAFETY_SWEEP_INTERVAL. The reaping thread asks this before
        each wait: a timer sweep is armed (or not) until it asks again.
        """
        with self._lock:
            self._timer_armed = bool(self._watches) or (
                now - self._emptied_at < SAFETY_SWEEP_INTERVAL
            )
        return self._schedule.timeout(now) if self._timer_armed else None

    def note_wakeup(self) -> None:
        """A SIGCHLD (or another wakeup) came: something may have exited."""
        self._schedule.note_wakeup()

    def sweep_if_due(self, now: float) -> None:
        """Check every swept child if a sweep is due."""
        if not self._schedule.is_due(now):
            return
        if self._watches:
            self._schedule.record_sweep(now, self.sweep())
        else:
            self._schedule.record_idle(now)

    def sweep(self) -> int:
        """Check every swept child now; return how many were settled."""
        self.sweeps += 1
        with self._lock:
            candidates = list(self._watches)
        return sum(self._loop.settle_now(watch) for watch in candidates)

    def count(self) -> int:
        """How many children are watched this way."""
        with self._lock:
            return len(self._watches)
