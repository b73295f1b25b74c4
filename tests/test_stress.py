"""Many children at once: every status exact, none lost, none left a zombie."""

from __future__ import annotations

import signal
import threading

import pytest
from hypothesis import HealthCheck, given, settings

from zombiereaper import ExitStatus, Reaper

from . import internals
from .helpers import HAS_PIDFD, sh, zombie_children
from .strategies import children_plans

STRESS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _script(ending: tuple[str, int], lifetime: float) -> list[str]:
    kind, value = ending
    pause = f"sleep {lifetime:.3f}; " if lifetime else ""
    if kind == "exit":
        return sh(f"{pause}exit {value}")
    return sh(f"{pause}kill -{value} $$")


def _expected(ending: tuple[str, int]) -> int:
    kind, value = ending
    return value if kind == "exit" else -value


@STRESS
@given(plan=children_plans)
def test_every_child_of_a_burst_is_reaped_with_its_exact_status(
    backend: str, plan: list[tuple[tuple[str, int], float, bool]]
) -> None:
    """Up to 100 children with random codes, signals and lifetimes all get exact statuses."""
    run_burst(backend, plan)


@STRESS
@given(plan=children_plans)
@pytest.mark.skipif(not HAS_PIDFD, reason="sigchld children hold no pidfd here")
def test_a_sigchld_burst_past_its_pidfd_limit_is_reaped_exactly(
    monkeypatch: pytest.MonkeyPatch, plan: list[tuple[tuple[str, int], float, bool]]
) -> None:
    """The same, with the first few children named by a pidfd and the rest by pid and identity."""
    internals.limit_swept_pidfds(8, monkeypatch)
    run_burst("sigchld", plan)
    assert internals.swept_pidfds_held() == 0


def run_burst(backend: str, plan: list[tuple[tuple[str, int], float, bool]]) -> None:
    """Start the children of ``plan`` at once and check every status, the owners' too."""
    heard: list[ExitStatus] = []
    lock = threading.Lock()

    def on_exit(status: ExitStatus) -> None:
        with lock:
            heard.append(status)

    with Reaper(backend=backend, on_exit=on_exit) as reaper:  # type: ignore[arg-type]
        children = [reaper.spawn(_script(ending, lifetime)) for ending, lifetime, _ in plan]
        # Some owners also call popen.wait() themselves, racing the reaping thread.
        racing = [child for child, (_, _, waits) in zip(children, plan, strict=True) if waits]
        owner_codes: dict[int, int] = {}

        def owner(child_list: list[object]) -> None:
            for child in child_list:
                owner_codes[child.pid] = child.popen.wait(20)  # type: ignore[attr-defined]

        owner_thread = threading.Thread(target=owner, args=(racing,))
        owner_thread.start()
        statuses = [child.wait(20) for child in children]
        owner_thread.join(20)
        reaper.reap()
        assert not zombie_children()
    for (ending, _, _), child, status in zip(plan, children, statuses, strict=True):
        assert status.pid == child.pid
        assert status.returncode == _expected(ending), (ending, status)
        assert not status.core_dumped
        assert reaper.registry[child.pid] == status
        if child in racing:
            assert owner_codes[child.pid] == _expected(ending)
    assert sorted(s.pid for s in heard) == sorted(c.pid for c in children)
    kinds = {s.signal for s in statuses if s.signal is not None}
    assert kinds <= {signal.Signals(v) for (k, v), _, _ in plan if k == "signal"}
