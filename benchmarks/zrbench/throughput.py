"""Benchmark 1, throughput: start and reap short children, at most ``window`` alive at once.

Every contender runs the same loop (:func:`~zrbench.common.run_window`, or its coroutine twin
in an event loop): start ``/bin/true``, and once ``window`` children are alive, wait for the
oldest before starting the next. The contenders take turns inside each round, in an order that
rotates from round to round, so a slow patch of the machine hits all of them; each round also
gives every contender a ratio to bare ``Popen`` + ``wait`` and one to asyncio's own
subprocesses, both measured moments apart, and the suite reports the medians.
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import time
from typing import TYPE_CHECKING, Any, TypeVar

from zombiereaper import Reaper

from .common import BACKENDS, STOP_TIMEOUT, TRUE_ARGS, median, rotated, run_window

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from zombiereaper import SpawnedChild

    from .common import Config

H = TypeVar("H")

#: The contender every other is compared with.
BASELINE = "Popen+wait"
#: The contender the event-loop contenders are compared with: asyncio's own subprocesses.
ASYNCIO_BASELINE = "asyncio subprocess"

Contender = tuple[str, "Callable[[int, int], float]"]


def _zombiereaper(backend: str) -> Callable[[int, int], float]:
    def run(n: int, window: int) -> float:
        with Reaper(backend=backend, stop_timeout=STOP_TIMEOUT) as reaper:  # type: ignore[arg-type]
            return run_window(
                lambda: reaper.spawn(TRUE_ARGS), lambda child: child.wait(), n, window
            )

    return run


def _popen(n: int, window: int) -> float:
    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(TRUE_ARGS)

    return run_window(spawn, lambda popen: popen.wait(), n, window)


def _posix_spawn(n: int, window: int) -> float:
    program, environ = TRUE_ARGS[0], dict(os.environ)
    return run_window(
        lambda: os.posix_spawn(program, TRUE_ARGS, environ),
        lambda pid: os.waitpid(pid, 0),
        n,
        window,
    )


async def run_window_async(
    spawn: Callable[[], Awaitable[H]], wait: Callable[[H], Awaitable[object]], n: int, window: int
) -> float:
    """:func:`~zrbench.common.run_window` in an event loop: both steps are awaited.

    Returns:
        The wall-clock seconds it took, from the first spawn to the last wait.
    """
    pending: collections.deque[H] = collections.deque()
    start = time.perf_counter()
    for _ in range(n):
        if len(pending) >= window:
            await wait(pending.popleft())
        pending.append(await spawn())
    while pending:
        await wait(pending.popleft())
    return time.perf_counter() - start


def _zombiereaper_async(backend: str) -> Callable[[int, int], float]:
    def run(n: int, window: int) -> float:
        with Reaper(backend=backend, stop_timeout=STOP_TIMEOUT) as reaper:  # type: ignore[arg-type]

            async def spawn() -> SpawnedChild:
                return reaper.spawn(TRUE_ARGS)

            return asyncio.run(run_window_async(spawn, lambda child: child.wait_async(), n, window))

    return run


def _asyncio(n: int, window: int) -> float:
    async def spawn() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(*TRUE_ARGS)

    return asyncio.run(run_window_async(spawn, lambda proc: proc.wait(), n, window))


def contenders() -> list[Contender]:
    """Every contender, zombiereaper's first, the baselines among them."""
    found: list[Contender] = [(f"zombiereaper[{b}]", _zombiereaper(b)) for b in BACKENDS]
    found += [
        (BASELINE, _popen),
        ("posix_spawn+waitpid", _posix_spawn),
    ]
    found += [(f"zombiereaper[{b}] wait_async", _zombiereaper_async(b)) for b in BACKENDS]
    found.append((ASYNCIO_BASELINE, _asyncio))
    return found


def asyncio_child_watcher() -> str:
    """The class asyncio reaps its children with here (it differs between Python versions)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            policy = asyncio.get_event_loop_policy()
            watcher = policy.get_child_watcher()
        except (AttributeError, NotImplementedError, RuntimeError):
            return "asyncio's built-in pidfd/thread watcher"
    return type(watcher).__name__


def run(config: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """Run the throughput benchmark.

    Returns:
        Per contender: every round's seconds, the median, children per second, and the
        medians over rounds of the ratios to bare Popen + wait and to asyncio's subprocesses
        (higher is faster).
    """
    n, window = config.throughput_children, config.window
    entries = contenders()
    if config.warmup:
        for name, func in entries:
            log(f"throughput: warming up {name}")
            func(min(n, 200), window)
    times: dict[str, list[float]] = {name: [] for name, _ in entries}
    for round_index in range(config.throughput_rounds):
        order = rotated(entries, round_index)
        for name, func in order:
            times[name].append(func(n, window))
        log(
            f"throughput: round {round_index + 1}/{config.throughput_rounds}: "
            + ", ".join(f"{name} {times[name][-1]:.3f}s" for name, _ in order)
        )
    results: dict[str, Any] = {}
    for name, _ in entries:
        own = times[name]
        ratios = [base / mine for base, mine in zip(times[BASELINE], own, strict=True)]
        to_asyncio = [base / mine for base, mine in zip(times[ASYNCIO_BASELINE], own, strict=True)]
        results[name] = {
            "seconds": own,
            "median_seconds": median(own),
            "children_per_second": n / median(own),
            "ratio_to_popen": median(ratios),
            "ratios_to_popen": ratios,
            "ratio_to_asyncio": median(to_asyncio),
            "ratios_to_asyncio": to_asyncio,
        }
    return {
        "children": n,
        "window": window,
        "rounds": config.throughput_rounds,
        "program": TRUE_ARGS[0],
        "asyncio_child_watcher": asyncio_child_watcher(),
        "asyncio_baseline": ASYNCIO_BASELINE,
        "contenders": results,
    }
