"""A status that other code took is recovered through the child's pidfd (Linux 6.15+).

The thieves are the two of the prior art: a thread looping on a blanket ``os.waitpid(-1, 0)``
and a naive SIGCHLD handler (installed first, so our handler chains to it). Every child waits
for a line before it exits, so it is registered, with its pidfd open, before its exit can be
taken: a child that exits before the Reaper has opened its pidfd cannot be recovered (the
kernel keeps the status on pidfds that existed when the process was reaped), and that case is
documented, not tested here. Each test counts what the thief took: a run where it took
nothing would prove nothing, and fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from zombiereaper import (
    Child,
    ExitStatus,
    Reaper,
    SpawnedChild,
    StatusLostError,
    can_recover_stolen_status,
)

from . import internals
from .helpers import HAS_PIDFD, NaiveReaper, eventually, exit_code_worker, sh
from .test_pid_reuse import ReapingThreadHold

NEEDS_RECOVERY = pytest.mark.skipif(
    not can_recover_stolen_status(), reason="needs Linux 6.15+ (PIDFD_INFO_EXIT)"
)
STEP = 20.0

#: (script, expected returncode): exit codes and signals, a few of each.
ENDINGS = [("exit 0", 0), ("exit 3", 3), ("exit 255", 255), ("kill -TERM $$", -15)]
ENDINGS += [("kill -KILL $$", -9), ("exit 77", 77), ("kill -USR1 $$", -10)]


class WaitpidThief:
    """A thread that reaps any child of this process as soon as it exits: waitpid(-1, 0)."""

    def __init__(self) -> None:
        self.taken: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thief", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pid, raw = os.waitpid(-1, 0)
            except ChildProcessError:
                self._stop.wait(0.001)  # no child right now
                continue
            self.taken[pid] = raw

    @contextmanager
    def running(self) -> Iterator[WaitpidThief]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            # Its waitpid blocks while any child lives (a fork server of an earlier test...):
            # a child that exits at once wakes it, and it reaps that one too.
            waker = os.posix_spawn("/bin/true", ["/bin/true"], {})
            self._thread.join(STEP)
            assert not self._thread.is_alive(), "the thief did not stop"
            try:
                os.waitpid(waker, 0)  # unless the thief took it on its way out
            except ChildProcessError:
                pass


#: Every child _spawn_waiting() started in the running test (see _close_their_stdin).
_spawned: list[SpawnedChild] = []


@pytest.fixture(autouse=True)
def _close_their_stdin() -> Iterator[None]:
    """Close what a failed test left open, so that its pipes warn in no later test."""
    yield
    for child in _spawned:
        if child.popen.stdin is not None and not child.popen.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                child.popen.stdin.close()
    _spawned.clear()


def _spawn_waiting(reaper: Reaper, count: int) -> list[tuple[SpawnedChild, int]]:
    """``count`` children that end as ENDINGS say once they read a line."""
    children = []
    for index in range(count):
        script, code = ENDINGS[index % len(ENDINGS)]
        child = reaper.spawn(sh(f"read line; {script}"), stdin=subprocess.PIPE)
        _spawned.append(child)
        children.append((child, code))
    return children


def _release(children: list[tuple[SpawnedChild, int]]) -> None:
    for child, _ in children:
        stdin = child.popen.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError):
            stdin.write(b"go\n")
            stdin.close()


def _outcomes(children: list[tuple[Child, int]]) -> tuple[int, list[str]]:
    """How many children were reported lost, and what was reported wrong."""
    lost, wrong = 0, []
    for child, code in children:
        try:
            status = child.wait(STEP)
        except StatusLostError:
            lost += 1
            if isinstance(child, SpawnedChild):
                # Its Popen never learns an exit that was lost: its own wait() says 0 (ECHILD),
                # as without a Reaper. (All our children have ended: the pid is not reused.)
                child.popen.wait()
            continue
        if status.returncode != code:
            wrong.append(f"pid {child.pid}: {status!r}, expected returncode {code}")
    return lost, wrong


@NEEDS_RECOVERY
def test_a_waitpid_loop_thread_takes_statuses_and_each_is_recovered_exactly() -> None:
    """300 children and a thread in waitpid(-1, 0): none lost, none wrong, Popen agrees."""
    heard: list[ExitStatus] = []
    with Reaper(backend="pidfd", on_exit=heard.append) as reaper:
        children = _spawn_waiting(reaper, 300)
        with WaitpidThief().running() as thief:
            _release(children)
            lost, wrong = _outcomes(list(children))
        assert thief.taken, "the thief took no status: this run proves nothing"
        assert (lost, wrong) == (0, [])
        for child, code in children:
            # CPython's own wait() would have said 0 after ECHILD.
            assert child.popen.returncode == code
            assert reaper.status(child.pid) == code
            # A recovered status has no resource usage: only the reap returns it.
            status = child.wait(0)
            assert (status.rusage is None) == (child.pid in thief.taken), status
    assert sorted(s.pid for s in heard) == sorted(c.pid for c, _ in children)


@NEEDS_RECOVERY
def test_a_naive_sigchld_handler_takes_statuses_and_each_is_recovered_exactly() -> None:
    """The handler that the Reaper chains to reaps everything it sees: nothing is lost."""
    with NaiveReaper() as handler, Reaper(backend="pidfd") as reaper:
        children = _spawn_waiting(reaper, 200)
        _release(children)
        lost, wrong = _outcomes(list(children))
        assert handler.taken, "the handler took no status: this run proves nothing"
        assert (lost, wrong) == (0, [])


@NEEDS_RECOVERY
def test_statuses_taken_while_the_relay_holds_the_pidfds_are_recovered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lent pidfd comes back from the relay, and the status is read from it."""
    internals.lower_relay_thresholds(monkeypatch, above=8, keep=2)
    with Reaper(backend="pidfd") as reaper:
        children = _spawn_waiting(reaper, 60)
        # Lent by the reaping thread, a moment after the spawns.
        eventually(lambda: internals.lent_count() > 0, STEP, "pidfds to be lent")
        with WaitpidThief().running() as thief:
            _release(children)
            lost, wrong = _outcomes(list(children))
        assert thief.taken
        assert (lost, wrong) == (0, [])


