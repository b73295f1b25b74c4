"""watch(): Popen, multiprocessing and raw pids, with the owner's API kept exact."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import threading

import pytest

from zombiereaper import NotInstalledError, NotOurChildError, Reaper

from .helpers import (
    FORK_IN_THREADED_PROCESS,
    START_METHODS,
    eventually,
    fork_waiting,
    is_zombie_or_gone,
    read_line,
    sh,
    zombie_children,
)


def _exit_with(code: int) -> None:
    sys.exit(code)


def _sleep_forever(ready: object) -> None:
    import time

    ready.set()  # type: ignore[attr-defined]
    time.sleep(3600)


# --- subprocess.Popen ---------------------------------------------------------------------------


def test_watch_popen_when_the_owner_waits_first(backend: str) -> None:
    """The owner's popen.wait() gets the real code, and the Child and registry get it too."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        popen = subprocess.Popen(sh("read line; exit 3"), stdin=subprocess.PIPE)
        child = reaper.watch(popen)
        assert child.popen is popen
        assert child.args == popen.args
        result: list[int] = []
        owner = threading.Thread(target=lambda: result.append(popen.wait()))
        owner.start()
        popen.stdin.close()  # type: ignore[union-attr]
        owner.join(10)
        assert result == [3]
        assert child.wait(10).returncode == 3
        assert reaper.registry[popen.pid].returncode == 3


def test_watch_popen_when_we_notice_first(backend: str) -> None:
    """When the Reaper reaps first, popen.wait()/returncode still give the real code."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        popen = subprocess.Popen(sh("exit 4"))
        child = reaper.watch(popen)
        assert child.wait(10).returncode == 4
        assert popen.returncode == 4
        assert popen.wait() == 4
        assert popen.poll() == 4


def test_watch_popen_that_already_exited_and_was_reaped(backend: str) -> None:
    """A Popen whose owner already reaped it is recorded at once with its code."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        popen = subprocess.Popen(sh("exit 5"))
        assert popen.wait(10) == 5
        child = reaper.watch(popen)
        assert not child.running
        assert child.status is not None
        assert child.status.returncode == 5
        assert reaper.status(popen.pid) == child.status


def test_watch_popen_that_is_already_a_zombie(backend: str) -> None:
    """A Popen child that exited but was never waited for is reaped and recorded at once."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        popen = subprocess.Popen(sh("exit 6"))
        eventually(lambda: is_zombie_or_gone(popen.pid), what="the zombie")
        child = reaper.watch(popen)
        assert child.wait(10).returncode == 6
        assert popen.wait() == 6
        assert not zombie_children()


def test_watching_the_same_target_twice_returns_the_same_child(backend: str) -> None:
    """watch() of one Popen, of its pid, or of a spawned child's Popen returns one Child."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        popen = subprocess.Popen(sh("exec sleep 30"))
        first = reaper.watch(popen)
        assert reaper.watch(popen) is first
        assert reaper.watch(popen.pid) is first
        spawned = reaper.spawn(sh("exit 2"))
        assert reaper.watch(spawned.popen) is spawned  # type: ignore[arg-type]
        spawned.wait(10)
        assert reaper.watch(spawned.popen) is spawned  # type: ignore[arg-type]
        first.kill()
        first.wait(10)
        assert reaper.watch(popen) is first
        assert popen.wait() == -signal.SIGKILL


def test_watched_popen_can_be_signalled_and_is_stopped_with_the_reaper(backend: str) -> None:
    """A watched child is owned like a spawned one: signals reach it, the with block stops it."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        popen = subprocess.Popen(sh("exec sleep 30"))
        child = reaper.watch(popen)
    assert child.status is not None
    assert child.status.signal == signal.SIGTERM
    assert popen.returncode == -signal.SIGTERM


# --- multiprocessing -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", START_METHODS)
def test_watch_process_when_we_notice_first(backend: str, method: str) -> None:
    """join()/exitcode keep the real code after the Reaper recorded the exit, any start method."""
    context = multiprocessing.get_context(method)
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        process = context.Process(target=_exit_with, args=(7,))
        process.start()
        child = reaper.watch(process)
        assert child.process is process
        assert child.wait(20).returncode == 7
        process.join(20)
        assert process.exitcode == 7
        process.close()


@pytest.mark.parametrize("method", START_METHODS)
def test_watch_process_when_the_owner_joins_first(backend: str, method: str) -> None:
    """A Process joined by its owner before the Reaper notices still gives both the real code."""
    context = multiprocessing.get_context(method)
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        processes = [context.Process(target=_exit_with, args=(n,)) for n in (0, 1, 42)]
        for process in processes:
            process.start()
        children = [reaper.watch(process) for process in processes]
        for process in processes:
            process.join(20)
        assert [p.exitcode for p in processes] == [0, 1, 42]
        assert [c.wait(20).returncode for c in children] == [0, 1, 42]
        for process in processes:
            process.close()


@pytest.mark.parametrize("method", START_METHODS)
def test_watch_process_killed_and_stopped(backend: str, method: str) -> None:
    """A watched worker can be stopped through its Child; exitcode then says the signal."""
    context = multiprocessing.get_context(method)
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        ready = context.Event()
        process = context.Process(target=_sleep_forever, args=(ready,))
        process.start()
        child = reaper.watch(process)
        assert ready.wait(20)
        assert child.stop(timeout=10).signal == signal.SIGTERM
        process.join(20)
        assert process.exitcode == -signal.SIGTERM
        child.kill()  # reaped: a no-op, never a signal to a recycled pid
        process.close()


@pytest.mark.parametrize("method", START_METHODS)
def test_watch_process_that_already_ended(backend: str, method: str) -> None:
    """A worker that ended (joined or not) before watch() is recorded at once."""
    context = multiprocessing.get_context(method)
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        joined = context.Process(target=_exit_with, args=(3,))
        joined.start()
        joined.join(20)
        assert reaper.watch(joined).wait(20).returncode == 3
        unjoined = context.Process(target=_exit_with, args=(9,))
        unjoined.start()
        sentinel_ready = multiprocessing.connection.wait([unjoined.sentinel], 20)
        assert sentinel_ready
        assert reaper.watch(unjoined).wait(20).returncode == 9
        unjoined.join(20)
        assert unjoined.exitcode == 9
        joined.close()
        unjoined.close()


@pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)
def test_joins_racing_the_reaper_keep_exitcodes(backend: str) -> None:
    """Owners joining from threads while the Reaper reaps never see exitcode None."""
    context = multiprocessing.get_context("fork")
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        processes = [context.Process(target=_exit_with, args=(n % 256,)) for n in range(40)]
        for process in processes:
            process.start()
        children = [reaper.watch(process) for process in processes]

        def join(process: multiprocessing.process.BaseProcess) -> None:
            process.join(20)

        joiners = [threading.Thread(target=join, args=(p,)) for p in processes]
        for joiner in joiners:
            joiner.start()
        for joiner in joiners:
            joiner.join(30)
        assert [p.exitcode for p in processes] == [n % 256 for n in range(40)]
        assert [c.wait(20).returncode for c in children] == [n % 256 for n in range(40)]
        for process in processes:
            process.close()


# --- raw pids ------------------------------------------------------------------------------------


def test_watch_a_posix_spawned_pid(backend: str) -> None:
    """A bare pid of a direct child is reaped and recorded."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        pid = os.posix_spawn("/bin/sh", sh("exit 13"), os.environ)
        child = reaper.watch(pid)
        assert child.args is None
        assert child.popen is None
        assert child.process is None
        assert child.wait(10).returncode == 13
        assert reaper.wait(pid).returncode == 13


@pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)
def test_watch_a_raw_fork(backend: str) -> None:
    """A child made by os.fork() is reaped and its status recorded."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        pid, write_end = fork_waiting(17)
        child = reaper.watch(pid)
        assert child.running
        os.close(write_end)
        assert child.wait(10).returncode == 17


def test_watch_a_raw_pid_and_signal_it(backend: str) -> None:
    """A watched bare pid can be signalled until it is reaped, then signals do nothing."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        pid = os.posix_spawn("/bin/sh", sh("echo ready; exec sleep 30"), os.environ)
        child = reaper.watch(pid)
        child.terminate()
        assert child.wait(10).signal == signal.SIGTERM
        child.kill()


def test_watch_a_pid_that_is_not_our_child() -> None:
    """A pid that is not our child (init, ourselves, a grandchild) raises NotOurChildError."""
    with Reaper() as reaper:
        for pid in (1, os.getpid()):
            with pytest.raises(NotOurChildError, match="not a child of this process") as info:
                reaper.watch(pid)
            assert info.value.pid == pid
        parent = subprocess.Popen(sh("sleep 30 & echo $!; wait"), stdout=subprocess.PIPE, text=True)
        grandchild = int(read_line(parent.stdout))
        with pytest.raises(NotOurChildError):
            reaper.watch(grandchild)
        os.kill(grandchild, signal.SIGKILL)
        assert parent.wait(10) == 0
        parent.stdout.close()  # type: ignore[union-attr]
        assert reaper.children == ()


def test_watch_refuses_bad_targets() -> None:
    """Wrong types, pids <= 0, unstarted Processes and an uninstalled Reaper get clear errors."""
    with pytest.raises(NotInstalledError, match="watch"):
        Reaper().watch(1)
    with Reaper() as reaper:
        with pytest.raises(TypeError, match=r"pid, a subprocess\.Popen or a multiprocessing"):
            reaper.watch("1234")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            reaper.watch(True)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="> 0"):
            reaper.watch(0)
        with pytest.raises(ValueError, match="start"):
            reaper.watch(multiprocessing.get_context("spawn").Process(target=_exit_with))


def test_a_refused_watch_leaves_no_trace() -> None:
    """After watch() refuses a pid, the engine does not count it as anybody's child."""
    from zombiereaper import _engine

    with Reaper() as reaper:
        with pytest.raises(NotOurChildError):
            reaper.watch(1)
        engine = _engine.current()
        assert engine is not None
        assert engine.owned_watch(1) is None


def test_a_child_another_reaper_watches_is_refused_not_stolen(backend: str) -> None:
    """watch() of a child that another Reaper owns raises; the owner keeps the exact status."""
    from zombiereaper import ReaperError

    with Reaper(backend=backend) as owner, Reaper(backend=backend) as other:  # type: ignore[arg-type]
        child = owner.spawn(sh("read line; exit 17"), stdin=subprocess.PIPE)
        popen = child.popen
        assert popen is not None and popen.stdin is not None
        with pytest.raises(ReaperError, match="already watched by another Reaper"):
            other.watch(popen)
        with pytest.raises(ReaperError, match="already watched by another Reaper"):
            other.watch(child.pid)
        assert other.children == ()
        popen.stdin.close()
        assert child.wait(10).returncode == 17
        assert popen.returncode == 17
        # Once settled, the pid is nobody's: watching the reaped Popen records its code.
        assert other.watch(popen).wait(10).returncode == 17
