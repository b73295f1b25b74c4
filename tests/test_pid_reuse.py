"""PID reuse: a pid reaped and given to another process is never signalled nor read as ours.

Each case runs as PID 1 of a new PID namespace (tests/pidns.py), where ``ns_last_pid`` hands a
reaped child's pid to the very next process started. The reaping thread is held busy, through
the public ``on_exit``, while a case reaps, reuses and signals: that opens for certain the
window that a loaded machine opens now and then. Races 4, 5 and 6 of the reaping-core issue;
the rule (prior-art pitfall 6): a process is the same one only by its pidfd, or by its pid
*and* its start time.

The functions named ``case_*`` run inside the namespace and return what they saw; the tests
assert on it.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, Literal

import pytest

from zombiereaper import (
    Child,
    ExitStatus,
    Reaper,
    StatusLostError,
    WaitTimeout,
    can_recover_stolen_status,
)
from zombiereaper._backends.pidfd import PidfdMonitor

from . import internals
from .helpers import HAS_PIDFD, eventually, py, read_line
from .pidns import call_as_pid1, set_next_pid

# --- adapter: the only private access; rewrite these when the internals move -----------------
#
# "pidfd-lent" cases need the pidfd of one given child lent to the relay: past
# PidfdMonitor.lend_above pidfds. These two keep meaning "lend every pidfd from now on" and
# "how many pidfds are away in the relay". They only ever run inside a throwaway namespace:
# nothing to restore.


def lower_relay_thresholds(above: int, keep: int) -> None:
    """Lend pidfds to the relay once this process holds more than ``above``, down to ``keep``."""
    PidfdMonitor.lend_above = above
    PidfdMonitor.lend_keep = keep


def lent_count() -> int:
    """How many pidfds the relay holds for the running engine."""
    return internals.lent_count()


# --- inside the namespace ---------------------------------------------------------------------

#: How a case watches its children: a backend, or pidfd with every pidfd lent to the relay.
#: "sigchld" children hold a pidfd (a few at a time may, see SWEPT_PIDFD_LIMIT);
#: "sigchld-inode" names each by pid and the inode number of a pidfd (pidfs, Linux 6.9+; the
#: start time before), as the backend does past its limit; "sigchld-start" by pid and start
#: time even where the inode number would do, so that every identity is tried.
Mode = Literal["pidfd", "pidfd-lent", "sigchld", "sigchld-inode", "sigchld-start"]

#: Who reads A's exit in race 6. "poll": A's own poll(), with the reaping thread still held,
#: and B is spawned by the Reaper too (left to the sweep, A and B would be read in no set
#: order). "sweep": the reaping thread, once released, and B is a plain Popen of ours.
Reader = Literal["poll", "sweep"]

#: Seconds any one step inside the namespace may take.
STEP: Final = 5.0

#: Echoes each line it reads, and says "ready" first. SIGTERM keeps its default action: if it
#: is sent one, it dies before it can echo anything sent after.
ECHO: Final = py(
    "import sys\n"
    "print('ready', flush=True)\n"
    "for line in iter(sys.stdin.readline, ''):\n"
    "    print(line, end='', flush=True)\n"
)


def exit_on_eof(code: int) -> list[str]:
    """A child that exits with ``code`` once its stdin closes."""
    return py(f"import sys; sys.stdin.read(); sys.exit({code})")


class Bystander:
    """A process that nothing in the case may signal; it tells whether it still runs."""

    def __init__(self, **popen_kwargs: Any) -> None:
        self.popen = subprocess.Popen(
            ECHO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **popen_kwargs
        )
        assert read_line(self.popen.stdout, STEP) == "ready\n"

    @property
    def pid(self) -> int:
        """Its pid."""
        return self.popen.pid

    def fate(self) -> str:
        """``"alive"`` if it still echoes a line sent now, else how it ended."""
        stdin, stdout = self.popen.stdin, self.popen.stdout
        assert stdin is not None and stdout is not None
        if self.popen.returncode is None:
            try:
                stdin.write("ping\n")
                stdin.flush()
                if read_line(stdout, STEP) == "ping\n":
                    return "alive"
            except BrokenPipeError:
                pass
        return f"ended with returncode {self.popen.wait(STEP)}"

    def stop(self) -> None:
        """Let it exit, and reap it."""
        try:
            assert self.popen.stdin is not None
            self.popen.stdin.close()
        except BrokenPipeError:
            pass
        self.popen.wait(STEP)
        assert self.popen.stdout is not None
        self.popen.stdout.close()


class ReapingThreadHold:
    """Keeps the reaping thread busy in ``on_exit`` for as long as a case needs.

    Give :meth:`on_exit` to the Reaper; within ``with hold.held(reaper):`` the reaping thread
    sits in that callback, so it notices no exit, reads no status and sweeps nothing.
    """

    def __init__(self) -> None:
        self._pid: int | None = None
        self._holding = threading.Event()
        self._released = threading.Event()

    def on_exit(self, status: ExitStatus) -> None:
        """The Reaper's on_exit: blocks on the exit of the holding child, until released."""
        if status.pid == self._pid:
            self._holding.set()
            self._released.wait(4 * STEP)

    @contextmanager
    def held(self, reaper: Reaper) -> Iterator[None]:
        """Hold the reaping thread for the block: a child exits, and its on_exit blocks."""
        holder = reaper.spawn(exit_on_eof(0), stdin=subprocess.PIPE)
        self._pid = holder.pid
        assert holder.popen is not None and holder.popen.stdin is not None
        holder.popen.stdin.close()
        try:
            assert self._holding.wait(STEP), "the reaping thread never ran on_exit"
            yield
        finally:
            self._released.set()


