"""scope="all" and subreaper=True: orphans reaped, owners' statuses never stolen.

Each guarantee is checked twice: under Reaper(scope="all"), where it must hold, and under the
naive design (a SIGCHLD handler looping waitpid(-1)), where it must break: the scenario is
sharp enough to catch a reaper that steals.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from zombiereaper import NotOurChildError, Reaper, ReaperError, _linux

from .helpers import (
    FORK_IN_THREADED_PROCESS,
    START_METHODS,
    NaiveReaper,
    eventually,
    is_zombie_or_gone,
    read_line,
    sh,
    zombie_children,
)

GRACE = 0.2


def _all_scope() -> contextlib.AbstractContextManager[object]:
    return Reaper(scope="all", grace=GRACE)


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or not any(p.pid == pid for p in psutil.Process().children())


def _exit_with(code: int) -> None:
    sys.exit(code)


# --- orphans and leaked children are reaped and recorded ----------------------------------------


def test_a_leaked_child_is_reaped_and_recorded(backend: str) -> None:
    """A child nobody waits for is recorded at once and reaped after the grace."""
    with Reaper(scope="all", grace=GRACE, backend=backend) as reaper:  # type: ignore[arg-type]
        pid = os.posix_spawn("/bin/sh", sh("exit 19"), os.environ)
        status = eventually(lambda: reaper.status(pid), what="the leaked child's record")
        assert status.returncode == 19
        eventually(lambda: _gone(pid), what="the leaked child to be reaped")
    assert not zombie_children()


@pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)
def test_a_raw_fork_is_reaped_and_recorded() -> None:
    """A child made by os.fork() and never waited for is reaped and its status recorded."""
    with Reaper(scope="all", grace=GRACE) as reaper:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the forked child
            os._exit(29)
        assert reaper.wait(pid, timeout=10).returncode == 29
        eventually(lambda: _gone(pid), what="the fork to be reaped")
        assert reaper.registry[pid].returncode == 29


def test_orphans_of_a_child_come_back_and_are_reaped() -> None:
    """Under subreaper=True, a child's orphan is reaped by us and its status recorded."""
    with Reaper(scope="all", subreaper=True, grace=GRACE) as reaper:
        parent = subprocess.run(
            sh("(sleep 0.2; exit 3) & echo $!"), capture_output=True, text=True, check=True
        )
        orphan = int(parent.stdout)
        status = eventually(lambda: reaper.status(orphan), what="the orphan's record")
        assert status.returncode == 3
        eventually(lambda: _gone(orphan), what="the orphan to be reaped")


@pytest.mark.skipif(not _linux.can_be_subreaper(), reason="needs PR_SET_CHILD_SUBREAPER")
def test_subreaper_flag_is_set_while_installed_and_restored_after() -> None:
    """subreaper=True sets the flag on install and restores what was there on uninstall."""
    before = _linux.is_child_subreaper()
    try:
        _linux.set_child_subreaper(False)
        with Reaper(scope="all", subreaper=True):
            assert _linux.is_child_subreaper()
        assert not _linux.is_child_subreaper()
        _linux.set_child_subreaper(True)
        with Reaper(scope="all", subreaper=True):
            assert _linux.is_child_subreaper()
        assert _linux.is_child_subreaper()
    finally:
        _linux.set_child_subreaper(before)


def test_subreaper_needs_the_all_scope() -> None:
    """subreaper=True with the owned scope is refused at construction, saying why."""
    with pytest.raises(ReaperError, match="scope='all'"):
        Reaper(subreaper=True)


def test_only_one_all_scope_reaper_at_a_time() -> None:
    """A second all-scope install raises; owned-scope Reapers may join it."""
    with Reaper(scope="all"):
        second = Reaper(scope="all")
        with pytest.raises(ReaperError, match="another Reaper with scope='all'"):
            second.install()
        assert not second.installed
        with Reaper() as owned:
            assert owned.spawn(sh("exit 4")).wait(10).returncode == 4
    with Reaper(scope="all"):  # the first one's uninstall freed the place
        pass


def test_owned_reapers_keep_their_children_under_the_all_scope(backend: str) -> None:
    """An owned-scope Reaper's children are reaped and recorded by it, not by the all scope."""
    with (
        Reaper(scope="all", grace=0.0) as everything,
        Reaper(backend=backend) as owned,  # type: ignore[arg-type]
    ):
        children = [owned.spawn(sh(f"exit {n}")) for n in range(20)]
        assert [c.wait(10).returncode for c in children] == list(range(20))
        everything.reap()
        assert not set(everything.registry) & {c.pid for c in children}


