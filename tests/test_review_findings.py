"""Review of the rebuilt reaping core: each test reproduces one finding and fails until it is fixed.

Cases that can hang, or need pid reuse, run as PID 1 of a PID namespace of their own
(tests/pidns.py): a hang there ends with the namespace at the run's timeout, and nothing is left
behind in this process. The ``case_*`` functions run inside and return what they saw.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest

from zombiereaper import ExitStatus, Reaper
from zombiereaper._orphans import AllScope, Ownership

from . import internals
from .helpers import HAS_PIDFD, eventually, exit_code_worker, py, read_line
from .pidns import call_as_pid1, set_next_pid
from .test_pid_reuse import STEP, Bystander, ReapingThreadHold, outcome

NEEDS_PIDFD = pytest.mark.skipif(not HAS_PIDFD, reason="needs pidfds")


def _echoes(bystander: Bystander) -> bool:
    """Whether ``bystander`` still echoes a line (without reaping it when it does not)."""
    stdin, stdout = bystander.popen.stdin, bystander.popen.stdout
    assert stdin is not None and stdout is not None
    try:
        stdin.write("ping\n")
        stdin.flush()
        return read_line(stdout, STEP) == "ping\n"
    except (BrokenPipeError, AssertionError):
        return False


def _is_zombie(pid: int) -> bool:
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    return os.waitid(os.P_PID, pid, flags) is not None


# --- 1. multiprocessing: join() then close() -----------------------------------------------------


def test_join_then_close_keeps_the_workers_exit_code() -> None:
    """A Process joined and closed by its owner before the reaping thread read it keeps its code."""
    hold = ReapingThreadHold()
    with Reaper(on_exit=hold.on_exit) as reaper:
        process, writer = exit_code_worker("spawn")
        child = reaper.watch(process)
        with hold.held(reaper):
            writer.send(3)
            writer.close()
            process.join(STEP)
            owner_code = process.exitcode
            process.close()  # what the docs recommend once a Process is done with
        seen = outcome(lambda: child.wait(STEP))
    assert owner_code == 3
    assert seen == 3, f"the owner's join() had code 3, the Child says {seen!r}"


def test_closed_workers_do_not_stall_the_reaping_of_other_children() -> None:
    """Workers joined and closed by their owner cost the reaping thread no second each."""
    hold = ReapingThreadHold()
    with Reaper(on_exit=hold.on_exit) as reaper:
        workers = [exit_code_worker("spawn") for _ in range(3)]
        children = [reaper.watch(process) for process, _ in workers]
        with hold.held(reaper):
            for process, writer in workers:
                writer.send(0)
                writer.close()
                process.join(STEP)
                process.close()
            other = reaper.spawn(["/bin/true"])
        seen = outcome(lambda: other.wait(1.0))
        for child in children:
            outcome(lambda child=child: child.wait(STEP))  # type: ignore[misc]
    assert seen == 0, f"an unrelated child's wait(1.0) says {seen!r}: the reaping thread stalled"


def case_forkserver_join_then_close() -> dict[str, object]:
    """A forkserver worker joined and closed by its owner before the reaping thread read it."""
    hold = ReapingThreadHold()
    result: dict[str, object] = {}
    try:
        with Reaper(on_exit=hold.on_exit, stop_timeout=1.0) as reaper:
            process, writer = exit_code_worker("forkserver")
            child = reaper.watch(process)
            with hold.held(reaper):
                writer.send(3)
                writer.close()
                process.join(STEP)
                result["owner"] = process.exitcode
                process.close()
            result["child"] = outcome(lambda: child.wait(2.0))
    except Exception as err:  # reported: the test asserts on it
        result["uninstall"] = f"{type(err).__name__}: {err}"
    return result


def test_forkserver_join_then_close_settles_the_child() -> None:
    """A forkserver worker joined and closed by its owner is recorded; uninstall() then succeeds."""
    seen = call_as_pid1(case_forkserver_join_then_close, timeout=30.0)
    assert seen.get("owner") == 3, seen
    assert "uninstall" not in seen, f"uninstall() raised: {seen}"
    assert seen.get("child") == 3, f"the Child never settled, or lost the code: {seen}"


def case_forkserver_sentinel_number_reused() -> dict[str, object]:
    """terminate() of a closed forkserver worker whose pid and sentinel number were both reused."""
    hold = ReapingThreadHold()
    result: dict[str, object] = {}
    stranger: Bystander | None = None
    spare: list[int] = []
    try:
        with Reaper(on_exit=hold.on_exit, stop_timeout=1.0) as reaper:
            process, writer = exit_code_worker("forkserver")
            child = reaper.watch(process)
            sentinel = process.sentinel
            with hold.held(reaper):
                writer.send(0)
                writer.close()
                process.join(STEP)
                process.close()  # closes the sentinel: its number is free again
                # The application opens a pipe, as any program does; it may take that number.
                spare.extend(os.pipe())
                if sentinel not in spare:
                    try:
                        os.fstat(sentinel)
                    except OSError:
                        os.dup2(spare[0], sentinel)
                        spare.append(sentinel)
                set_next_pid(child.pid)
                stranger = Bystander()  # our next child: it gets the worker's pid
                result["reused"] = stranger.pid == child.pid
                child.terminate()
                result["stranger"] = "alive" if _echoes(stranger) else "killed"
            for fd in spare:
                os.close(fd)  # else uninstall() would wait for the stuck Child forever
            spare.clear()
    except Exception as err:  # reported: the test asserts on it
        result["uninstall"] = f"{type(err).__name__}: {err}"
    finally:
        for fd in spare:
            os.close(fd)
        if stranger is not None:
            stranger.stop()
    return result


def test_terminate_of_a_closed_forkserver_worker_never_reaches_a_stranger() -> None:
    """terminate() of a forkserver worker its owner closed never signals the pid's next owner."""
    seen = call_as_pid1(case_forkserver_sentinel_number_reused, timeout=30.0)
    assert seen.get("reused"), f"the stranger did not get the worker's pid: {seen}"
    assert seen.get("stranger") == "alive", f"the stranger got the worker's SIGTERM: {seen}"


