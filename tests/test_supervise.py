"""Supervision: restart policies, backoff on a manual clock, intensity, rolling restart, scale."""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zombiereaper import (
    Backoff,
    Child,
    Intensity,
    NotInstalledError,
    Reaper,
    ReaperError,
    Service,
    ServiceEvent,
    ServiceTimeout,
)
from zombiereaper.testing import Cancellable, ManualClock

from .helpers import FORK_IN_THREADED_PROCESS, IGNORES_SIGTERM, read_line, sh, zombie_children

NO_JITTER = Backoff(initial=0.1, factor=2.0, maximum=1.0, jitter=0.0, reset_after=5.0)

#: A copy that exits with the code written to its standard input.
EXIT_ON_INPUT = sh("read code; exit $code")


class Events:
    """Collects a Service's events and lets a test wait for them."""

    def __init__(self) -> None:
        self.items: list[ServiceEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: ServiceEvent) -> None:
        with self._cond:
            self.items.append(event)
            self._cond.notify_all()

    def kinds(self) -> list[str]:
        with self._cond:
            return [e.kind for e in self.items]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 10.0) -> ServiceEvent:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(e.kind == kind for e in self.items) >= count, timeout
            )
            assert ok, f"no {count} {kind!r} events; got {[e.describe() for e in self.items]}"
            return [e for e in self.items if e.kind == kind][count - 1]


def _exit_with(code: int) -> None:
    sys.exit(code)


def _finish(service: Service, replica: int, code: int | str) -> None:
    """Make one copy of an EXIT_ON_INPUT service exit with ``code``."""
    child = service.children[replica] if isinstance(replica, int) else replica
    child.popen.stdin.write(f"{code}\n".encode())  # type: ignore[union-attr]
    child.popen.stdin.close()  # type: ignore[union-attr]


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    with Reaper(stop_timeout=5.0) as installed:
        yield installed


# --- arguments ------------------------------------------------------------------------------------