@NEEDS_RECOVERY
def test_a_status_asked_for_while_its_pidfd_is_at_a_stopped_relay_waits_for_the_pidfd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """poll() of a taken child whose pidfd the relay holds says "not yet", never "lost".

    The relay is stopped, so the pidfds cannot come back while the statuses are taken and
    asked for; once it runs again they do, and each status is read from its pidfd.
    """
    internals.lower_relay_thresholds(monkeypatch, above=0, keep=0)
    with Reaper(backend="pidfd") as reaper:
        children = _spawn_waiting(reaper, 10)
        eventually(lambda: internals.lent_count() == len(children), STEP, "every pidfd lent")
        relay = internals.relay_pid()
        assert relay is not None
        os.kill(relay, signal.SIGSTOP)
        try:
            _release(children)
            for child, code in children:
                _, raw = os.waitpid(child.pid, 0)  # the thief
                assert os.waitstatus_to_exitcode(raw) == code
                assert child.poll() is None  # its pidfd is away: ask again when it is back
        finally:
            os.kill(relay, signal.SIGCONT)
        assert _outcomes(list(children)) == (0, [])


@NEEDS_RECOVERY
def test_a_multiprocessing_worker_whose_status_was_taken_gets_its_exitcode() -> None:
    """A watched Process reaped by other code: exitcode is the real one, not None forever.

    The theft is made certain: the reaping thread is held in an on_exit while this thread
    reaps the worker with a bare waitpid.
    """
    hold = ReapingThreadHold()
    with Reaper(backend="pidfd", on_exit=hold.on_exit) as reaper:
        process, writer = exit_code_worker("fork")
        child = reaper.watch(process)
        with hold.held(reaper):
            writer.send(42)
            writer.close()
            assert process.pid is not None
            _, raw = os.waitpid(process.pid, 0)  # the thief
            assert os.waitstatus_to_exitcode(raw) == 42
        assert child.wait(STEP).returncode == 42
        process.join(STEP)
        assert process.exitcode == 42


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("pidfd-without-record", marks=pytest.mark.skipif(not HAS_PIDFD, reason="")),
        "sigchld",
    ],
)
def test_without_the_kernels_record_a_taken_status_is_lost_never_made_up(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """StatusLostError, as before, never a code: pidfds on a kernel before 6.15 (the probe
    forced off), or the sigchld backend, which holds no pidfd to read it from."""
    if how == "pidfd-without-record":
        internals.force_no_recovery(monkeypatch)
    with Reaper(backend="sigchld" if how == "sigchld" else "pidfd") as reaper:
        children = _spawn_waiting(reaper, 80)
        with WaitpidThief().running() as thief:
            _release(children)
            lost, wrong = _outcomes(list(children))
    assert thief.taken
    assert wrong == []
    assert lost > 0, "nothing was reported lost although the thief took statuses"


def test_the_probe_agrees_with_the_kernel() -> None:
    """The probe says yes on Linux 6.15 and later (with pidfds), and no before."""
    release = tuple(int(part) for part in os.uname().release.split(".")[:2] if part.isdigit())
    if not HAS_PIDFD:
        assert not can_recover_stolen_status()
    elif release >= (6, 15):
        assert can_recover_stolen_status()
    elif release < (6, 13):
        assert not can_recover_stolen_status()


@NEEDS_RECOVERY
def test_the_probe_out_of_descriptors_says_no_and_asks_again_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An EMFILE during the probe is no answer about the kernel: it is not remembered."""
    internals.forget_recovery_probe(monkeypatch)
    real_open = os.pidfd_open

    def out_of_descriptors(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "pidfd_open", out_of_descriptors)
    assert not can_recover_stolen_status()
    monkeypatch.setattr(os, "pidfd_open", real_open)
    assert can_recover_stolen_status()