# --- 2. forkserver: two readers of one sentinel --------------------------------------------------


def test_forkserver_status_is_never_made_up_when_the_owner_joins_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A forkserver worker's code stays exact for owner and Child when both read the sentinel."""
    from multiprocessing import forkserver

    real_read_signed = forkserver.read_signed
    both_reading = threading.Barrier(2)

    def read_signed(fd: int) -> int:
        # Let the two readers of the sentinel (the owner's join() and the reaping thread, if
        # it reads it) overlap for certain, as they do now and then when join() comes ~20 ms
        # after the exit (2 runs in 200 saw 255 without this).
        try:
            both_reading.wait(2.0)
        except threading.BrokenBarrierError:
            pass  # only one reader: nothing to overlap
        return real_read_signed(fd)

    with Reaper() as reaper:
        process, writer = exit_code_worker("forkserver")
        child = reaper.watch(process)
        # Patched once started: start() reads the worker's pid through it too.
        monkeypatch.setattr(forkserver, "read_signed", read_signed)
        writer.send(3)
        writer.close()
        process.join(10.0)
        owner = process.exitcode
        seen = outcome(lambda: child.wait(STEP))
    assert (owner, seen) == (3, 3), f"owner's exitcode {owner}, Child {seen}: 255 is made up"


class _Counter(logging.Handler):
    """Counts the records it gets (a spinning loop logs hundreds of thousands)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def test_a_forkserver_worker_whose_sentinel_is_past_1024_is_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A forkserver worker in a process with 1024+ descriptors is recorded, without a busy loop."""
    first = multiprocessing.get_context("forkserver").Process(target=int)
    first.start()  # the fork server starts now, with few descriptors
    first.join(STEP)
    first.close()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2048:
        pytest.skip("RLIMIT_NOFILE's hard limit is below 2048")
    counter = _Counter()
    logger = logging.getLogger("zombiereaper")
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(counter)
    resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    # A server with many connections: new descriptors get numbers past select()'s FD_SETSIZE.
    filler = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    uninstall_error = None
    try:
        reaper = Reaper().install()
        try:
            process, writer = exit_code_worker("forkserver")
            high = process.sentinel
            child = reaper.watch(process)
            writer.send(3)
            writer.close()
            process.join(STEP)
            seen = outcome(lambda: child.wait(3.0))
        finally:
            try:
                reaper.uninstall()
            except ValueError as err:
                uninstall_error = err
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        logger.removeHandler(counter)
    assert high >= 1024, f"the sentinel got descriptor {high}, not past 1024"
    assert seen == 3, (
        f"the Child says {seen!r}; the reaping thread logged {counter.count} failures meanwhile "
        f"(select() on descriptor {high}), and uninstall() raised {uninstall_error!r}"
    )
    assert uninstall_error is None and counter.count == 0


