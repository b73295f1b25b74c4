"""Tools for testing code that uses zombiereaper: a clock that moves only when told to.

A Service reads the time and schedules its restarts through a :class:`Clock`. By default that
is the real clock (``time.monotonic()``, timers on the reaping thread); a test passes
``clock=ManualClock()`` to :meth:`Reaper.supervise() <zombiereaper.Reaper.supervise>` and drives
the backoff schedule and the intensity period by hand, without sleeping through them::

    from zombiereaper.testing import ManualClock

    clock = ManualClock()
    service = reaper.supervise(["sh", "-c", "exit 1"], clock=clock)
    ...
    clock.advance(0.1)  # the restart that was due in 0.1 s runs here, in this thread

Any object with the methods of :class:`Clock` will do as a clock.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._supervise import Cancellable, Clock

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Cancellable", "Clock", "ManualClock"]


class ManualClock:
    """A clock that moves only when told to: for tests of backoff schedules.

    :meth:`advance` moves time forward and runs, in the calling thread, every callback that
    has come due. It implements :class:`Clock`.

    Args:
        start: The time the clock shows at first.

    Raises:
        TypeError: ``start`` is not a number.
        ValueError: ``start`` is NaN or infinite.
    """

    def __init__(self, start: float = 0.0) -> None:
        _check_finite("ManualClock(start=...)", start)
        self._now = float(start)
        self._lock = threading.Lock()
        self._timers: list[_ManualTimer] = []

    def now(self) -> float:
        """The clock's current time."""
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        """Run ``callback`` when the clock has been advanced ``delay`` seconds from now."""
        timer = _ManualTimer(self._now + max(0.0, delay), callback)
        with self._lock:
            self._timers.append(timer)
        return timer

    def pending(self) -> list[float]:
        """The due times of the callbacks not yet run or cancelled, soonest first."""
        with self._lock:
            return sorted(t.due for t in self._timers if not t.cancelled)

    def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds`` and run what has come due, in order.

        Raises:
            TypeError: ``seconds`` is not a number.
            ValueError: ``seconds`` is negative, NaN or infinite (the clock never goes back).
        """
        _check_finite("ManualClock.advance(seconds)", seconds)
        if seconds < 0:
            raise ValueError(
                f"ManualClock.advance(seconds) moves the clock forward: seconds must be >= 0, "
                f"got {seconds!r}"
            )
        target = self._now + seconds
        while True:
            with self._lock:
                due = [t for t in self._timers if not t.cancelled and t.due <= target]
                if not due:
                    break
                timer = min(due, key=lambda t: t.due)
                self._timers.remove(timer)
            self._now = max(self._now, timer.due)
            timer.callback()
        self._now = target


@dataclass
class _ManualTimer:
    due: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


def _check_finite(where: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{where} takes a number of seconds (an int or a float), got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{where} takes a finite number of seconds, got {value!r}")
