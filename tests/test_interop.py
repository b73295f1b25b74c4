"""Other code's children keep their exact exit codes while a Reaper is installed."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from zombiereaper import Reaper

from .helpers import FORK_IN_THREADED_PROCESS, sh, zombie_children


def _exit_with(code: int) -> None:
    sys.exit(code)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_subprocess_run_from_50_threads_keeps_exit_codes(backend: str) -> None:
    """subprocess.run in 50 threads at once reports each command's real code."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        own = reaper.spawn(sh("exit 3"))

        def run(code: int) -> int:
            return subprocess.run(sh(f"exit {code}"), check=False).returncode

        codes = [n % 256 for n in range(1, 151)]
        with ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(run, codes))
        assert results == codes
        assert own.wait(10).returncode == 3
        assert set(reaper.registry) == {own.pid}
    assert not zombie_children()


def test_popen_wait_of_foreign_children_keeps_codes_while_we_reap(backend: str) -> None:
    """Popen children that the Reaper does not own are never reaped by it."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        foreign = [subprocess.Popen(sh(f"exit {n}")) for n in range(1, 30)]
        mine = [reaper.spawn(sh(f"exit {n}")) for n in range(1, 30)]
        for child in mine:
            child.wait(10)
        reaper.reap()
        assert [p.wait(10) for p in foreign] == list(range(1, 30))


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("fork", marks=pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)),
        "spawn",
        "forkserver",
    ],
)
def test_multiprocessing_keeps_exitcodes(backend: str, method: str) -> None:
    """multiprocessing workers report their real exitcode under every start method."""
    context = multiprocessing.get_context(method)
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        workers = [context.Process(target=_exit_with, args=(code,)) for code in (0, 1, 7, 42)]
        killed = context.Process(target=_kill_self)
        for worker in [*workers, killed]:
            worker.start()
        own = reaper.spawn(sh("exit 5"))
        for worker in [*workers, killed]:
            worker.join(30)
        assert [w.exitcode for w in workers] == [0, 1, 7, 42]
        assert killed.exitcode == -signal.SIGKILL
        assert own.wait(10).returncode == 5
        for worker in [*workers, killed]:
            worker.close()


def test_asyncio_subprocesses_keep_return_codes(backend: str) -> None:
    """asyncio's create_subprocess_exec reports real codes while a Reaper is installed."""

    async def main() -> list[int]:
        procs = [await asyncio.create_subprocess_exec(*sh(f"exit {n}")) for n in range(1, 11)]
        return [await proc.wait() for proc in procs]

    with Reaper(backend=backend):  # type: ignore[arg-type]
        assert asyncio.run(main()) == list(range(1, 11))


def test_reaping_does_not_touch_a_threads_own_waitpid(backend: str) -> None:
    """A thread blocked in os.waitpid on its own fork-exec'd child gets the status, not ECHILD."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        pid = os.posix_spawn("/bin/sh", sh("exit 11"), os.environ)
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(os.waitpid(pid, 0)[1]))
        thread.start()
        churn = [reaper.spawn(sh("exit 0")) for _ in range(20)]
        for child in churn:
            child.wait(10)
        thread.join(10)
        assert os.waitstatus_to_exitcode(result[0]) == 11