# --- 2b. all scope: watch() of a child the sweep already saw exit ------------------------------


def test_on_exit_runs_once_for_a_child_watched_after_the_all_scope_saw_it_exit() -> None:
    """A child the all-scope sweep recorded, then watch()ed in its grace, calls on_exit once."""
    statuses: list[ExitStatus] = []
    seen_by_sweep = threading.Event()

    def on_exit(status: ExitStatus) -> None:
        statuses.append(status)
        seen_by_sweep.set()

    with Reaper(scope="all", grace=30.0, on_exit=on_exit) as reaper:
        popen = subprocess.Popen(["/bin/sh", "-c", "exit 5"])
        assert seen_by_sweep.wait(STEP), "the all-scope sweep never recorded the exit"
        child = reaper.watch(popen)  # within its grace: its owner hands it over
        settled = threading.Event()
        internals.when_settled(child, settled.set)
        assert child.wait(STEP).returncode == 5
        assert settled.wait(STEP)
    assert [s.returncode for s in statuses] == [5], f"on_exit ran for {statuses}"


class _Records:
    """An OrphanSink that keeps what it is given."""

    def __init__(self) -> None:
        self.recorded: list[ExitStatus] = []

    def record(self, status: ExitStatus) -> None:
        self.recorded.append(status)

    def announce(self, status: ExitStatus) -> None:
        pass


@pytest.mark.parametrize("reaped_first", [False, True], ids=["zombie", "reaped"])
def test_the_sweeps_record_of_a_child_stays_while_a_reaper_owns_it(reaped_first: bool) -> None:
    """A sweep between watch() and the child's settling keeps the record that take_over() needs.

    The all-scope sweep forgot the record of every zombie it no longer listed; a child watch()ed
    within its grace is owned, so no longer listed (or already reaped), and a sweep in between
    made its settling run on_exit a second time (a CI failure on 3.13).
    """
    popen = subprocess.Popen(["/bin/sh", "-c", "exit 5"])
    try:
        eventually(lambda: _is_zombie(popen.pid), STEP, "the child to exit")
        nobody = Ownership(owned=frozenset(), our_fds=frozenset(), spawning_since=None)
        owned = Ownership(owned=frozenset({popen.pid}), our_fds=frozenset(), spawning_since=None)
        scope = AllScope(_Records(), grace=30.0)
        recorded, _ = scope.sweep(time.monotonic(), lambda: nobody)
        assert [s.returncode for s in recorded] == [5]
        if reaped_first:
            assert popen.wait(STEP) == 5  # the Reaper that watches it reaped it
        scope.sweep(time.monotonic(), lambda: owned)  # the pid is a Reaper's now
        assert scope.take_over(recorded[0]), "the sweep forgot that it recorded this exit"
        assert not scope.take_over(recorded[0]), "a record is taken over once"
    finally:
        popen.wait(STEP)


# --- 2c. all scope: starved by back-to-back spawns -----------------------------------------------