def test_bad_arguments_are_refused_at_once(reaper: Reaper) -> None:
    """Both or neither program and target, replicas < 1, an unknown policy: ValueError."""
    with pytest.raises(ValueError, match="exactly one"):
        reaper.supervise()
    with pytest.raises(ValueError, match="exactly one"):
        reaper.supervise(["true"], target=print)
    with pytest.raises(ValueError, match="replicas"):
        reaper.supervise(["true"], replicas=0)
    with pytest.raises(ValueError, match="restart must be one of"):
        reaper.supervise(["true"], restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Popen keywords"):
        reaper.supervise(target=print, cwd="/")
    with pytest.raises(ValueError, match="Backoff"):
        Backoff(factor=0.5)
    with pytest.raises(ValueError, match="Intensity"):
        Intensity(period=0)
    with pytest.raises(FileNotFoundError):
        reaper.supervise(["/nonexistent/zombiereaper-service"])
    assert reaper.services == ()
    with pytest.raises(NotInstalledError):
        Reaper().supervise(["true"])


#: A program that runs until it is stopped: what a bad argument must never get to start.
SLEEPER = ["sleep", "30"]


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        pytest.param({"args": SLEEPER, "backoff": 5}, "backoff", id="backoff=5"),
        pytest.param({"args": SLEEPER, "backoff": "fast"}, "backoff", id="backoff='fast'"),
        pytest.param({"args": SLEEPER, "intensity": 5}, "intensity", id="intensity=5"),
        pytest.param({"target": 42}, "target", id="target=42"),
        pytest.param({"args": SLEEPER, "on_event": 1}, "on_event", id="on_event=1"),
        pytest.param({"args": SLEEPER, "name": 3}, "name", id="name=3"),
        pytest.param({"args": SLEEPER, "replicas": "2"}, "replicas", id="replicas='2'"),
        pytest.param({"args": SLEEPER, "replicas": True}, "replicas", id="replicas=True"),
        pytest.param({"args": SLEEPER, "replicas": 1.0}, "replicas", id="replicas=1.0"),
        pytest.param({"args": SLEEPER, "restart": 1}, "restart", id="restart=1"),
        pytest.param({"args": SLEEPER, "stop_timeout": "5"}, "stop_timeout", id="stop_timeout='5'"),
        pytest.param(
            {"args": SLEEPER, "stop_timeout": True}, "stop_timeout", id="stop_timeout=True"
        ),
        pytest.param({"args": SLEEPER, "clock": object()}, "clock", id="clock=object()"),
        pytest.param({"args": SLEEPER, "rng": 7}, "rng", id="rng=7"),
        pytest.param({"args": 42}, "args", id="args=42"),
        pytest.param({"args": iter(SLEEPER)}, "args", id="args=iterator"),
        pytest.param({"args": ["sleep", 30]}, "args", id="args=[..., 30]"),
        pytest.param({"target": print, "target_args": "ab"}, "target_args", id="target_args='ab'"),
        pytest.param(
            {"target": print, "target_kwargs": {1: 2}}, "target_kwargs", id="kwargs={1:2}"
        ),
        pytest.param({"target": print, "target_kwargs": [1]}, "target_kwargs", id="kwargs=[1]"),
        pytest.param({"target": print, "start_method": 3}, "start_method", id="start_method=3"),
    ],
)
def test_arguments_of_the_wrong_type_raise_type_error(
    reaper: Reaper, kwargs: dict[str, Any], parameter: str
) -> None:
    """A wrong type raises TypeError naming the parameter, before any copy starts."""
    with pytest.raises(TypeError, match=rf"^(each argument in )?{parameter}\b"):
        reaper.supervise(**kwargs)
    assert reaper.services == ()
    assert len(reaper.registry) == 0  # nothing was started


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        pytest.param({"args": SLEEPER, "stop_timeout": -1}, "stop_timeout", id="stop_timeout=-1"),
        pytest.param(
            {"args": SLEEPER, "stop_timeout": math.nan}, "stop_timeout", id="stop_timeout=nan"
        ),
        pytest.param({"args": SLEEPER, "name": ""}, "name", id="name=''"),
        pytest.param(
            {"target": print, "start_method": "bogus"}, "start_method", id="start_method=bogus"
        ),
        pytest.param({"args": SLEEPER, "target_args": (1,)}, "target_args", id="args+target_args"),
        pytest.param(
            {"args": SLEEPER, "target_kwargs": {"a": 1}}, "target_kwargs", id="args+target_kwargs"
        ),
        pytest.param(
            {"args": SLEEPER, "start_method": "spawn"}, "start_method", id="args+start_method"
        ),
    ],
)
def test_arguments_with_a_bad_value_raise_value_error(
    reaper: Reaper, kwargs: dict[str, Any], parameter: str
) -> None:
    """A bad value, or an argument that does not go with the others, raises ValueError."""
    with pytest.raises(ValueError, match=rf"^{parameter}\b"):
        reaper.supervise(**kwargs)
    assert reaper.services == ()
    assert len(reaper.registry) == 0


def test_arguments_are_checked_before_the_reaper_is_needed() -> None:
    """A bad argument to a Reaper that is not installed is reported as the bad argument."""
    with pytest.raises(TypeError, match=r"^backoff"):
        Reaper().supervise(SLEEPER, backoff=5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "parameter"),
    [
        pytest.param(lambda: Backoff(initial="1"), "initial", id="initial='1'"),  # type: ignore[arg-type]
        pytest.param(lambda: Backoff(factor=True), "factor", id="factor=True"),
        pytest.param(lambda: Backoff(jitter=None), "jitter", id="jitter=None"),  # type: ignore[arg-type]
        pytest.param(lambda: Backoff(reset_after="10"), "reset_after", id="reset_after='10'"),  # type: ignore[arg-type]
        pytest.param(lambda: Intensity(max_restarts=1.5), "max_restarts", id="max_restarts=1.5"),  # type: ignore[arg-type]
        pytest.param(lambda: Intensity(max_restarts=True), "max_restarts", id="max_restarts=True"),
        pytest.param(lambda: Intensity(period="60"), "period", id="period='60'"),  # type: ignore[arg-type]
    ],
)
def test_policy_records_refuse_what_is_not_a_number(
    make: Callable[[], object], parameter: str
) -> None:
    """Backoff and Intensity raise TypeError, naming the field, for a str, None or a bool."""
    with pytest.raises(TypeError, match=rf"\({parameter}=\.\.\.\) must be"):
        make()


