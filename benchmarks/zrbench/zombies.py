"""Benchmark 5, zombie lifetime: how long the slowest child of a burst of exits stays a zombie.

A Reaper spawns ``burst`` idle children, an independent observer process (:mod:`zrbench.observer`)
opens a pidfd on each, and the benchmark sends SIGKILL to all of them as fast as it can. A child
is a zombie from its death until its parent reaps it. Three clocks, all CLOCK_MONOTONIC, bound
that time for each child:

- *death*: when the observer's pidfd for it turned readable (the kernel's own exit notice; the
  observer may notice a little late, which can only shorten the lifetimes below);
- *gone*: when ``/proc/<pid>`` vanished, which is the reap, seen by the observer polling every
  millisecond (it may notice up to a poll late, which can only lengthen them);
- *on_exit*: when the Reaper's ``on_exit`` ran for it, on the reaping thread, after the reap.

The suite reports, per backend, the longest, p99 and median of ``on_exit - death`` (the
headline: the reap is recorded no later than this) and of ``gone - death`` (measured without
trusting zombiereaper at all), and ``on_exit - kill`` as an upper bound that also counts the
kernel's teardown of each process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import psutil

from zombiereaper import Reaper

from .common import (
    BACKENDS,
    STOP_TIMEOUT,
    ExitClock,
    IdlePool,
    median,
    now_ns,
    percentile,
    python_worker,
    rotated,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from .common import Config

BURST_TIMEOUT = 60.0


def _summary(values: list[float]) -> dict[str, float | int]:
    return {
        "count": len(values),
        "max": max(values, default=float("nan")),
        "p99": percentile(values, 99),
        "p50": median(values),
    }


def _count_zombie_children() -> int:
    count = 0
    for proc in psutil.Process().children():
        try:
            count += proc.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            pass
    return count


def _start_observer(pids: list[int]) -> subprocess.Popen[str]:
    command, env, cwd = python_worker("zrbench.observer", str(BURST_TIMEOUT))
    observer = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=cwd
    )
    assert observer.stdin is not None
    assert observer.stdout is not None
    observer.stdin.write(json.dumps(pids) + "\n")
    observer.stdin.flush()
    if observer.stdout.readline().strip() != "ready":
        raise RuntimeError("the zombie observer did not start")
    return observer


def _burst(backend: str, burst: int) -> dict[str, Any]:
    """One burst: spawn, watch, kill all, and gather the three clocks for every child."""
    clock = ExitClock()
    with Reaper(backend=backend, on_exit=clock, stop_timeout=STOP_TIMEOUT) as reaper:  # type: ignore[arg-type]
        pool = IdlePool(reaper)
        try:
            pool.grow_to(burst)
            pids = [child.pid for child in pool.children]
            clock.expect(pids)
            with _start_observer(pids) as observer:
                time.sleep(0.2)  # let the spawning's own wakeups settle before the burst
                killed: dict[int, int] = {}
                for pid in pids:
                    killed[pid] = now_ns()
                    os.kill(pid, signal.SIGKILL)
                recorded = clock.collect(pids, BURST_TIMEOUT)
                out, _ = observer.communicate(timeout=BURST_TIMEOUT + 10)
            for child in pool.children:
                child.wait(timeout=BURST_TIMEOUT)
            pool.children.clear()
        finally:
            pool.clear()
        zombies_left = _count_zombie_children()
    seen = {int(pid): times for pid, times in json.loads(out).items()}
    on_exit, gone, upper = [], [], []
    for pid in pids:
        death, vanished = seen.get(pid, [None, None])
        if pid in recorded:
            upper.append((recorded[pid] - killed[pid]) / 1e9)
            if death is not None:
                on_exit.append((recorded[pid] - death) / 1e9)
        if death is not None and vanished is not None:
            gone.append((vanished - death) / 1e9)
    return {
        "on_exit_minus_death": on_exit,
        "gone_minus_death": gone,
        "on_exit_minus_kill": upper,
        "not_recorded": burst - len(recorded),
        "zombies_left": zombies_left,
        "burst_seconds": (max(recorded.values()) - min(killed.values())) / 1e9
        if recorded
        else None,
    }


def run(config: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """Run bursts for each backend, alternating backends between rounds.

    Returns:
        Per backend: summaries (max, p99, p50 in seconds) of each of the three measures over
        every child of every burst, and the longest of each burst.
    """
    raw: dict[str, list[dict[str, Any]]] = {backend: [] for backend in BACKENDS}
    for round_index in range(config.zombie_rounds):
        for backend in rotated(list(BACKENDS), round_index):
            log(f"zombie lifetime: round {round_index + 1}/{config.zombie_rounds}, {backend}")
            raw[backend].append(_burst(backend, config.zombie_burst))
    results: dict[str, Any] = {}
    for backend, bursts in raw.items():
        results[backend] = {
            measure: _summary([v for b in bursts for v in b[measure]])
            for measure in ("on_exit_minus_death", "gone_minus_death", "on_exit_minus_kill")
        }
        results[backend]["per_burst_max_on_exit_minus_death"] = [
            max(b["on_exit_minus_death"], default=None) for b in bursts
        ]
        results[backend]["burst_seconds"] = [b["burst_seconds"] for b in bursts]
        results[backend]["not_recorded"] = sum(b["not_recorded"] for b in bursts)
        results[backend]["zombies_left"] = sum(b["zombies_left"] for b in bursts)
    return {
        "burst": config.zombie_burst,
        "rounds": config.zombie_rounds,
        "observer_poll_interval": 0.001,
        "results": results,
    }