def test_orphans_are_reaped_while_spawns_follow_one_another() -> None:
    """An orphan zombie is recorded and reaped even while other threads spawn back to back."""
    stop = threading.Event()
    spawned = 0
    with Reaper(scope="all", grace=0.1, subreaper=True) as reaper:

        def spawn_back_to_back() -> None:
            nonlocal spawned
            while not stop.is_set():
                reaper.spawn(["/bin/true"])
                spawned += 1

        spawners = [threading.Thread(target=spawn_back_to_back) for _ in range(4)]
        for spawner in spawners:
            spawner.start()
        try:
            # The shell's background child is orphaned at once and comes back to us.
            shell = subprocess.Popen(
                ["/bin/sh", "-c", "/bin/sleep 0.2 & echo $!"], stdout=subprocess.PIPE, text=True
            )
            assert shell.stdout is not None
            orphan = int(read_line(shell.stdout, STEP))
            shell.stdout.close()
            assert shell.wait(STEP) == 0
            try:
                eventually(
                    lambda: reaper.status(orphan) is not None, STEP, "the orphan to be recorded"
                )
                recorded_while_spawning = True
            except AssertionError:
                recorded_while_spawning = False
        finally:
            stop.set()
            for spawner in spawners:
                spawner.join()
        # With the spawns over, the sweep gets through (and leaves no zombie behind).
        eventually(
            lambda: reaper.status(orphan) is not None, STEP, "the orphan to be recorded at last"
        )
    assert recorded_while_spawning, (
        f"the orphan stayed an unrecorded zombie for {STEP:g} s while {spawned} spawns ran"
    )


# --- 2d. two engines at once: the old one eats the new one's wakeups ---------------------------


def test_a_reaper_installed_while_the_last_one_uninstalls_loses_no_wakeup() -> None:
    """Installing while the last Reaper uninstalls: the new timer runs, and uninstall() returns."""
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    lost: list[str] = []
    rounds = 0
    try:
        deadline = time.monotonic() + 15.0
        while rounds < 300 and not lost and time.monotonic() < deadline:
            rounds += 1
            first = Reaper().install()
            both = threading.Barrier(2)

            def uninstall_first(first: Reaper = first, both: threading.Barrier = both) -> None:
                both.wait(STEP)
                first.uninstall()

            other = threading.Thread(target=uninstall_first)
            other.start()
            try:
                both.wait(STEP)
                with Reaper():  # usually the same engine; now and then a new one
                    ran = threading.Event()
                    internals.call_later(0.0, ran.set)
                    if not ran.wait(1.0):
                        lost.append(f"round {rounds}: a timer due at once had not run 1 s later")
            finally:
                other.join(2.0)
                if other.is_alive():
                    lost.append(f"round {rounds}: uninstall() still waited for its thread 2 s on")
                while other.is_alive():  # rescue: any byte in the pipe ends the old loop
                    internals.wake_reaping_threads()
                    other.join(0.1)
    finally:
        sys.setswitchinterval(switch_interval)
        # The last uninstall may have run on the other thread, which leaves the (inert)
        # SIGCHLD handler in place: only the main thread restores it, as documented.
        with Reaper():
            pass
    assert not lost, lost


# --- 3. EMFILE at registration: a ref without identity ----------------------------------------