def test_wait_on_a_pid_that_is_not_a_child_raises() -> None:
    """reaper.wait() of a pid that is no child of ours raises NotOurChildError."""
    with Reaper(scope="all") as reaper, pytest.raises(NotOurChildError):
        reaper.wait(1)


# --- owners keep their statuses ---------------------------------------------------------------


def _owner_waits_within_the_grace(
    context: Callable[[], contextlib.AbstractContextManager[object]],
) -> int:
    with context():
        pid = os.posix_spawn("/bin/sh", sh("exit 11"), os.environ)
        eventually(lambda: is_zombie_or_gone(pid), what="the child to exit")
        try:
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        except ChildProcessError:
            return -1000


def test_an_owner_waiting_within_the_grace_keeps_its_status() -> None:
    """os.waitpid() by the owner, after the exit but within the grace, gets the real status."""
    assert _owner_waits_within_the_grace(lambda: Reaper(scope="all", grace=5.0)) == 11
    assert _owner_waits_within_the_grace(NaiveReaper) == -1000  # the naive design steals it


def _popen_waited_late(context: Callable[[], contextlib.AbstractContextManager[object]]) -> int:
    with context():
        popen = subprocess.Popen(sh("exit 5"))
        # Past the grace: wait until something has reaped the zombie (ours through Popen).
        eventually(lambda: _gone(popen.pid) or popen.returncode is not None, what="reaping")
        return popen.wait(10)


def test_popen_wait_called_after_the_grace_keeps_its_code() -> None:
    """A live Popen is recognized: reaped through its own lock, its wait() says 5, not 0."""
    assert _popen_waited_late(_all_scope) == 5
    assert _popen_waited_late(NaiveReaper) == 0  # Popen's made-up status after ECHILD


def test_subprocess_run_from_50_threads_keeps_exit_codes(backend: str) -> None:
    """subprocess.run in 50 threads at once keeps every code under the all scope."""
    with Reaper(scope="all", grace=0.05, backend=backend) as reaper:  # type: ignore[arg-type]

        def run(code: int) -> int:
            return subprocess.run(sh(f"exit {code}"), check=False).returncode

        codes = [n % 256 for n in range(1, 201)]
        with ThreadPoolExecutor(max_workers=50) as pool:
            assert list(pool.map(run, codes)) == codes
        reaper.reap()
    assert not zombie_children()


def test_wait_on_another_owners_child_does_not_steal_it() -> None:
    """reaper.wait(pid) of a Popen's child returns its status and leaves Popen's intact."""
    with Reaper(scope="all", grace=5.0) as reaper:
        popen = subprocess.Popen(sh("read line; exit 6"), stdin=subprocess.PIPE)
        waited: list[int] = []
        waiter = threading.Thread(target=lambda: waited.append(reaper.wait(popen.pid).returncode))
        waiter.start()
        popen.stdin.close()  # type: ignore[union-attr]
        waiter.join(10)
        assert waited == [6]
        assert popen.wait(10) == 6


def _late_join(
    method: str, context: Callable[[], contextlib.AbstractContextManager[object]]
) -> object:
    ctx = multiprocessing.get_context(method)
    with context():
        process = ctx.Process(target=_exit_with, args=(42,))
        process.start()
        assert multiprocessing.connection.wait([process.sentinel], 20)
        # Past the grace: until the worker is no zombie of ours any more (or never was one).
        eventually(lambda: _gone(process.pid), what="the worker to be reaped")  # type: ignore[arg-type]
        process.join(20)
        code = process.exitcode
        if code is not None:  # under the naive design it never is: close() would refuse
            process.close()
        return code


@pytest.mark.parametrize("method", START_METHODS)
def test_multiprocessing_joined_after_the_grace_keeps_its_exitcode(method: str) -> None:
    """A live Process is recognized: its exitcode is stored before it is reaped."""
    assert _late_join(method, _all_scope) == 42


@pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)
def test_the_naive_design_loses_multiprocessing_exitcodes() -> None:
    """Negative control: under a waitpid(-1) handler, a fork worker's exitcode stays None."""
    assert _late_join("fork", NaiveReaper) is None


@pytest.mark.parametrize("method", START_METHODS)
def test_multiprocessing_under_load_keeps_exitcodes(method: str) -> None:
    """Many workers joined from threads under the all scope all keep their exit codes."""
    ctx = multiprocessing.get_context(method)
    with Reaper(scope="all", grace=0.05):
        processes = [ctx.Process(target=_exit_with, args=(n,)) for n in range(12)]
        for process in processes:
            process.start()
        joiners = [threading.Thread(target=p.join, args=(30,)) for p in processes]
        for joiner in joiners:
            joiner.start()
        for joiner in joiners:
            joiner.join(40)
        assert [p.exitcode for p in processes] == list(range(12))
        for process in processes:
            process.close()


