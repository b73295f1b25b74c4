"""Waiting from asyncio: resolved by the reaping thread, safe to cancel, from any loop."""

from __future__ import annotations

import asyncio
import signal
import threading

import pytest

from zombiereaper import NotOurChildError, Reaper

from .helpers import sh
from .internals import async_waiters


def test_wait_async_returns_the_status(backend: str) -> None:
    """await child.wait_async() and reaper.wait_async(pid) give the exit status."""

    async def main(reaper: Reaper) -> tuple[int, int]:
        child = reaper.spawn(sh("exit 8"))
        other = reaper.spawn(sh("exit 9"))
        status = await child.wait_async()
        by_pid = await reaper.wait_async(other.pid)
        return status.returncode, by_pid.returncode

    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        assert asyncio.run(main(reaper)) == (8, 9)


def test_wait_async_on_an_exited_child_returns_at_once(backend: str) -> None:
    """A child already reaped resolves without waiting; its pid answers from the registry."""

    async def main(reaper: Reaper) -> list[int]:
        child = reaper.spawn(sh("exit 2"))
        child.wait(10)
        return [
            (await child.wait_async()).returncode,
            (await reaper.wait_async(child.pid)).returncode,
        ]

    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        assert asyncio.run(main(reaper)) == [2, 2]


def test_wait_async_for_a_pid_we_do_not_own_raises() -> None:
    """reaper.wait_async() of a stranger's pid raises NotOurChildError."""

    async def main(reaper: Reaper) -> None:
        await reaper.wait_async(1)

    with Reaper() as reaper, pytest.raises(NotOurChildError):
        asyncio.run(main(reaper))


def test_wait_for_timeout_leaves_nothing_behind(backend: str) -> None:
    """asyncio.wait_for with a timeout cancels cleanly; the child runs on and can be awaited."""

    async def main(reaper: Reaper) -> int:
        child = reaper.spawn(sh("exec sleep 30"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(child.wait_async(), 0.05)
        assert async_waiters(child) == 0
        assert child.running
        child.kill()
        return (await asyncio.wait_for(child.wait_async(), 10)).returncode

    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        assert asyncio.run(main(reaper)) == -signal.SIGKILL


def test_cancelled_wait_is_forgotten(backend: str) -> None:
    """Cancelling a task awaiting wait_async removes its waiter."""

    async def main(reaper: Reaper) -> None:
        child = reaper.spawn(sh("exec sleep 30"))
        task = asyncio.create_task(child.wait_async())
        await asyncio.sleep(0)  # let the task register its waiter
        assert async_waiters(child) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert async_waiters(child) == 0
        child.kill()
        await child.wait_async()

    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        asyncio.run(main(reaper))


def test_many_waiters_in_one_loop(backend: str) -> None:
    """Fifty children awaited at once all resolve with their own codes."""

    async def main(reaper: Reaper) -> list[int]:
        children = [reaper.spawn(sh(f"exit {n}")) for n in range(50)]
        statuses = await asyncio.gather(*(c.wait_async() for c in children))
        return [s.returncode for s in statuses]

    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        assert asyncio.run(main(reaper)) == list(range(50))


def test_waiters_in_two_loops_in_two_threads(backend: str) -> None:
    """The same child awaited from two event loops in two threads wakes both."""
    results: list[int] = []

    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(sh("read line; exit 12"), stdin=__import__("subprocess").PIPE)
        started = threading.Barrier(3)

        def in_a_loop() -> None:
            async def main() -> int:
                waiting = asyncio.create_task(child.wait_async())
                await asyncio.sleep(0)
                started.wait(10)
                return (await waiting).returncode

            results.append(asyncio.run(main()))

        threads = [threading.Thread(target=in_a_loop) for _ in range(2)]
        for thread in threads:
            thread.start()
        started.wait(10)
        child.popen.stdin.close()  # type: ignore[union-attr]
        for thread in threads:
            thread.join(10)
    assert results == [12, 12]


@pytest.mark.parametrize("scope", ["owned"])
def test_asyncio_subprocesses_keep_exact_codes_under_a_reaper(backend: str, scope: str) -> None:
    """asyncio's create_subprocess_exec, in a loop next to our own children, keeps its codes."""

    async def main(reaper: Reaper) -> tuple[list[int], list[int]]:
        theirs = [await asyncio.create_subprocess_exec(*sh(f"exit {n}")) for n in range(1, 21)]
        ours = [reaper.spawn(sh(f"exit {n}")) for n in range(1, 21)]
        their_codes = await asyncio.gather(*(p.wait() for p in theirs))
        our_codes = [(await c.wait_async()).returncode for c in ours]
        return list(their_codes), our_codes

    with Reaper(backend=backend, scope=scope) as reaper:  # type: ignore[arg-type]
        assert asyncio.run(main(reaper)) == (list(range(1, 21)), list(range(1, 21)))