def _fill_descriptors() -> list[int]:
    """Lower RLIMIT_NOFILE to 64 and open descriptors until none is left (the caller restores)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    filler = []
    while True:
        try:
            filler.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as err:
            if err.errno != errno.EMFILE:
                raise
            return filler


def case_emfile_then_reuse() -> dict[str, object]:
    """A child registered while out of descriptors; its status stolen, its pid reused, then used."""
    hold = ReapingThreadHold()
    result: dict[str, object] = {}
    with Reaper(backend="pidfd", on_exit=hold.on_exit) as reaper:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        filler = _fill_descriptors()
        try:
            # posix_spawn (close_fds=False, absolute path) needs no descriptor: only the pidfd
            # and the start time (/proc/PID/stat) cannot be had.
            a = reaper.spawn(["/bin/sleep", "60"], close_fds=False)
        finally:
            for fd in filler:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        result["swept"] = internals.is_swept(a)
        assert a.popen is not None
        with hold.held(reaper):
            os.kill(a.pid, signal.SIGKILL)
            os.waitpid(a.pid, 0)  # a blanket wait in other code takes A's status
            set_next_pid(a.pid)
            stranger = Bystander()
            result["reused"] = stranger.pid == a.pid
            a.terminate()
            result["stranger"] = "alive" if _echoes(stranger) else "killed"
            if result["stranger"] == "killed":
                eventually(lambda: _is_zombie(stranger.pid), STEP, "the stranger to be a zombie")
            result["a_poll"] = outcome(a.poll)
        if stranger.popen.returncode is None and result["stranger"] == "alive":
            stranger.stop()
        result["stranger_popen"] = stranger.popen.wait(STEP)
        result["a_wait"] = outcome(lambda: a.wait(STEP))
        if a.popen.returncode is None:
            a.popen.wait(STEP)  # ECHILD: nothing has A's pid now
    return result


@NEEDS_PIDFD
def test_a_child_registered_out_of_descriptors_keeps_its_identity() -> None:
    """A child registered during EMFILE keeps its identity: no stray signal, no borrowed status."""
    seen = call_as_pid1(case_emfile_then_reuse, timeout=30.0)
    assert seen["swept"] and seen["reused"], f"the case did not set up: {seen}"
    assert seen["stranger"] == "alive", f"A's terminate() killed the process given A's pid: {seen}"
    assert seen["a_poll"] in ("running", "lost"), f"A's poll() read the stranger's status: {seen}"
    assert seen["a_wait"] == "lost", f"A's status was borrowed: {seen}"


# --- 4. uninstall() interrupted while it stops children ---------------------------------------

#: Says "ready", then "term" on each SIGTERM (which it survives), and sleeps a minute.
SURVIVES_SIGTERM = py(
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: print('term', flush=True))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_an_interrupted_stop_leaves_the_reaper_installed_or_the_child_reaped() -> None:
    """A KeyboardInterrupt while uninstall() waits for a child to stop leaves no child unwatched."""
    reaper = Reaper(stop_timeout=30.0).install()
    child = reaper.spawn(SURVIVES_SIGTERM, stdout=subprocess.PIPE)
    popen = child.popen
    assert popen is not None and popen.stdout is not None
    assert read_line(popen.stdout, STEP) == "ready\n"
    main = threading.main_thread().ident
    assert main == threading.get_ident()

    def interrupt_once_stopping() -> None:
        assert popen.stdout is not None
        if read_line(popen.stdout, STEP) == "term\n":  # uninstall() is stopping it
            signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_once_stopping)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            reaper.uninstall()
    finally:
        interrupter.join()
    still_installed = reaper.installed
    child.kill()
    seen = outcome(lambda: child.wait(2.0))
    # Clean up whatever the outcome: reap the child, uninstall.
    if reaper.installed:
        reaper.uninstall()
    if popen.returncode is None:
        popen.wait(STEP)
    popen.stdout.close()
    assert still_installed or seen == -signal.SIGKILL, (
        f"interrupted, uninstall() stopped the engine with the child still running; the "
        f"child's wait() after SIGKILL says {seen!r} (its watch can never settle)"
    )


# --- 5. Popen's lock taken blocking: a signal handler that interrupted popen.wait() -------------


def case_poll_from_handler_during_popen_wait() -> dict[str, object]:
    """child.poll() from a signal handler that interrupted popen.wait() of the same child."""
    result: dict[str, object] = {}
    with Reaper() as reaper:
        child = reaper.spawn(["/bin/sleep", "60"])
        popen = child.popen
        assert popen is not None

        def handler(signum: int, frame: object) -> None:
            child.kill()
            os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # a zombie now
            # popen.poll() here answers None at once: Popen's lock is busy.
            status = child.poll()
            result["poll"] = None if status is None else status.returncode

        signal.signal(signal.SIGUSR1, handler)
        main = threading.get_ident()

        def poke() -> None:
            # CPython's Popen.wait() holds this lock around its blocking waitpid().
            eventually(popen._waitpid_lock.locked, STEP, "popen.wait() to block")
            signal.pthread_kill(main, signal.SIGUSR1)

        poker = threading.Thread(target=poke)
        poker.start()
        result["popen"] = popen.wait()
        poker.join()
    return result


def test_poll_from_a_handler_that_interrupted_popen_wait_does_not_deadlock() -> None:
    """child.poll() in a handler that interrupted popen.wait() returns, like popen.poll()."""
    try:
        seen = call_as_pid1(case_poll_from_handler_during_popen_wait, timeout=15.0)
    except AssertionError as err:
        pytest.fail(f"child.poll() in the handler never returned (deadlock): {str(err)[:400]}")
    assert seen["poll"] in (None, -signal.SIGKILL), seen
    assert seen["popen"] == -signal.SIGKILL, seen