def _block_the_loop_past_the_grace(pid: int) -> None:
    # The scenario itself: the event loop is stuck (a blocking call in a coroutine) while its
    # child is a zombie, for several graces. Only an owner check keeps the status safe.
    eventually(lambda: is_zombie_or_gone(pid), what="the child to exit")
    time.sleep(GRACE * 4)


def _asyncio_blocked(context: Callable[[], contextlib.AbstractContextManager[object]]) -> list[int]:
    async def main() -> list[int]:
        procs = [await asyncio.create_subprocess_exec(*sh(f"exit {n}")) for n in (7, 8, 9)]
        _block_the_loop_past_the_grace(procs[-1].pid)
        return [await proc.wait() for proc in procs]

    with context():
        return asyncio.run(main())


def test_asyncio_loop_blocked_longer_than_the_grace_keeps_its_codes() -> None:
    """asyncio's watcher (a thread on 3.11, a pidfd on 3.12+) keeps exact codes past the grace."""
    assert _asyncio_blocked(_all_scope) == [7, 8, 9]


def test_asyncio_subprocesses_keep_codes_under_load() -> None:
    """Thirty asyncio subprocesses at once keep their codes under the all scope."""

    async def main() -> list[int]:
        procs = [await asyncio.create_subprocess_exec(*sh(f"exit {n}")) for n in range(30)]
        return list(await asyncio.gather(*(p.wait() for p in procs)))

    with Reaper(scope="all", grace=0.05):
        assert asyncio.run(main()) == list(range(30))


def test_stopping_a_spawned_child_still_works_in_the_all_scope() -> None:
    """spawn() under the all scope owns its child as usual: signals and statuses are exact."""
    with Reaper(scope="all", grace=0.0) as reaper:
        child = reaper.spawn(sh("echo ready; exec sleep 30"), stdout=subprocess.PIPE)
        assert read_line(child.popen.stdout) == "ready\n"  # type: ignore[union-attr]
        child.send_signal(signal.SIGUSR1)
        assert child.wait(10).signal == signal.SIGUSR1
        child.popen.stdout.close()  # type: ignore[union-attr]


@pytest.fixture(autouse=True)
def _no_all_scope_left() -> Iterator[None]:
    yield
    from zombiereaper import _engine

    engine = _engine.current()
    assert engine is None or engine._all_scope is None


def test_the_all_scope_needs_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without /proc the all scope cannot find zombies: it is refused, saying what to use."""
    monkeypatch.setattr(_linux, "can_list_children", lambda: False)
    with pytest.raises(ReaperError, match="scope='owned'"):
        Reaper(scope="all")


def test_wait_on_a_child_another_reaper_owns_returns_its_status(backend: str) -> None:
    """The all scope's wait(pid) of a child owned by another Reaper gets that Reaper's status."""
    with (
        Reaper(scope="all", grace=0.0) as everything,
        Reaper(backend=backend) as owned,  # type: ignore[arg-type]
    ):
        for code in range(20):
            child = owned.spawn(sh(f"exit {code}"))
            assert everything.wait(child.pid, timeout=10).returncode == code


def test_wait_async_works_for_any_child_in_the_all_scope() -> None:
    """await reaper.wait_async(pid) returns the status of a child it does not own, unstolen."""

    async def main(reaper: Reaper) -> tuple[int, int, int]:
        popen = subprocess.Popen(sh("read line; exit 6"), stdin=subprocess.PIPE)
        waiting = asyncio.create_task(reaper.wait_async(popen.pid))
        await asyncio.sleep(0)
        popen.stdin.close()  # type: ignore[union-attr]
        status = await asyncio.wait_for(waiting, 10)
        leaked = os.posix_spawn("/bin/sh", sh("exit 9"), os.environ)
        raw = await asyncio.wait_for(reaper.wait_async(leaked), 10)
        return status.returncode, popen.wait(10), raw.returncode

    with Reaper(scope="all", grace=5.0) as reaper:
        assert asyncio.run(main(reaper)) == (6, 6, 9)


def test_cancelling_wait_async_of_any_child_leaves_nothing() -> None:
    """A timed-out wait_async on a running child closes its pidfd and leaves the child alone."""

    async def main(reaper: Reaper, pid: int) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reaper.wait_async(pid), 0.05)

    with Reaper(scope="all", grace=5.0) as reaper:
        popen = subprocess.Popen(sh("exec sleep 30"))
        before = len(os.listdir("/proc/self/fd"))
        asyncio.run(main(reaper, popen.pid))
        assert len(os.listdir("/proc/self/fd")) <= before
        assert popen.poll() is None
        popen.kill()
        assert popen.wait(10) == -signal.SIGKILL