def reaper_for(mode: Mode, on_exit: Callable[[ExitStatus], object]) -> Reaper:
    """A Reaper watching as ``mode`` says (not installed yet)."""
    if mode == "pidfd-lent":
        lower_relay_thresholds(above=0, keep=0)
    if mode in {"sigchld-inode", "sigchld-start"}:
        internals.limit_swept_pidfds(0)
    if mode == "sigchld-start":
        internals.identify_by_start_time()
    return Reaper(backend="pidfd" if mode.startswith("pidfd") else "sigchld", on_exit=on_exit)


def outcome(read: Callable[[], ExitStatus | None]) -> int | str:
    """What a Child's poll() or wait() said: a returncode, "running", "lost" or "timeout"."""
    try:
        status = read()
    except StatusLostError:
        return "lost"
    except WaitTimeout:
        return "timeout"
    return "running" if status is None else status.returncode


def case_group_signal_after_own_wait(mode: Mode) -> dict[str, object]:
    """Race 4: popen.wait() reaps A, a stranger takes A's pgid, child.send_signal(group=True)."""
    hold = ReapingThreadHold()
    with reaper_for(mode, hold.on_exit) as reaper:
        child = reaper.spawn(exit_on_eof(7), stdin=subprocess.PIPE, process_group=0)
        popen = child.popen
        assert popen is not None and popen.stdin is not None
        with hold.held(reaper):
            popen.stdin.close()
            popen_code = popen.wait(STEP)  # its owner's own wait reaps it
            set_next_pid(child.pid)
            stranger = Bystander(process_group=0)  # pgid == its pid == the child's old pid
            child.send_signal(signal.SIGTERM, group=True)
            right_after = stranger.fate()
        child_outcome = outcome(lambda: child.wait(STEP))
        once_settled = stranger.fate()
        stranger.stop()
    return {
        "reused": stranger.pid == child.pid,
        "popen": popen_code,
        "child": child_outcome,
        "stranger": [right_after, once_settled],
    }


def case_terminate_after_join(mode: Mode) -> dict[str, object]:
    """Race 5: join() reaps a watched Process, our next child takes its pid, terminate()."""
    hold = ReapingThreadHold()
    spawn = multiprocessing.get_context("spawn")  # no fork of a process with threads
    with reaper_for(mode, hold.on_exit) as reaper:
        reader, writer = spawn.Pipe(duplex=False)
        # A builtin target, as a function of a "-c" script cannot be found by a spawned child.
        process = spawn.Process(
            target=exec, args=("import sys; sys.exit(conn.recv())", {"conn": reader})
        )
        process.start()
        reader.close()
        child = reaper.watch(process)
        if mode == "pidfd-lent":
            eventually(lambda: lent_count() == 1, STEP, "the worker's pidfd to be lent")
        with hold.held(reaper):
            writer.send(5)
            writer.close()
            process.join(STEP)  # its owner's own wait reaps it
            set_next_pid(child.pid)
            other = Bystander()  # another child of ours, not watched
            lent = lent_count() if mode == "pidfd-lent" else None
            child.terminate()
            right_after = other.fate()
        child_outcome = outcome(lambda: child.wait(STEP))
        once_settled = other.fate()
        other.stop()
    return {
        "reused": other.pid == child.pid,
        "exitcode": process.exitcode,
        "lent": lent,
        "child": child_outcome,
        "other": [right_after, once_settled],
    }


