"""Benchmark 4, memory: resident size after many spawn/reap cycles, with the default history.

Each contender runs in a fresh interpreter (``python -m zrbench.memory``), so that nothing the
other benchmarks allocated (4,000-child pools, matplotlib) blurs the reading. The worker
installs its Reaper with default settings (``history=10_000``), runs 10 warm-up cycles so that
the reaping thread and every code path exist, reads its RSS from ``/proc/self/statm`` as the
baseline, and reads it again after each checkpoint. Cycles run as in the throughput benchmark
(``/bin/true``, at most ``window`` alive); growth is RSS minus the baseline. Bare ``Popen`` +
``wait`` runs the same loop as the reference.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from .common import BACKENDS, STOP_TIMEOUT, TRUE_ARGS, python_worker, rss_bytes, run_window

if TYPE_CHECKING:
    from collections.abc import Callable

    from .common import Config

WARMUP_CYCLES = 10
REFERENCE = "Popen+wait"


def _cycles(contender: str, checkpoints: list[int], window: int) -> dict[str, Any]:
    """Run in the worker: the readings of one contender."""
    from zombiereaper import Reaper

    def popen_spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(TRUE_ARGS)

    reaper: Reaper | None = None
    if contender == REFERENCE:
        spawn: Callable[[], Any] = popen_spawn
    else:
        backend = contender.removeprefix("zombiereaper[").removesuffix("]")
        reaper = Reaper(backend=backend, stop_timeout=STOP_TIMEOUT).install()  # type: ignore[arg-type]
        spawn = lambda: reaper.spawn(TRUE_ARGS)  # noqa: E731
    try:
        run_window(spawn, lambda handle: handle.wait(), WARMUP_CYCLES, window)
        gc.collect()
        baseline = rss_bytes()
        readings: list[dict[str, Any]] = []
        done = 0
        started = time.perf_counter()
        for checkpoint in checkpoints:
            run_window(spawn, lambda handle: handle.wait(), checkpoint - done, window)
            done = checkpoint
            gc.collect()
            readings.append(
                {
                    "cycles": checkpoint,
                    "rss": rss_bytes(),
                    "growth": rss_bytes() - baseline,
                    "seconds": time.perf_counter() - started,
                    "registry_records": None if reaper is None else len(reaper.registry),
                }
            )
        history = None if reaper is None else reaper.registry.history
        return {"baseline_rss": baseline, "history": history, "readings": readings}
    finally:
        if reaper is not None:
            reaper.uninstall()


def contenders() -> list[str]:
    """The contenders, zombiereaper's first."""
    return [f"zombiereaper[{backend}]" for backend in BACKENDS] + [REFERENCE]


def run(config: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """Run one worker per contender, one after the other.

    Returns:
        Per contender: the baseline RSS and the readings at each checkpoint.
    """
    checkpoints = ",".join(str(c) for c in config.memory_checkpoints)
    results: dict[str, Any] = {}
    for contender in contenders():
        log(f"memory: {contender}, {config.memory_checkpoints[-1]:,} cycles in a fresh interpreter")
        command, env, cwd = python_worker(
            "zrbench.memory", contender, checkpoints, str(config.window)
        )
        with subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True
        ) as worker:
            out, _ = worker.communicate()
        if worker.returncode != 0:
            raise RuntimeError(f"memory worker for {contender} failed ({worker.returncode})")
        results[contender] = json.loads(out)
    return {
        "checkpoints": list(config.memory_checkpoints),
        "warmup_cycles": WARMUP_CYCLES,
        "window": config.window,
        "results": results,
    }


def main() -> None:
    """The worker's entry point: ``python -m zrbench.memory CONTENDER CHECKPOINTS WINDOW``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("contender")
    parser.add_argument("checkpoints")
    parser.add_argument("window", type=int)
    args = parser.parse_args()
    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    try:
        json.dump(_cycles(args.contender, checkpoints, args.window), sys.stdout)
    except KeyboardInterrupt:
        # Ctrl-C reaches the whole process group; the parent reports it, once.
        sys.exit(130)


if __name__ == "__main__":
    main()