def test_policy_records_refuse_delays_that_never_end_and_take_never_ending_periods() -> None:
    """An infinite or NaN delay raises ValueError; an infinite reset or period is taken."""
    refused: list[tuple[Callable[[], object], str]] = [
        (lambda: Backoff(initial=math.inf, maximum=math.inf), "initial"),
        (lambda: Backoff(factor=math.inf), "factor"),
        (lambda: Backoff(maximum=math.inf), "maximum"),
        (lambda: Backoff(jitter=math.nan), "jitter"),
        (lambda: Backoff(reset_after=math.nan), "reset_after"),
        (lambda: Intensity(period=math.nan), "period"),
    ]
    for make, parameter in refused:
        with pytest.raises(ValueError, match=rf"(Backoff|Intensity) needs .*\b{parameter}="):
            make()
    assert Backoff(reset_after=math.inf).reset_after == math.inf  # never starts the count again
    assert Intensity(period=math.inf).period == math.inf  # counts every restart ever


def test_backoff_delays_stay_capped_after_a_thousand_failures() -> None:
    """factor ** n outgrowing a float still gives the maximum, not an OverflowError."""
    backoff = Backoff(jitter=0)
    assert backoff.delay(2000, random.Random()) == backoff.maximum


# --- policies -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "code", "restarts"),
    [
        ("always", 0, True),
        ("always", 3, True),
        ("on-failure", 3, True),
        ("on-failure", 0, False),
        ("never", 3, False),
    ],
)
def test_restart_policies(reaper: Reaper, policy: str, code: int, restarts: bool) -> None:
    """always restarts every exit, on-failure only failures, never none."""
    events, clock = Events(), ManualClock()
    service = reaper.supervise(
        EXIT_ON_INPUT, stdin=subprocess.PIPE, restart=policy, backoff=NO_JITTER,  # type: ignore[arg-type]
        clock=clock, on_event=events,
    )  # fmt: skip
    _finish(service, 0, code)
    events.wait_for("exited")
    with service._lock:  # the exit has been handled once the lock is free
        pass
    assert service.last_status is not None
    assert service.last_status.returncode == code
    if restarts:
        assert service.state == "backing-off"
        assert events.wait_for("restarting").delay == pytest.approx(0.1)
        clock.advance(0.1)
        events.wait_for("started", 2)
        assert service.state == "running"
        assert service.restarts == 1
        service.stop()
    else:
        assert service.wait(10) == "stopped"
        assert service.restarts == 0
    assert service.state == "stopped"


def test_a_fatal_signal_counts_as_a_failure(reaper: Reaper) -> None:
    """Under on-failure, a copy killed by a signal is restarted."""
    events, clock = Events(), ManualClock()
    service = reaper.supervise(["sleep", "30"], backoff=NO_JITTER, clock=clock, on_event=events)
    service.children[0].kill()
    assert events.wait_for("restarting").delay == pytest.approx(0.1)
    exited = events.wait_for("exited")
    assert exited.status is not None and exited.status.signal == signal.SIGKILL
    clock.advance(0.1)
    events.wait_for("started", 2)
    service.stop()


# --- backoff and intensity ------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_resets_after_uptime(reaper: Reaper) -> None:
    """Delays go 0.1, 0.2, 0.4, 0.8, 1.0 (the cap), and back to 0.1 after 5 s up."""
    events, clock = Events(), ManualClock()
    service = reaper.supervise(
        EXIT_ON_INPUT, stdin=subprocess.PIPE, backoff=NO_JITTER,
        intensity=Intensity(max_restarts=100, period=1000), clock=clock, on_event=events,
    )  # fmt: skip
    delays = []
    for n in range(1, 7):
        _finish(service, 0, 1)
        delays.append(events.wait_for("restarting", n).delay)
        clock.advance(delays[-1])
        events.wait_for("started", n + 1)
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    clock.advance(5.0)  # this copy stays up long enough
    _finish(service, 0, 1)
    assert events.wait_for("restarting", 7).delay == pytest.approx(0.1)
    service.stop()


def test_jitter_stretches_delays_within_bounds(reaper: Reaper) -> None:
    """With jitter, each delay lies between base * (1 - jitter) and base, also at the cap."""
    import random

    events, clock = Events(), ManualClock()
    backoff = Backoff(initial=1.0, factor=2.0, maximum=4.0, jitter=0.5)
    service = reaper.supervise(
        EXIT_ON_INPUT, stdin=subprocess.PIPE, backoff=backoff, clock=clock, on_event=events,
        rng=random.Random(7), intensity=Intensity(100, 1000),
    )  # fmt: skip
    delays = []
    for n, base in enumerate([1.0, 2.0, 4.0, 4.0, 4.0], start=1):
        _finish(service, 0, 1)
        delay = events.wait_for("restarting", n).delay
        assert delay is not None and base * 0.5 <= delay <= base
        delays.append(delay)
        clock.advance(delay)
        events.wait_for("started", n + 1)
    assert len(set(delays[2:])) == 3  # still spread at the cap: no lockstep
    service.stop()


