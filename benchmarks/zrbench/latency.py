"""Benchmarks 2 and 3, exit-to-record latency and scaling, measured in the same passes.

Both need thousands of idle children alive, which take seconds to start, so one *pass* per
backend and scope serves both. A pass installs a Reaper and, while its idle pool grows
0 -> 100 -> 1,000 -> 4,000 ``sleep 3600`` children (all owned by that Reaper, so the engine
watches every one of them):

- **latency**, at each level: spawn one more ``sleep``, let the engine go idle (10-20 ms,
  randomized so the kill does not lock step with the sigchld backend's 100 ms timer), note the
  time, send it SIGKILL with ``os.kill``, and note the time its ``on_exit`` runs on the reaping
  thread. Both times come from CLOCK_MONOTONIC, so the difference is the exit-to-record latency,
  kernel teardown included.
- **a reference**, in the owned-scope pidfd passes, interleaved with those samples: the same
  kill of a child started by ``os.posix_spawn``, timed to the moment a bare thread blocked in
  ``os.waitid(P_PIDFD)`` on it returns. No reaper is that fast; the gap between the two is what
  zombiereaper adds, and the reference's own tail is this machine's scheduling noise.
- **scaling**, with no idle child, with 4,000, and with none again after the pool is gone:
  batches of ``/bin/true`` children started and waited for as in the throughput benchmark
  (at most ``window`` alive). Cost per reaped child is the batch's wall time / its size; the
  process's CPU time (with the relay's, if zombiereaper started one) and the reaping thread's
  (from its schedstat) per child come beside it.

A reference pass runs the same scaling batches with bare ``Popen`` + ``wait`` and no Reaper:
once with 4,000 idle children started by ``Popen``, and once with a pidfd held open on each of
them as well, which is what the pidfd backend holds. It separates what zombiereaper costs from
what the kernel charges every fork while that many processes and descriptors exist.

Passes alternate backends (and scopes, and the reference) from round to round.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

from zombiereaper import Reaper

from .common import (
    BACKEND_REFERENCE,
    BACKENDS,
    IDLE_ARGS,
    STOP_TIMEOUT,
    TRUE_ARGS,
    ExitClock,
    IdlePool,
    median,
    now_ns,
    percentile,
    pidfds_open,
    probe_scopes,
    reaping_thread_id,
    relay_cpu_ns,
    rotated,
    run_window,
    thread_cpu_ns,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from .common import Config

#: A kill whose on_exit has not come after this long counts as lost (reported, never hidden).
LATENCY_TIMEOUT = 5.0
#: The latency floor's name in the results.
WAITID_REFERENCE = "waitid thread (reference)"


class WaitidWitness:
    """The latency floor: a bare thread blocked in ``waitid(P_PIDFD)``, no reaper at all."""

    def __init__(self) -> None:
        self._requests: queue.Queue[int | None] = queue.Queue()
        self._stamps: queue.Queue[int] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="waitid-reference", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (fd := self._requests.get()) is not None:
            try:
                os.waitid(os.P_PIDFD, fd, os.WEXITED)
            finally:
                self._stamps.put(now_ns())

    def measure(self) -> float | None:
        """One sample, as :func:`_measure_latency` takes it, in seconds (None: lost)."""
        pid = os.posix_spawn(IDLE_ARGS[0], IDLE_ARGS, dict(os.environ))
        fd = os.pidfd_open(pid)
        try:
            self._requests.put(fd)
            time.sleep(random.uniform(0.010, 0.020))
            sent = now_ns()
            os.kill(pid, signal.SIGKILL)
            try:
                recorded = self._stamps.get(timeout=LATENCY_TIMEOUT)
            except queue.Empty:
                return None
            return (recorded - sent) / 1e9
        finally:
            os.close(fd)

    def close(self) -> None:
        """Stop the thread."""
        self._requests.put(None)
        self._thread.join()


def _measure_latency(reaper: Reaper, clock: ExitClock) -> float | None:
    """One sample: SIGKILL a fresh idle child and time its on_exit, in seconds (None: lost)."""
    child = reaper.spawn(IDLE_ARGS, stdin=subprocess.DEVNULL)
    clock.expect([child.pid])
    time.sleep(random.uniform(0.010, 0.020))
    sent = now_ns()
    os.kill(child.pid, signal.SIGKILL)
    recorded = clock.collect([child.pid], LATENCY_TIMEOUT).get(child.pid)
    child.wait(timeout=LATENCY_TIMEOUT)
    return None if recorded is None else (recorded - sent) / 1e9


Batch = dict[str, float | int | None]
Samples = dict[int, list[float | None]]


def _popen_true() -> subprocess.Popen[bytes]:
    return subprocess.Popen(TRUE_ARGS)


def _measure_batch(reaper: Reaper | None, config: Config) -> Batch:
    """One scaling batch (bare Popen + wait without a Reaper): costs per child, in seconds."""
    n = config.scaling_batch
    tid = reaping_thread_id()
    pidfds = pidfds_open()
    thread_before = thread_cpu_ns(tid) if tid is not None else None
    relay_before = relay_cpu_ns()
    cpu_before = time.process_time()
    if reaper is None:
        wall = run_window(_popen_true, lambda popen: popen.wait(), n, config.window)
    else:
        wall = run_window(lambda: reaper.spawn(TRUE_ARGS), lambda c: c.wait(), n, config.window)
    cpu = time.process_time() - cpu_before
    relay = (relay_cpu_ns() - relay_before) / 1e9
    thread_after = thread_cpu_ns(tid) if tid is not None else None
    thread = (
        None
        if thread_before is None or thread_after is None
        else (thread_after - thread_before) / 1e9 / n
    )
    return {
        "wall": wall / n,
        "process_cpu": (cpu + relay) / n,
        "reaper_thread_cpu": thread,
        "relay_cpu": relay / n,
        "pidfds_open": pidfds,
    }


def _run_pass(
    backend: str, scope: str, config: Config, log: Callable[[str], None]
) -> tuple[Samples, Samples, dict[str, list[Batch]]]:
    clock = ExitClock()
    latencies: Samples = {level: [] for level in config.latency_levels}
    reference: Samples = {level: [] for level in config.latency_levels}
    # Owned scope only: an all-scope Reaper may reap the reference child itself, after a grace.
    witness = WaitidWitness() if (backend, scope) == ("pidfd", "owned") else None
    batches: dict[str, list[Batch]] = {"none": [], "idle": []}
    with Reaper(
        backend=backend,  # type: ignore[arg-type]
        scope=scope,  # type: ignore[arg-type]
        on_exit=clock,
        stop_timeout=STOP_TIMEOUT,
    ) as reaper:
        pool = IdlePool(reaper)
        try:
            for _ in range(config.scaling_repeats):
                batches["none"].append(_measure_batch(reaper, config))
            for level in config.latency_levels:
                started = time.perf_counter()
                pool.grow_to(level)
                log(
                    f"  {backend}/{scope}: {level} idle children alive "
                    f"(started in {time.perf_counter() - started:.1f}s)"
                )
                for _ in range(config.latency_samples):
                    latencies[level].append(_measure_latency(reaper, clock))
                    if witness is not None:
                        reference[level].append(witness.measure())
                if level == config.scaling_idle:
                    for _ in range(config.scaling_repeats):
                        batches["idle"].append(_measure_batch(reaper, config))
        finally:
            pool.clear()
            if witness is not None:
                witness.close()
        for _ in range(config.scaling_repeats):
            batches["none"].append(_measure_batch(reaper, config))
    return latencies, reference, batches


def _run_reference_pass(config: Config, log: Callable[[str], None]) -> dict[str, list[Batch]]:
    """Scaling batches of bare Popen + wait: none idle, idle children, idle + their pidfds."""
    batches: dict[str, list[Batch]] = {"none": [], "idle": [], "idle_fds": []}
    pool: list[subprocess.Popen[bytes]] = []
    pidfds: list[int] = []
    try:
        for _ in range(config.scaling_repeats):
            batches["none"].append(_measure_batch(None, config))
        while len(pool) < config.scaling_idle:
            pool.append(subprocess.Popen(IDLE_ARGS, stdin=subprocess.DEVNULL))
        log(f"  {BACKEND_REFERENCE}: {len(pool)} idle children alive, no descriptors")
        for _ in range(config.scaling_repeats):
            batches["idle"].append(_measure_batch(None, config))
        pidfds = [os.pidfd_open(popen.pid) for popen in pool]
        log(f"  {BACKEND_REFERENCE}: {len(pool)} idle children alive, one pidfd open on each")
        for _ in range(config.scaling_repeats):
            batches["idle_fds"].append(_measure_batch(None, config))
    finally:
        for fd in pidfds:
            os.close(fd)
        for popen in pool:
            popen.kill()
        for popen in pool:
            popen.wait()
    for _ in range(config.scaling_repeats):
        batches["none"].append(_measure_batch(None, config))
    return batches


def _summarize_latency(samples: list[float | None]) -> dict[str, Any]:
    got = [s for s in samples if s is not None]
    return {
        "samples": len(samples),
        "lost": len(samples) - len(got),
        "p50": median(got),
        "p99": percentile(got, 99),
        "max": max(got, default=float("nan")),
        "all": got,
    }


def _summarize_batches(batches: list[Batch]) -> dict[str, Any]:
    summary: dict[str, Any] = {"batches": batches}
    for key in ("wall", "process_cpu", "reaper_thread_cpu"):
        values = [b[key] for b in batches if b[key] is not None]
        summary[key] = median([v for v in values if v is not None]) if values else None
    return summary


def run(config: Config, log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the latency and scaling passes.

    Returns:
        The latency results and the scaling results, each keyed ``"backend/scope"``.
    """
    combos: list[tuple[str, str]] = []
    missing_scopes: dict[str, str] = {}
    for backend in BACKENDS:
        available, missing = probe_scopes(backend)
        combos += [(backend, scope) for scope in available]
        missing_scopes.update(missing)
    latency_raw: dict[str, dict[int, list[float | None]]] = {}
    scaling_raw: dict[str, dict[str, list[Batch]]] = {}
    passes: list[tuple[str, str]] = [*combos, (BACKEND_REFERENCE, "")]
    for round_index in range(config.pool_rounds):
        for backend, scope in rotated(passes, round_index):
            key = f"{backend}/{scope}" if scope else backend
            log(f"latency+scaling: round {round_index + 1}/{config.pool_rounds}, {key}")
            if backend == BACKEND_REFERENCE:
                batches = _run_reference_pass(config, log)
            else:
                latencies, reference, batches = _run_pass(backend, scope, config, log)
                for level, samples in latencies.items():
                    latency_raw.setdefault(key, {}).setdefault(level, []).extend(samples)
                for level, samples in reference.items():
                    if samples:
                        by_level = latency_raw.setdefault(WAITID_REFERENCE, {})
                        by_level.setdefault(level, []).extend(samples)
            for point, values in batches.items():
                scaling_raw.setdefault(key, {}).setdefault(point, []).extend(values)
    latency = {
        "levels": list(config.latency_levels),
        "target_level": config.latency_target_level,
        "results": {
            key: {str(level): _summarize_latency(samples) for level, samples in per_level.items()}
            for key, per_level in latency_raw.items()
        },
    }
    scaling_results: dict[str, Any] = {}
    for key, points in scaling_raw.items():
        none = _summarize_batches(points["none"])
        loaded = [("idle", key)]
        if "idle_fds" in points:
            loaded = [("idle", f"{key} (idle only)"), ("idle_fds", f"{key} (idle + pidfds)")]
        for point, name in loaded:
            idle = _summarize_batches(points[point])
            ratios = {
                metric: (idle[metric] / none[metric] if idle[metric] and none[metric] else None)
                for metric in ("wall", "process_cpu", "reaper_thread_cpu")
            }
            scaling_results[name] = {"none": none, "idle": idle, "ratio": ratios}
    scaling = {
        "idle_children": config.scaling_idle,
        "batch": config.scaling_batch,
        "window": config.window,
        "scopes_missing": missing_scopes,
        "results": scaling_results,
    }
    return latency, scaling
