"""A waiter never misses its child's settling, whichever thread gets there first.

A Watch makes its Event only when a waiter finds it unsettled (most children are waited for
after they settled, or never). The waiter publishes the Event, then reads the state again;
the engine writes the state, then reads the Event: one of the two always sees the other.
The race test stops the settling thread at each line of ``finish_settling()`` in turn and
lets a waiter run its whole ``wait()`` right there.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import FrameType, SimpleNamespace
from typing import Any

from zombiereaper._watch import Watch

#: How long a waiter waits before the test calls its wakeup lost.
_PATIENCE = 5.0

_Trace = Callable[[FrameType, str, object], object]


def _watch() -> Watch:
    fake: Any = SimpleNamespace(pid=1)  # wait() and settling never touch the source or sink
    return Watch(fake, fake)


def _settle_with_a_waiter_at_line(stop_at: int) -> tuple[bool, list[bool]]:
    """Settle a watch, running a whole wait() when settling reaches its ``stop_at``-th line.

    Returns whether settling had that many lines, and what the waiter's wait() returned.
    """
    watch = _watch()
    go, progressed = threading.Event(), threading.Event()
    results: list[bool] = []

    def note_blocking(frame: FrameType, event: str, arg: object) -> _Trace | None:
        # About to block in an Event's wait: as far as the waiter can get before a wakeup.
        if (
            event == "call"
            and frame.f_code.co_name == "wait"
            and "threading" in (frame.f_code.co_filename)
        ):
            progressed.set()
        return None

    def waiter() -> None:
        go.wait()
        sys.settrace(note_blocking)
        try:
            results.append(watch.wait(_PATIENCE))
        finally:
            sys.settrace(None)
            progressed.set()

    lines = 0

    def pause_settling(frame: FrameType, event: str, arg: object) -> _Trace | None:
        nonlocal lines
        if event == "call":
            return pause_settling if frame.f_code.co_name == "finish_settling" else None
        if event == "line":
            lines += 1
            if lines == stop_at:
                go.set()
                progressed.wait(_PATIENCE)
        return pause_settling

    thread = threading.Thread(target=waiter)
    thread.start()
    sys.settrace(pause_settling)
    try:
        with watch.lock:
            watch.begin_settling(None)
            watch.finish_settling()
    finally:
        sys.settrace(None)
    reached = go.is_set()
    go.set()
    thread.join(2 * _PATIENCE)
    return reached, results


def test_a_waiter_at_any_point_of_the_settling_is_woken() -> None:
    """wait() run whole at each line of finish_settling() returns True, never times out."""
    stop_at = 1
    while True:
        reached, results = _settle_with_a_waiter_at_line(stop_at)
        assert results == [True], f"a waiter that came at line {stop_at} was not woken"
        if not reached:
            break
        stop_at += 1
    assert stop_at > 3, "finish_settling() ran fewer lines than it has: the trace saw nothing"


def test_a_settled_watch_makes_no_event() -> None:
    """Waiting on a settled watch returns at once and allocates nothing."""
    watch = _watch()
    with watch.lock:
        watch.begin_settling(None)
        watch.finish_settling()
    assert watch.wait(0)
    assert watch.wait(None)
    assert watch._done is None


def test_a_wait_that_times_out_says_so() -> None:
    """An unsettled watch: wait() returns False after its timeout, and True once settled."""
    watch = _watch()
    assert not watch.wait(0.01)
    with watch.lock:
        watch.begin_settling(None)
        watch.finish_settling()
    assert watch.wait(0)