def test_intensity_reached_gives_up_and_fails(reaper: Reaper) -> None:
    """Past max_restarts within the period the Service stops its copies and ends failed."""
    events, clock = Events(), ManualClock()
    service = reaper.supervise(
        EXIT_ON_INPUT, stdin=subprocess.PIPE, replicas=2, backoff=NO_JITTER,
        intensity=Intensity(max_restarts=2, period=60), clock=clock, on_event=events,
    )  # fmt: skip
    for n in (1, 2):
        _finish(service, 0, 1)
        clock.advance(events.wait_for("restarting", n).delay or 0)
        events.wait_for("started", 2 + n)
    survivor = service.children[1]
    _finish(service, 0, 1)  # the third restart in 60 s: too many
    events.wait_for("gave-up")
    assert service.wait(10) == "failed"
    assert survivor.wait(10).signal == signal.SIGTERM  # the other copy was stopped
    assert service.children == ()
    assert clock.pending() == []


def test_intensity_counts_only_the_period(reaper: Reaper) -> None:
    """Restarts older than the period no longer count toward the limit."""
    events, clock = Events(), ManualClock()
    service = reaper.supervise(
        EXIT_ON_INPUT, stdin=subprocess.PIPE, backoff=NO_JITTER,
        intensity=Intensity(max_restarts=1, period=10), clock=clock, on_event=events,
    )  # fmt: skip
    _finish(service, 0, 1)
    clock.advance(events.wait_for("restarting", 1).delay or 0)
    events.wait_for("started", 2)
    clock.advance(11)
    _finish(service, 0, 1)
    events.wait_for("restarting", 2)
    assert service.state == "backing-off"
    service.stop()


# --- control --------------------------------------------------------------------------------------


def test_rolling_restart_never_drops_below_the_pool_size(reaper: Reaper) -> None:
    """restart() starts each new copy before stopping its old one: never fewer than replicas."""
    events = Events()
    service = reaper.supervise(["sleep", "30"], replicas=3, on_event=events)
    old = {c.pid for c in service.children}
    service.restart()
    new = {c.pid for c in service.children}
    assert len(new) == 3 and not new & old
    alive, lowest = 0, 3
    for event in events.items:
        alive += {"started": 1, "exited": -1}.get(event.kind, 0)
        if event.kind == "exited":
            lowest = min(lowest, alive)
    assert lowest >= 3  # so at least replicas - 1 at every moment, as promised
    assert service.restarts == 0 and "restarting" not in events.kinds()
    service.stop()


def test_scale_up_and_down(reaper: Reaper) -> None:
    """scale(n) starts or stops copies; stopped ones are not restarted."""
    events = Events()
    service = reaper.supervise(["sleep", "30"], on_event=events, restart="always")
    service.scale(3)
    assert service.replicas == 3 and len(service.children) == 3
    removed = service.children[1:]
    service.scale(1)
    assert service.replicas == 1 and len(service.children) == 1
    assert all(child.wait(10).signal == signal.SIGTERM for child in removed)
    assert "restarting" not in events.kinds()
    with pytest.raises(ValueError, match="replicas"):
        service.scale(0)
    service.stop()
    assert service.state == "stopped"


def test_stop_is_graceful_and_final(reaper: Reaper) -> None:
    """stop() sends SIGTERM, restarts nothing, ends stopped; wait() and wait_async() see it."""
    events = Events()
    service = reaper.supervise(["sleep", "30"], replicas=2, restart="always", on_event=events)
    children = service.children

    async def wait_in_a_loop() -> str:
        return await asyncio.wait_for(service.wait_async(), 10)

    waiter_result: list[str] = []
    waiter = threading.Thread(target=lambda: waiter_result.append(asyncio.run(wait_in_a_loop())))
    waiter.start()
    service.stop()
    waiter.join(10)
    assert waiter_result == ["stopped"]
    assert service.wait(1) == "stopped"
    assert [c.status.signal for c in children if c.status is not None] == [signal.SIGTERM] * 2
    assert events.kinds()[-1] == "stopped"
    assert "restarting" not in events.kinds()


