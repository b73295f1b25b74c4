"""The few internals that tests look at, in one place: when the core moves, only this changes.

Tests read the engine's state (how many pidfds are lent, whether a relay runs, how a child is
watched) and lower its thresholds; nothing here changes behaviour but those knobs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from zombiereaper import Child, _engine, _process, _sighandler
from zombiereaper._backends import sigchld
from zombiereaper._backends.pidfd import PidfdMonitor
from zombiereaper._child import on_settled
from zombiereaper._watch import Watch


def engine_now() -> _engine.Engine:
    """The running engine (a Reaper must be installed)."""
    engine = _engine.current()
    assert engine is not None, "no Reaper is installed"
    return engine


def watch_of(child: Child) -> Watch:
    """The engine's record of ``child``."""
    return child._watch


def is_swept(child: Child) -> bool:
    """Whether ``child`` is watched by sweeps (no descriptor of its own)."""
    notice = watch_of(child).notice
    return notice is None or notice.fileno is None


def async_waiters(child: Child) -> int:
    """How many event-loop waiters ``child`` has."""
    return len(watch_of(child)._async_waiters)


def sweeps() -> int:
    """How many sweeps of the swept children the engine has made."""
    return engine_now().monitors.sweep.sweeps


def relay_pid() -> int | None:
    """The relay's pid, while one runs."""
    pids = _engine.helper_pids()
    return next(iter(pids)) if pids else None


def lent_count() -> int:
    """How many pidfds the relay holds."""
    return engine_now().monitors.pidfd.count()[1]


def pidfds_here() -> int:
    """How many of its own pidfds the engine watches in this process."""
    return engine_now().monitors.pidfd.count()[0]


def lent_pids() -> set[int]:
    """The pids of the children whose pidfd the relay holds."""
    monitor = engine_now().monitors.pidfd
    with monitor._lock:
        return {watch.pid for watch in monitor._lent.values()}


def identify_by_start_time() -> None:
    """Name children by pid and start time even where pidfs inode numbers would do.

    For good: only for a process that is thrown away after (a PID-namespace case).
    """
    setattr(_process, "can_identify_by_inode", lambda: False)  # noqa: B010


def limit_swept_pidfds(limit: int, monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    """Let at most ``limit`` children of the sigchld backend hold a pidfd at once.

    0: every one is named by pid and identity, as where pidfds do not work. Without
    ``monkeypatch``, for good (a process thrown away after, as a PID-namespace case).
    """
    if monkeypatch is None:
        sigchld._quota.limit = limit
    else:
        monkeypatch.setattr(sigchld._quota, "limit", limit)


def swept_pidfds_held() -> int:
    """How many pidfds children of the sigchld backend hold now."""
    return sigchld._quota.held


def holds_swept_pidfd(child: Child) -> bool:
    """Whether ``child`` is watched by the sweeps through a pidfd it holds."""
    notice = watch_of(child).notice
    return isinstance(notice, sigchld.SweptRef) and notice.fileno is not None


def lower_relay_thresholds(monkeypatch: pytest.MonkeyPatch, above: int, keep: int) -> None:
    """Lend past ``above`` pidfds, down to ``keep``, so a handful of children uses the relay."""
    monkeypatch.setattr(PidfdMonitor, "lend_above", above)
    monkeypatch.setattr(PidfdMonitor, "lend_keep", keep)


def set_relay_timing(
    monkeypatch: pytest.MonkeyPatch,
    *,
    hello: float | None = None,
    ping: float | None = None,
    answer: float | None = None,
) -> None:
    """Shorten how long a relay has to say hello, how often it is pinged, and to answer."""
    if hello is not None:
        monkeypatch.setattr(PidfdMonitor, "relay_hello_timeout", hello)
    if ping is not None:
        monkeypatch.setattr(PidfdMonitor, "relay_ping_interval", ping)
    if answer is not None:
        monkeypatch.setattr(PidfdMonitor, "relay_answer_timeout", answer)


def when_settled(child: Child, callback: Callable[[], object]) -> None:
    """Call ``callback`` on the reaping thread once ``child`` is settled, after its on_exit."""
    on_settled(child, lambda _child: callback())


def call_later(delay: float, callback: Callable[[], object]) -> None:
    """Have the running engine call ``callback`` on its reaping thread in ``delay`` seconds."""
    engine_now().call_later(delay, callback)


def wake_reaping_threads() -> None:
    """Write to the wakeup pipe that every engine's reaping thread polls."""
    _sighandler.wake()


def relay_socket_names() -> set[str]:
    """``socket:[inode]`` of this process's end of its connection to the relay, if any."""
    relay = engine_now().monitors.pidfd._relay
    if relay is None:
        return set()
    try:
        return {f"socket:[{os.fstat(relay.fileno()).st_ino}]"}
    except OSError:
        return set()  # closed meanwhile


def force_no_recovery(monkeypatch: pytest.MonkeyPatch) -> None:
    """Act as a kernel that keeps no exit status on a pidfd (before Linux 6.15)."""
    monkeypatch.setattr(_process, "can_recover_stolen_status", lambda: False)


def forget_recovery_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next can_recover_stolen_status() probe again (restored after the test)."""
    monkeypatch.setattr(_process, "_recovery_probed", None)