def case_stolen_status_then_reuse(mode: Mode, reader: Reader) -> dict[str, object]:
    """Race 6: other code steals A's status, our child B takes A's pid and exits; A is read."""
    hold = ReapingThreadHold()
    with reaper_for(mode, hold.on_exit) as reaper:
        a = reaper.spawn(exit_on_eof(3), stdin=subprocess.PIPE)
        assert a.popen is not None and a.popen.stdin is not None
        if mode == "pidfd-lent":
            eventually(lambda: lent_count() == 1, STEP, "A's pidfd to be lent")
        stolen: list[int] = []
        thief = threading.Thread(
            target=lambda: stolen.append(os.waitstatus_to_exitcode(os.waitpid(a.pid, 0)[1])),
            daemon=True,  # should it never return, PID 1 must still exit
        )
        thief.start()
        b: Child | None = None
        a_poll: int | str | None = None
        with hold.held(reaper):
            a.popen.stdin.close()
            thief.join(STEP)
            set_next_pid(a.pid)
            if reader == "poll":
                b = reaper.spawn(exit_on_eof(9), stdin=subprocess.PIPE)
                assert b.popen is not None
                b_popen = b.popen
            else:
                b_popen = subprocess.Popen(exit_on_eof(9), stdin=subprocess.PIPE)
            assert b_popen.stdin is not None
            b_popen.stdin.close()
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            eventually(lambda: os.waitid(os.P_PID, b_popen.pid, flags), STEP, "B to exit")
            # B is a zombie now, left unreaped: A's pid reads as B's exit.
            if reader == "poll":
                a_poll = outcome(a.poll)
        # Released: the reaping thread sweeps (or hears from the relay), then A's own wait.
        a_wait = outcome(lambda: a.wait(STEP))
        b_child = None if b is None else outcome(functools.partial(b.wait, STEP))
        b_popen_code = b_popen.wait(STEP)
        a_popen = a.popen.returncode
        if a_popen is None:
            # A's Popen cannot know that the thief took its status: let it find out now that
            # nothing has A's pid (ECHILD, which CPython reports as 0), not warn at exit.
            a.popen.wait(STEP)
    return {
        "reused": b_popen.pid == a.pid,
        "stolen": stolen,
        "a_poll": a_poll,
        "a_wait": a_wait,
        "a_status": None if a.status is None else a.status.returncode,
        "a_popen": a_popen,
        "b_child": b_child,
        "b_popen": b_popen_code,
    }


# --- the tests ----------------------------------------------------------------------------------
#
# The cases marked "guard" pass on the code these tests were written against (a pidfd that
# stays in this process names exactly one process); they keep the redesign from losing that.

NEEDS_PIDFD = pytest.mark.skipif(not HAS_PIDFD, reason="needs pidfds")
PIDFD = pytest.param("pidfd", marks=NEEDS_PIDFD)
PIDFD_LENT = pytest.param("pidfd-lent", marks=NEEDS_PIDFD)