def test_leaving_the_reaper_stops_services_newest_first() -> None:
    """The with block stops every Service in reverse order of creation."""
    order: list[str] = []

    def note(event: ServiceEvent) -> None:
        if event.kind == "stopped":
            order.append(event.service)

    with Reaper() as reaper:
        first = reaper.supervise(["sleep", "30"], name="first", on_event=note)
        second = reaper.supervise(["sleep", "30"], name="second", on_event=note)
        assert reaper.services == (first, second)
    assert order == ["second", "first"]
    assert first.state == second.state == "stopped"
    assert not zombie_children()


@pytest.mark.parametrize(
    "method",
    [pytest.param("fork", marks=pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)), "spawn"],
)
def test_a_python_callable_is_supervised_through_multiprocessing(
    reaper: Reaper, method: str
) -> None:
    """target= runs a callable in a Process (fork or spawn) and restarts it on failure."""
    events, clock = Events(), ManualClock()
    service = reaper.supervise(
        target=_exit_with, target_args=(2,), start_method=method, backoff=NO_JITTER,
        clock=clock, on_event=events,
    )  # fmt: skip
    assert service.name == "_exit_with"
    first = events.wait_for("exited")
    assert first.status is not None and first.status.returncode == 2
    clock.advance(events.wait_for("restarting").delay or 0)
    second = events.wait_for("exited", 2)
    assert second.status is not None and second.status.returncode == 2
    assert service.restarts == 1
    assert isinstance(service._replicas[0].child and service._replicas[0].child.process, object)
    service.stop()


def test_events_are_logged(reaper: Reaper, caplog: pytest.LogCaptureFixture) -> None:
    """Each event is also logged on the 'zombiereaper' logger."""
    import logging

    caplog.set_level(logging.INFO, logger="zombiereaper")
    service = reaper.supervise(["sh", "-c", "exit 0"], name="once")
    assert service.wait(10) == "stopped"
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("once[0] started as pid") for m in messages)
    assert "once stopped" in messages


# --- a model of the policy, checked against random runs -------------------------------------------

Action = tuple[str, int, int]  # ("exit", replica, code) | ("kill", replica, 0) | ("wait", 0, ms)

actions = st.lists(
    st.one_of(
        st.tuples(st.just("exit"), st.integers(0, 1), st.sampled_from([0, 1, 7])),
        st.tuples(st.just("kill"), st.integers(0, 1), st.just(0)),
        st.tuples(st.just("wait"), st.just(0), st.sampled_from([50, 100, 400, 6000])),
    ),
    max_size=10,
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(script=actions, policy=st.sampled_from(["always", "on-failure", "never"]))
def test_random_runs_follow_the_policy(  # noqa: PLR0912 - the model is one readable loop
    script: list[Action], policy: str
) -> None:
    """Restart count, states and backoff delays follow the policy; nothing is left behind."""
    events, clock = Events(), ManualClock()
    intensity = Intensity(max_restarts=3, period=10)
    with Reaper() as reaper:
        service = reaper.supervise(
            EXIT_ON_INPUT, stdin=subprocess.PIPE, replicas=2, restart=policy,  # type: ignore[arg-type]
            backoff=NO_JITTER, intensity=intensity, clock=clock, on_event=events,
        )  # fmt: skip
        # The model: per replica, alive / due time; restarts in a row; restart times.
        alive = [True, True]
        due: list[float | None] = [None, None]
        in_a_row = [0, 0]
        started_at = [0.0, 0.0]
        restart_times: list[float] = []
        restarts = 0
        final: str | None = None
        exits = 0
        for kind, replica, value in script:
            if final:
                break
            if kind == "wait":
                target = clock.now() + value / 1000
                for r in sorted((0, 1), key=lambda r: due[r] if due[r] is not None else 1e9):
                    when = due[r]
                    if when is not None and when <= target:
                        due[r], alive[r] = None, True
                        started_at[r] = when
                        restarts += 1
                clock.advance(value / 1000)
                continue
            if not alive[replica]:
                continue
            child = service._replicas[replica].child
            assert child is not None
            if kind == "exit":
                _finish(service, child, value)  # type: ignore[arg-type]
                failed = value != 0
            else:
                child.kill()
                failed = True
            exits += 1
            events.wait_for("exited", exits)
            with service._lock:
                pass
            alive[replica] = False
            wants = policy == "always" or (policy == "on-failure" and failed)
            if not wants:
                if not any(alive) and all(d is None for d in due):
                    final = "stopped"
                continue
            now = clock.now()
            restart_times = [t for t in restart_times if now - t < intensity.period]
            if len(restart_times) >= intensity.max_restarts:
                final = "failed"
                continue
            restart_times.append(now)
            if now - started_at[replica] >= NO_JITTER.reset_after:
                in_a_row[replica] = 0
            in_a_row[replica] += 1
            expected = min(NO_JITTER.maximum, NO_JITTER.initial * 2 ** (in_a_row[replica] - 1))
            assert events.items[-1].kind == "restarting"
            assert events.items[-1].delay == pytest.approx(expected)
            due[replica] = now + expected
        with service._lock:
            pass
        if final:
            assert service.wait(10) == final
        else:
            expected_state = "backing-off" if any(d is not None for d in due) else "running"
            assert service.state == expected_state
        assert service.restarts == restarts
    assert service.state in {"stopped", "failed"}
    assert not zombie_children()


def test_stop_returns_once_every_exit_is_handled(reaper: Reaper) -> None:
    """After stop(), every exit has been told before "stopped" and each copy's pipe is closed."""
    events = Events()
    service = reaper.supervise(
        ["sleep", "30"], replicas=3, stdin=subprocess.PIPE, restart="always", on_event=events
    )
    popens = [child.popen for child in service.children]
    service.stop()
    kinds = events.kinds()
    assert kinds[-1] == "stopped"
    assert kinds.count("exited") == 3
    assert all(p is not None and p.stdin is not None and p.stdin.closed for p in popens)


def test_stop_during_a_give_up_keeps_the_failure(reaper: Reaper) -> None:
    """A stop() while the Service gives up waits for it; the state stays failed, and stays."""
    from zombiereaper import ReaperError

    from .helpers import IGNORES_SIGTERM, read_line

    events, clock = Events(), ManualClock()
    service = reaper.supervise(
        IGNORES_SIGTERM, replicas=2, stdout=subprocess.PIPE, stop_timeout=5.0,
        intensity=Intensity(max_restarts=0, period=60), clock=clock, on_event=events,
    )  # fmt: skip
    for child in service.children:
        assert read_line(child.popen.stdout) == "ready\n"  # type: ignore[union-attr]
    service.children[0].kill()  # no restart allowed: it gives up and TERMs the other copy
    events.wait_for("gave-up")
    assert service.state == "stopping"  # the other copy ignores SIGTERM
    with pytest.raises(ReaperError, match="stopping or has ended"):
        service.restart()
    stopper = threading.Thread(target=service.stop)
    stopper.start()
    clock.advance(5.0)  # the give-up's SIGKILL comes due
    stopper.join(10)
    assert not stopper.is_alive()
    assert service.state == "failed"
    assert "stopped" not in events.kinds()
    service.stop()
    assert service.wait(1) == "failed"


def test_a_failed_rolling_restart_leaves_the_old_copy_supervised(
    reaper: Reaper, tmp_path: object
) -> None:
    """If restart() cannot start the new copy, the old one stays in charge and is handled."""
    import os
    import shutil

    program = os.path.join(str(tmp_path), "sleep")
    shutil.copy(shutil.which("sleep") or "/bin/sleep", program)  # a binary: no script to reread
    service = reaper.supervise([program, "30"], restart="never")
    old = service.children[0]
    os.remove(program)
    with pytest.raises(FileNotFoundError):
        service.restart()
    assert service.children == (old,)
    old.kill()
    assert service.wait(10) == "stopped"


def test_blocking_calls_from_on_event_are_refused() -> None:
    """restart(), scale() down and wait() from on_event raise instead of blocking the reaper."""
    from zombiereaper import ReaperError

    caught: list[str] = []
    done = threading.Event()

    def on_event(event: ServiceEvent) -> None:
        if event.kind != "exited" or done.is_set():
            return
        for call in (service.restart, lambda: service.scale(1), service.wait):
            try:
                call()
            except ReaperError as err:
                caught.append(str(err))
        done.set()

    with Reaper() as reaper:
        service = reaper.supervise(["sleep", "30"], replicas=2, on_event=on_event)
        service.children[0].kill()
        assert done.wait(10)
    assert len(caught) == 3
    assert all("reaping thread" in message for message in caught)


# --- errors inside the machinery end the Service failed, never a silent stall ---------------------


class BrokenClock(ManualClock):
    """A ManualClock whose call_later raises its first ``failures`` times once ``armed``."""

    def __init__(self, failures: int = 1) -> None:
        super().__init__()
        self.armed = False
        self.failures = failures

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        if self.armed and self.failures > 0:
            self.failures -= 1
            raise RuntimeError("the clock broke")
        return super().call_later(delay, callback)


def test_a_clock_that_cannot_schedule_the_restart_fails_the_service(
    reaper: Reaper, caplog: pytest.LogCaptureFixture
) -> None:
    """An error scheduling a restart (on the reaping thread) ends the Service failed, told."""
    events, clock = Events(), BrokenClock()
    service = reaper.supervise(
        EXIT_ON_INPUT, stdin=subprocess.PIPE, clock=clock, on_event=events, name="broken"
    )
    clock.armed = True
    _finish(service, 0, 1)
    assert service.wait(10) == "failed"  # not "running" with nothing running
    gave_up = events.wait_for("gave-up")
    assert isinstance(gave_up.error, RuntimeError)
    assert "RuntimeError: the clock broke" in gave_up.describe()
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert any("broken failed while handling the exit" in r.getMessage() for r in failures)


def test_a_clock_that_cannot_schedule_at_all_still_ends_the_service(reaper: Reaper) -> None:
    """When SIGKILL cannot be scheduled either, a copy ignoring SIGTERM is killed at once."""
    events, clock = Events(), BrokenClock(failures=2)
    service = reaper.supervise(
        IGNORES_SIGTERM, replicas=2, stdout=subprocess.PIPE, clock=clock, on_event=events
    )
    stubborn = service.children[1]
    for child in service.children:
        assert read_line(child.popen.stdout) == "ready\n"  # type: ignore[union-attr]
    clock.armed = True
    service.children[0].kill()  # the restart cannot be scheduled, nor the SIGKILL after it
    assert service.wait(10) == "failed"
    assert stubborn.wait(10).signal == signal.SIGKILL
    assert events.wait_for("gave-up").error is not None


def test_an_unexpected_error_starting_a_copy_fails_the_service(
    reaper: Reaper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart whose start raises something else than an OSError ends the Service failed."""
    real_spawn = reaper.spawn
    starts: list[int] = []

    def spawn_once(args: Any, **kwargs: Any) -> Child:
        starts.append(1)
        if len(starts) > 1:
            raise RuntimeError("cannot start a copy")
        return real_spawn(args, **kwargs)

    monkeypatch.setattr(reaper, "spawn", spawn_once)
    events, clock = Events(), ManualClock()
    service = reaper.supervise(
        EXIT_ON_INPUT, stdin=subprocess.PIPE, backoff=NO_JITTER, clock=clock, on_event=events
    )
    _finish(service, 0, 1)
    clock.advance(events.wait_for("restarting").delay or 0)  # the restart runs (and fails) here
    assert service.state == "failed"
    assert service.wait(1) == "failed"
    assert isinstance(events.wait_for("gave-up").error, RuntimeError)
    assert clock.pending() == []


class _UnclosablePipe:
    """Stands in for a copy's stdin: closing it fails."""

    def close(self) -> None:
        raise RuntimeError("cannot close")


def test_a_copy_whose_pipes_cannot_be_closed_still_has_its_exit_handled(reaper: Reaper) -> None:
    """An error closing an exited copy's pipes still handles the exit, then ends failed."""
    events = Events()
    service = reaper.supervise(SLEEPER, stdin=subprocess.PIPE, on_event=events)
    popen = service.children[0].popen
    assert popen is not None and popen.stdin is not None
    real_stdin, popen.stdin = popen.stdin, _UnclosablePipe()  # type: ignore[assignment]
    try:
        service.children[0].kill()
        assert service.wait(10) == "failed"
        assert events.kinds() == ["started", "exited", "restarting", "gave-up"]  # handled first
        assert isinstance(events.wait_for("gave-up").error, RuntimeError)
    finally:
        real_stdin.close()


class NoTimeClock(ManualClock):
    """A ManualClock whose now() raises once ``armed``."""

    armed = False

    def now(self) -> float:
        if self.armed:
            raise RuntimeError("no time")
        return super().now()


def test_a_clock_failing_after_a_copy_started_leaves_no_copy_running(reaper: Reaper) -> None:
    """If the clock fails right after a copy started, supervise() raises and stops that copy."""
    clock = NoTimeClock()
    clock.armed = True
    with pytest.raises(RuntimeError, match="no time"):
        reaper.supervise(SLEEPER, clock=clock)
    (status,) = reaper.registry.values()  # the copy was stopped, not left to the Reaper's exit
    assert status.signal == signal.SIGTERM


def test_the_end_is_told_even_when_the_clock_fails(reaper: Reaper) -> None:
    """A clock whose now() fails during the last exit still lets the Service end and say so."""
    events, clock = Events(), NoTimeClock()
    service = reaper.supervise(SLEEPER, restart="never", clock=clock, on_event=events)
    clock.armed = True
    service.children[0].kill()
    assert service.wait(10) == "failed"
    gave_up = events.wait_for("gave-up")
    assert math.isnan(gave_up.time)
    assert isinstance(gave_up.error, RuntimeError)


def test_a_restart_weeks_away_does_not_stall_the_reaping_thread(reaper: Reaper) -> None:
    """A backoff longer than epoll can wait (24.8 days) neither breaks reaping nor restarts."""
    events = Events()
    month = 30 * 86_400.0
    service = reaper.supervise(
        ["sh", "-c", "exit 1"], backoff=Backoff(initial=month, maximum=month), on_event=events
    )
    assert events.wait_for("restarting").delay == pytest.approx(month, rel=0.1)
    assert reaper.spawn(["true"]).wait(10).returncode == 0  # the reaping thread still reaps
    assert service.state == "backing-off"
    service.stop()
    assert service.state == "stopped"


def test_an_infinite_stop_timeout_waits_for_sigterm_without_stalling(reaper: Reaper) -> None:
    """stop_timeout=math.inf never schedules a SIGKILL the reaping thread could not wait for."""
    events = Events()
    service = reaper.supervise(
        SLEEPER, replicas=2, stop_timeout=math.inf, intensity=Intensity(max_restarts=0),
        on_event=events,
    )  # fmt: skip
    other = service.children[1]
    service.children[0].kill()  # gives up: SIGTERM to the other copy, SIGKILL never
    assert service.wait(10) == "failed"
    assert other.wait(10).signal == signal.SIGTERM


# --- what the Service says ------------------------------------------------------------------------


def test_wait_timeout_names_the_service_and_pickles(reaper: Reaper) -> None:
    """Service.wait() times out with a ServiceTimeout (a TimeoutError) that has no pid=0."""
    service = reaper.supervise(SLEEPER, name="web")
    with pytest.raises(ServiceTimeout) as caught:
        service.wait(0.01)
    error = caught.value
    assert isinstance(error, TimeoutError) and isinstance(error, ReaperError)
    assert (error.service, error.timeout) == ("web", 0.01)
    assert not hasattr(error, "pid")
    assert "'web'" in str(error) and "0.01 s" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ServiceTimeout
    assert (copy.service, copy.timeout, str(copy)) == ("web", 0.01, str(error))
    service.stop()


def test_giving_up_says_which_limit_was_hit(reaper: Reaper) -> None:
    """The gave-up event carries the count, the window and the Intensity, and says them."""
    events, clock = Events(), ManualClock()
    intensity = Intensity(max_restarts=2, period=10)
    service = reaper.supervise(
        EXIT_ON_INPUT, stdin=subprocess.PIPE, backoff=NO_JITTER, intensity=intensity,
        clock=clock, on_event=events, name="flaky",
    )  # fmt: skip
    for n in (1, 2):
        _finish(service, 0, 1)
        clock.advance(events.wait_for("restarting", n).delay or 0)
        events.wait_for("started", n + 1)
    _finish(service, 0, 1)  # 0.3 s after the first restart: a third one is too many
    gave_up = events.wait_for("gave-up")
    assert (gave_up.restarts, gave_up.intensity) == (3, intensity)
    assert gave_up.window == pytest.approx(0.3)
    assert gave_up.describe() == "flaky gave up: 3 restarts in 0.3 s, limit 2 in 10 s"
    assert service.wait(10) == "failed"


def test_a_manual_clock_refuses_to_go_back_or_to_infinity() -> None:
    """advance() takes a finite number >= 0, and ManualClock() a finite start."""
    clock = ManualClock(start=5)
    with pytest.raises(ValueError, match="seconds must be >= 0"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="finite"):
        clock.advance(math.inf)
    with pytest.raises(TypeError, match="number of seconds"):
        clock.advance("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        ManualClock(start=math.nan)
    assert clock.now() == 5