@pytest.mark.parametrize("mode", [PIDFD, "sigchld", "sigchld-inode", "sigchld-start"])
def test_group_signal_after_the_owners_wait_spares_the_group_given_its_pgid(mode: Mode) -> None:
    """send_signal(group=True) after popen.wait() reaped the child never reaches the new group."""
    seen = call_as_pid1(case_group_signal_after_own_wait, mode)
    assert seen["reused"], f"the stranger did not get the child's pid and pgid: {seen}"
    assert seen["stranger"] == ["alive", "alive"], f"the stranger's group got the signal: {seen}"
    assert seen["popen"] == 7 and seen["child"] == 7, f"the child's own code was not kept: {seen}"


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("pidfd", marks=NEEDS_PIDFD, id="pidfd-guard"),
        PIDFD_LENT,
        "sigchld",
        "sigchld-inode",
        "sigchld-start",
    ],
)
def test_terminate_after_join_spares_our_next_child_given_its_pid(mode: Mode) -> None:
    """terminate() of a Process that join() reaped never reaches our next child given its pid."""
    seen = call_as_pid1(case_terminate_after_join, mode)
    assert seen["reused"], f"the other child did not get the worker's pid: {seen}"
    if mode == "pidfd-lent":
        assert seen["lent"] == 1, f"the worker's pidfd was not away in the relay: {seen}"
    assert seen["other"] == ["alive", "alive"], f"our other child got the signal: {seen}"
    assert seen["exitcode"] == 5 and seen["child"] == 5, f"the worker's code was not kept: {seen}"


@pytest.mark.parametrize(
    ("mode", "reader"),
    [
        ("sigchld", "poll"),
        ("sigchld", "sweep"),
        ("sigchld-inode", "poll"),
        ("sigchld-inode", "sweep"),
        ("sigchld-start", "poll"),
        ("sigchld-start", "sweep"),
        pytest.param("pidfd-lent", "poll", marks=NEEDS_PIDFD),
        pytest.param("pidfd", "poll", marks=NEEDS_PIDFD, id="pidfd-poll-guard"),
    ],
)
def test_a_stolen_status_is_lost_not_borrowed_from_the_next_owner_of_the_pid(
    mode: Mode, reader: Reader
) -> None:
    """A status stolen before its pid was reused is never borrowed from B, who keeps its own.

    Through a pidfd held all along, Linux 6.15+ gives A's own status back (PIDFD_INFO_EXIT);
    elsewhere it reads as lost. So does a lent pidfd: B's spawn must take over the pid before
    the relay (the reaping thread is held) has handed A's pidfd back.
    """
    seen = call_as_pid1(case_stolen_status_then_reuse, mode, reader)
    assert seen["reused"], f"B did not get A's pid: {seen}"
    assert seen["stolen"] == [3], f"the thief did not take A's status: {seen}"
    if mode == "pidfd" and can_recover_stolen_status():
        assert (seen["a_poll"], seen["a_wait"], seen["a_status"]) == (3, 3, 3), seen
        assert seen["a_popen"] == 3, f"A's Popen did not get the recovered code: {seen}"
    else:
        # poll() may still say "running" (not read yet); it may never say B's code.
        assert seen["a_poll"] in {None, "running", "lost"}, f"A's poll() read B's: {seen}"
        assert seen["a_wait"] == "lost" and seen["a_status"] is None, f"A read B's: {seen}"
    if reader == "poll":
        assert seen["b_child"] == 9, f"B's Child lost its own status: {seen}"
    assert seen["b_popen"] == 9, f"B's Popen lost its own status: {seen}"


def case_watch_of_a_reaped_popen_whose_pid_is_reused() -> dict[str, object]:
    """watch() of a Popen its own wait() reaped, while another watched child has its pid."""
    result: dict[str, object] = {}
    with Reaper() as reaper:
        first = subprocess.Popen(exit_on_eof(7), stdin=subprocess.PIPE)
        assert first.stdin is not None
        first.stdin.close()
        result["own_wait"] = first.wait(STEP)
        set_next_pid(first.pid - 1)
        second = reaper.spawn(exit_on_eof(0), stdin=subprocess.PIPE)
        result["reused"] = second.pid == first.pid
        try:
            watched = reaper.watch(first)
            result["watched"] = outcome(lambda: watched.wait(STEP))
        except Exception as err:  # reported: the test asserts on it
            result["watched"] = f"{type(err).__name__}: {err}"
        assert second.popen is not None and second.popen.stdin is not None
        second.popen.stdin.close()
        result["second"] = outcome(lambda: second.wait(STEP))
    return result


def test_watching_a_reaped_popen_records_its_own_code_even_when_its_pid_is_reused() -> None:
    """A Popen already reaped by its own wait() is recorded with its code, whoever has its pid."""
    seen = call_as_pid1(case_watch_of_a_reaped_popen_whose_pid_is_reused)
    assert seen["reused"], f"the case did not set up: {seen}"
    assert seen == {"own_wait": 7, "reused": True, "watched": 7, "second": 0}, seen
