"""The Reaper and Child API: spawning, waiting, signalling, stopping, records and errors."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from zombiereaper import (
    BackendUnavailableError,
    Child,
    ExitStatus,
    NotInstalledError,
    NotOurChildError,
    Reaper,
    ReaperError,
    SpawnedChild,
    WaitTimeout,
    can_use_pidfd,
)

from . import internals
from .helpers import (
    IGNORES_SIGTERM,
    eventually,
    is_zombie_or_gone,
    pid_alive,
    py,
    read_line,
    sh,
    zombie_children,
)
from .internals import watch_of


def test_spawn_records_the_exact_exit(backend: str) -> None:
    """A spawned child's exit code lands in the Child, the registry and status()."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(sh("exit 7"))
        status = child.wait(10)
        assert status.returncode == 7
        assert child.status == status
        assert child.returncode == 7
        assert reaper.registry[child.pid] == status
        assert reaper.status(child.pid) == status
        assert reaper.wait(child.pid) == status
        assert child not in reaper.children


def test_exit_is_recorded_without_anybody_waiting(backend: str) -> None:
    """The reaping thread records an exit by itself: no zombie stays, nobody has to call wait."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(sh("exit 4"))
        status = eventually(lambda: reaper.status(child.pid), what="the exit to be recorded")
        assert status.returncode == 4
        assert not pid_alive(child.pid)
        assert not zombie_children()


def test_killed_child_reports_its_signal(backend: str) -> None:
    """A child killed by a signal reports it as signal, -N returncode and 128+N shell code."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(sh("kill -KILL $$"))
        status = child.wait(10)
        assert status.signal == signal.SIGKILL
        assert status.returncode == -9
        assert status.shell_code == 137
        assert repr(child) == (
            f"<Child pid={child.pid} \"/bin/sh -c 'ulimit -c 0; kill -KILL $$'\" killed by SIGKILL>"
        )


def test_popen_keywords_pass_through(tmp_path: Path, backend: str) -> None:
    """cwd, env, pipes, pass_fds, start_new_session and process_group all reach Popen."""
    read_end, write_end = os.pipe()
    try:
        with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
            code = (
                "import os, sys;"
                f"os.write({write_end}, b'fd ok');"
                "print(os.getcwd(), os.environ['ZR_TEST'], os.getsid(0) == os.getpid(), sep='|')"
            )
            child = reaper.spawn(
                py(code),
                cwd=tmp_path,
                env={**os.environ, "ZR_TEST": "yes"},
                stdout=subprocess.PIPE,
                text=True,
                pass_fds=(write_end,),
                start_new_session=True,
            )
            out, _ = child.popen.communicate(timeout=10)  # type: ignore[union-attr]
            assert out.strip() == f"{tmp_path}|yes|True"
            assert os.read(read_end, 100) == b"fd ok"
            assert child.wait(10).success
            grouped = reaper.spawn(
                py("import os; print(os.getpgid(0))"), process_group=0, stdout=subprocess.PIPE
            )
            assert int(read_line(grouped.popen.stdout)) == grouped.pid  # type: ignore[union-attr]
            grouped.wait(10)
            grouped.popen.stdout.close()  # type: ignore[union-attr]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_missing_program_raises_and_leaves_nothing(backend: str) -> None:
    """A program that does not exist raises FileNotFoundError with nothing registered."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        with pytest.raises(FileNotFoundError):
            reaper.spawn(["/nonexistent/zombiereaper-test-program"])
        assert reaper.children == ()
        assert len(reaper.registry) == 0
        assert not zombie_children()


def test_unexecutable_program_raises_permission_error(tmp_path: Path) -> None:
    """A program without the execute bit raises PermissionError with nothing registered."""
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    with Reaper() as reaper:
        with pytest.raises(PermissionError):
            reaper.spawn([str(script)])
        assert reaper.children == ()
        assert len(reaper.registry) == 0


def test_spawn_on_an_uninstalled_reaper_says_how_to_fix_it() -> None:
    """Spawning before install() raises NotInstalledError naming the fix."""
    reaper = Reaper()
    with pytest.raises(NotInstalledError, match=r"with Reaper\(\) as reaper"):
        reaper.spawn(sh("exit 0"))
    assert isinstance(NotInstalledError("x"), ReaperError)


def test_install_twice_is_refused_and_uninstall_is_idempotent() -> None:
    """A second install() of the same Reaper raises; uninstall() twice is harmless."""
    reaper = Reaper().install()
    try:
        assert reaper.installed
        with pytest.raises(ReaperError, match="already installed"):
            reaper.install()
    finally:
        reaper.uninstall()
    reaper.uninstall()
    assert not reaper.installed


def test_wait_for_a_pid_we_do_not_own_raises() -> None:
    """wait(pid) for a pid that this Reaper did not spawn raises NotOurChildError."""
    other = subprocess.Popen(sh("exit 0"))
    try:
        with Reaper() as reaper:
            with pytest.raises(NotOurChildError, match=f"pid {other.pid} is not a child") as info:
                reaper.wait(other.pid)
            assert info.value.pid == other.pid
            assert isinstance(info.value, ChildProcessError)
    finally:
        assert other.wait(10) == 0


def test_wait_timeout_raises_a_timeout_error(backend: str) -> None:
    """A wait that runs out raises WaitTimeout, a TimeoutError, and the child keeps running."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(sh("exec sleep 30"))
        with pytest.raises(TimeoutError) as info:
            child.wait(0.05)
        assert isinstance(info.value, WaitTimeout)
        assert info.value.pid == child.pid
        assert info.value.timeout == 0.05
        with pytest.raises(WaitTimeout):
            reaper.wait(child.pid, timeout=0.01)
        assert child.running
        assert child.poll() is None
        child.kill()
        assert child.wait(10).signal == signal.SIGKILL


def test_stop_escalates_to_sigkill_for_a_child_that_ignores_sigterm(backend: str) -> None:
    """stop() sends SIGTERM, then SIGKILL after the timeout, warns, and reaps."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(
            IGNORES_SIGTERM,
            stdout=subprocess.PIPE,
        )
        assert read_line(child.popen.stdout) == "ready\n"  # type: ignore[union-attr]
        with pytest.warns(RuntimeWarning, match="SIGKILL"):
            status = child.stop(timeout=0.2)
        assert status.signal == signal.SIGKILL
        child.popen.stdout.close()  # type: ignore[union-attr]


def test_stop_returns_the_status_of_a_child_that_obeys_sigterm(backend: str) -> None:
    """stop() on a child that exits on SIGTERM returns its status without a warning."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(sh("exec sleep 30"))
        assert child.stop(timeout=10).signal == signal.SIGTERM
        assert child.stop().signal == signal.SIGTERM


def test_leaving_the_with_block_stops_every_child(backend: str) -> None:
    """Nothing spawned outlives the with block, as a process or a zombie; stubborn ones get KILL."""
    with pytest.warns(RuntimeWarning, match=r"pid \d+ still ran .* SIGKILL"):
        with Reaper(backend=backend, stop_timeout=0.2) as reaper:  # type: ignore[arg-type]
            sleepers = [reaper.spawn(sh("exec sleep 30")) for _ in range(5)]
            stubborn = reaper.spawn(
                IGNORES_SIGTERM,
                stdout=subprocess.PIPE,
            )
            assert read_line(stubborn.popen.stdout) == "ready\n"  # type: ignore[union-attr]
            stubborn.popen.stdout.close()  # type: ignore[union-attr]
    for child in sleepers:
        assert child.status is not None and child.status.signal == signal.SIGTERM
    assert stubborn.status is not None and stubborn.status.signal == signal.SIGKILL
    assert reaper.children == ()
    assert not zombie_children()


def test_child_context_manager_stops_it(backend: str) -> None:
    """`with reaper.spawn(...) as child:` stops the child at the end of the block."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        with reaper.spawn(sh("exec sleep 30")) as child:
            assert isinstance(child, Child)
            assert child.running
        assert child.status is not None
        assert child.status.signal == signal.SIGTERM


def test_signalling_a_reaped_child_does_nothing(backend: str) -> None:
    """After a child is reaped, send_signal/terminate/kill are no-ops, never reaching its pid."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(sh("exit 0"))
        child.wait(10)
        # A stranger now holds the same pid in spirit: if the pid were signalled, os.kill on a
        # pid that no longer exists would raise; the handle must not even try.
        for send in (child.terminate, child.kill, lambda: child.send_signal(signal.SIGUSR1)):
            send()
        assert child.status is not None and child.status.success


def test_signals_reach_a_running_child(backend: str) -> None:
    """send_signal delivers the signal to the child that is still running."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(
            py(
                "import signal, sys;"
                "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(42));"
                "print('ready', flush=True); signal.pause()"
            ),
            stdout=subprocess.PIPE,
        )
        assert read_line(child.popen.stdout) == "ready\n"  # type: ignore[union-attr]
        child.send_signal(signal.SIGUSR1)
        assert child.wait(10).returncode == 42
        child.popen.stdout.close()  # type: ignore[union-attr]


def test_popen_wait_by_the_owner_keeps_the_real_code(backend: str) -> None:
    """An application calling popen.wait() itself gets the real code, and so does the Child."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        children = [reaper.spawn(sh(f"exit {code}")) for code in range(1, 40)]
        for code, child in enumerate(children, start=1):
            assert child.popen.wait(10) == code  # type: ignore[union-attr]
        for code, child in enumerate(children, start=1):
            assert child.wait(10).returncode == code


def test_owner_waiting_first_still_gives_the_child_its_status(backend: str) -> None:
    """When popen.wait() reaps before the engine notices, Child and registry still get the code."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(py("import sys; sys.stdin.read(); sys.exit(9)"), stdin=subprocess.PIPE)
        popen = child.popen
        assert popen is not None
        waiter_result: list[int] = []
        waiter = threading.Thread(target=lambda: waiter_result.append(popen.wait()))
        waiter.start()
        popen.stdin.close()  # type: ignore[union-attr]
        waiter.join(10)
        assert waiter_result == [9]
        assert child.wait(10).returncode == 9
        assert reaper.registry[child.pid].returncode == 9


def test_reap_sweeps_synchronously(backend: str) -> None:
    """reap() records, right away, every owned child that has exited, and returns them."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(sh("exit 5"))
        eventually(lambda: is_zombie_or_gone(child.pid), what="the child to exit")
        swept = reaper.reap()
        # The reaping thread may have been quicker; either way the status is recorded once.
        assert [s.returncode for s in swept] in ([5], [])
        assert reaper.status(child.pid) == ExitStatus.from_returncode(child.pid, 5)
        assert reaper.reap() == []


def test_children_lists_only_live_owned_children(backend: str) -> None:
    """children holds the live children of this Reaper only."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        sleeper = reaper.spawn(sh("exec sleep 30"))
        quick = reaper.spawn(sh("exit 0"))
        quick.wait(10)
        assert reaper.children == (sleeper,)
        sleeper.kill()
        sleeper.wait(10)
        assert reaper.children == ()


def test_history_bounds_the_registry(backend: str) -> None:
    """The registry keeps only the `history` latest exits."""
    with Reaper(backend=backend, history=3) as reaper:  # type: ignore[arg-type]
        children = [reaper.spawn(sh(f"exit {n}")) for n in range(6)]
        for child in children:
            child.wait(10)
        assert len(reaper.registry) == 3
        kept = {child.pid for child in children[3:]}
        assert set(reaper.registry) <= {child.pid for child in children}
        assert len(set(reaper.registry) & kept) >= 1
        with pytest.raises(NotOurChildError, match="history=3"):
            for child in children:
                reaper.wait(child.pid)


def test_on_exit_is_called_once_per_child_on_the_reaping_thread(backend: str) -> None:
    """on_exit hears each exit exactly once, from the reaping thread, not the caller's."""
    seen: list[tuple[ExitStatus, str]] = []
    all_seen = threading.Event()

    def on_exit(status: ExitStatus) -> None:
        seen.append((status, threading.current_thread().name))
        if len(seen) == 20:
            all_seen.set()

    with Reaper(backend=backend, on_exit=on_exit) as reaper:  # type: ignore[arg-type]
        children = [reaper.spawn(sh(f"exit {n}")) for n in range(20)]
        for child in children:
            child.wait(10)
        reaper.reap()
        assert all_seen.wait(10)
    assert sorted(s.returncode for s, _ in seen) == list(range(20))
    assert {thread for _, thread in seen} == {"zombiereaper"}


def test_on_exit_errors_are_logged_and_reaping_goes_on(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception in on_exit is logged on 'zombiereaper' and later children are still reaped."""
    calls: list[int] = []
    second = threading.Event()

    def on_exit(status: ExitStatus) -> None:
        calls.append(status.pid)
        if len(calls) == 1:
            raise RuntimeError("boom in on_exit")
        second.set()

    caplog.set_level(logging.ERROR, logger="zombiereaper")
    with Reaper(backend=backend, on_exit=on_exit) as reaper:  # type: ignore[arg-type]
        reaper.spawn(sh("exit 1")).wait(10)
        eventually(lambda: calls, what="the first on_exit call")
        reaper.spawn(sh("exit 2")).wait(10)
        assert second.wait(10)
    assert len(calls) == 2
    assert any("boom in on_exit" in (r.exc_text or "") for r in caplog.records)
    assert all(r.name == "zombiereaper" for r in caplog.records)


def test_wait_inside_on_exit_is_refused(backend: str) -> None:
    """Waiting on the reaping thread (inside on_exit) raises instead of deadlocking."""
    errors: list[BaseException] = []
    heard = threading.Event()
    box: list[Child] = []

    def on_exit(status: ExitStatus) -> None:
        try:
            box[0].wait()
        except ReaperError as err:
            errors.append(err)
        heard.set()

    with Reaper(backend=backend, on_exit=on_exit) as reaper:  # type: ignore[arg-type]
        box.append(reaper.spawn(sh("exec sleep 30")))
        reaper.spawn(sh("exit 0")).wait(10)
        assert heard.wait(10)
        box[0].kill()
        box[0].wait(10)
    assert errors and "reaping thread" in str(errors[0])


def test_two_reapers_each_see_only_their_own_children(backend: str) -> None:
    """Two Reapers installed at once share one thread and keep separate children and records."""
    with Reaper(backend=backend) as first, Reaper(backend="sigchld") as second:  # type: ignore[arg-type]
        a = first.spawn(sh("exit 1"))
        b = second.spawn(sh("exit 2"))
        assert a.wait(10).returncode == 1
        assert b.wait(10).returncode == 2
        assert a.pid in first.registry and a.pid not in second.registry
        assert b.pid in second.registry and b.pid not in first.registry
        with pytest.raises(NotOurChildError):
            first.wait(b.pid)
        threads = [t for t in threading.enumerate() if t.name == "zombiereaper"]
        assert len(threads) == 1
    assert not [t for t in threading.enumerate() if t.name == "zombiereaper"]


def test_reaping_uses_one_thread_whatever_the_number_of_children(backend: str) -> None:
    """Fifty live children do not start fifty threads."""
    before = threading.active_count()
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        children = [reaper.spawn(sh("exec sleep 30")) for _ in range(50)]
        assert threading.active_count() == before + 1
        for child in children:
            child.kill()
        for child in children:
            child.wait(10)


def test_install_from_another_thread_works_without_a_handler(backend: str) -> None:
    """A Reaper installed from a non-main thread reaps, and leaves the SIGCHLD handler alone."""
    handler_before = signal.getsignal(signal.SIGCHLD)
    results: list[object] = []

    def worker() -> None:
        try:
            with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
                results.append(signal.getsignal(signal.SIGCHLD))
                results.append(reaper.spawn(sh("exit 6")).wait(10).returncode)
        except BaseException as err:  # pragma: no cover - reported below
            results.append(err)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(20)
    assert results == [handler_before, 6]


def test_bad_arguments_are_refused_with_clear_errors() -> None:
    """Out-of-range or unknown arguments raise ValueError naming the argument."""
    with pytest.raises(ValueError, match="history"):
        Reaper(history=-1)
    with pytest.raises(ValueError, match="history"):
        Reaper(history=True)
    with pytest.raises(ValueError, match="stop_timeout"):
        Reaper(stop_timeout=-1)
    with pytest.raises(ValueError, match="stop_timeout"):
        Reaper(stop_timeout=float("nan"))
    with pytest.raises(ValueError, match="backend"):
        Reaper(backend="kqueue")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scope"):
        Reaper(scope="everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_exit"):
        Reaper(on_exit=42)  # type: ignore[arg-type]


def test_forcing_pidfd_where_it_is_missing_says_what_to_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without pidfd support, backend='pidfd' raises naming the fix and None picks sigchld."""
    from zombiereaper import _process

    monkeypatch.setattr(_process, "can_use_pidfd", lambda: False)
    assert not can_use_pidfd()
    with pytest.raises(BackendUnavailableError, match="backend='sigchld'"):
        Reaper(backend="pidfd")
    assert Reaper().backend == "sigchld"


def test_reprs_tell_the_state(backend: str) -> None:
    """Reaper and Child reprs say what state they are in."""
    reaper = Reaper(backend=backend)  # type: ignore[arg-type]
    assert "not installed" in repr(reaper)
    with reaper:
        child = reaper.spawn(sh("exit 3"))
        assert "installed" in repr(reaper)
        child.wait(10)
        assert repr(child) == (
            f"<Child pid={child.pid} \"/bin/sh -c 'ulimit -c 0; exit 3'\" exited with code 3>"
        )


def test_no_python_runs_in_the_child_between_fork_and_exec() -> None:
    """spawn() forks through Popen's C code: 3.12's fork-in-threaded-process warning never fires."""
    with Reaper() as reaper:
        # filterwarnings=error turns any DeprecationWarning about fork() into a failure here.
        assert reaper.spawn([sys.executable, "-c", "pass"]).wait(10).success


def test_no_signal_call_is_made_for_a_reaped_child(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once reaped, a Child makes no kill() or pidfd_send_signal() call: its pid may be reused."""
    calls: list[tuple[int, int]] = []
    real_kill, real_pidfd_send = os.kill, signal.pidfd_send_signal

    def spy_kill(pid: int, sig: int) -> None:
        calls.append((pid, sig))
        real_kill(pid, sig)

    def spy_pidfd_send(fd: int, sig: int, *args: object) -> None:
        calls.append((fd, sig))
        real_pidfd_send(fd, sig)

    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(sh("exit 0"))
        child.wait(10)
        monkeypatch.setattr(os, "kill", spy_kill)
        monkeypatch.setattr(signal, "pidfd_send_signal", spy_pidfd_send)
        child.terminate()
        child.kill()
        child.send_signal(signal.SIGUSR1)
        assert calls == []
        live = reaper.spawn(sh("exec sleep 30"))
        live.kill()
        assert len(calls) == 1
        live.wait(10)


def test_an_infinite_stop_timeout_waits_as_long_as_it_takes(backend: str) -> None:
    """stop_timeout=math.inf means no SIGKILL: the block waits for the child to obey SIGTERM."""
    import math

    with Reaper(backend=backend, stop_timeout=math.inf) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(sh("exec sleep 30"))
    assert child.status is not None
    assert child.status.signal == signal.SIGTERM
    assert child.stop(timeout=math.inf).signal == signal.SIGTERM


def test_the_sigkill_warning_points_at_the_callers_code(backend: str) -> None:
    """The RuntimeWarning about SIGKILL names the user's file, not zombiereaper's."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(
            IGNORES_SIGTERM,
            stdout=subprocess.PIPE,
        )
        assert read_line(child.popen.stdout) == "ready\n"  # type: ignore[union-attr]
        with pytest.warns(RuntimeWarning, match="SIGKILL") as record:
            child.stop(timeout=0.1)
        assert record[0].filename == __file__
        child.popen.stdout.close()  # type: ignore[union-attr]


def test_a_status_taken_by_other_code_is_reported_as_lost(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stranger's waitpid taking the status makes wait() raise StatusLostError, not say 0.

    As on a kernel before 6.15, which keeps no status on a pidfd (tests/test_recovery.py
    covers those that do).
    """
    from zombiereaper import StatusLostError

    internals.force_no_recovery(monkeypatch)
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(py("import sys; sys.stdin.read()"), stdin=subprocess.PIPE)
        # Holding the watch's lock keeps the reaping thread out while the stranger reaps.
        with watch_of(child).lock:
            child.popen.stdin.close()  # type: ignore[union-attr]
            pid, _ = os.waitpid(child.pid, 0)  # the stranger: a bare waitpid on our child
            assert pid == child.pid
        with pytest.raises(StatusLostError, match=f"pid {child.pid} was reaped by other code"):
            child.wait(10)
        with pytest.raises(StatusLostError):
            reaper.wait(child.pid)
        assert reaper.status(child.pid) is None
        assert repr(child).startswith(f"<Child pid={child.pid} ")
        assert repr(child).endswith(" status lost>")
        child.popen.returncode = 0  # keep Popen's own cleanup from waiting for it again


@pytest.mark.parametrize("via", ["stop", "uninstall"])
def test_warnings_as_errors_still_leave_no_child_running(backend: str, via: str) -> None:
    """With the SIGKILL warning turned into an error, the child is still killed and reaped."""
    import warnings

    reaper = Reaper(backend=backend, stop_timeout=0.1).install()  # type: ignore[arg-type]
    child = reaper.spawn(
        IGNORES_SIGTERM,
        stdout=subprocess.PIPE,
    )
    try:
        assert read_line(child.popen.stdout) == "ready\n"  # type: ignore[union-attr]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(RuntimeWarning, match="SIGKILL"):
                child.stop(timeout=0.1) if via == "stop" else reaper.uninstall()
        assert child.status is not None
        assert child.status.signal == signal.SIGKILL
    finally:
        child.popen.stdout.close()  # type: ignore[union-attr]
        reaper.uninstall()


def test_a_reaped_child_is_not_kept_alive_by_the_reaper(backend: str) -> None:
    """Once reaped and dropped by the caller, a Child and its Popen are freed (no leak)."""
    import gc
    import weakref

    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(sh("exit 0"))
        child.wait(10)
        refs = [weakref.ref(child), weakref.ref(child.popen)]  # type: ignore[arg-type]
        del child

        def freed() -> bool:
            gc.collect()
            return [ref() for ref in refs] == [None, None]

        # wait() returns once the status is recorded; the reaping thread lets go of the
        # child's record a moment later, after its callbacks (on_exit) have run.
        eventually(freed, 10, "the Child and its Popen to be freed")
        assert len(reaper.registry) == 1


def test_spawn_returns_a_spawned_child_whose_popen_is_always_there(backend: str) -> None:
    """spawn() gives a SpawnedChild with its Popen; watch() of another's Popen a plain Child."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(sh("exit 0"))
        assert isinstance(child, SpawnedChild)
        assert isinstance(child.popen, subprocess.Popen)
        assert child.popen.pid == child.pid
        assert reaper.watch(child.popen) is child
        theirs = subprocess.Popen(sh("exit 0"))
        watched = reaper.watch(theirs)
        assert type(watched) is Child
        assert watched.popen is theirs
        child.wait(10)
        watched.wait(10)


def test_leaving_a_spawned_child_s_block_closes_its_pipes(backend: str) -> None:
    """`with child:` stops a spawned child, then closes its pipes; a watched Popen keeps its own."""
    import gc
    import warnings

    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with reaper.spawn(
                py("import sys; print('ready', flush=True); sys.stdin.read()"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ) as child:
                assert read_line(child.popen.stdout) == "ready\n"
                child.popen.stdin.write(b"unflushed, and never read")  # type: ignore[union-attr]
                pipes = [child.popen.stdin, child.popen.stdout, child.popen.stderr]
            assert child.status is not None and child.status.signal == signal.SIGTERM
            assert all(pipe is not None and pipe.closed for pipe in pipes)
            with reaper.spawn(sh("exit 0"), stdout=subprocess.PIPE) as exited:
                exited.wait(10)
            assert exited.popen.stdout is not None and exited.popen.stdout.closed
            del child, exited, pipes
            gc.collect()
        assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
        # The pipes of a Popen that other code started and handed over stay that code's.
        popen = subprocess.Popen(sh("echo left; exec sleep 60"), stdout=subprocess.PIPE)
        with reaper.watch(popen):
            assert read_line(popen.stdout) == "left\n"
        assert popen.returncode == -signal.SIGTERM
        assert popen.stdout is not None and not popen.stdout.closed
        popen.stdout.close()


def test_leaving_the_block_drops_input_for_the_gone_child_instead_of_dying_of_sigpipe() -> None:
    """Input still buffered when the block ends is dropped: no write to a dead child's pipe."""
    script = """
import signal, subprocess, sys
from zombiereaper import Reaper
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as command-line tools do: EPIPE would kill
with Reaper() as reaper:
    with reaper.spawn(["sh", "-c", "exec sleep 60"], stdin=subprocess.PIPE, text=True) as child:
        child.popen.stdin.write("buffered, for a child that will not read it")
    print(child.popen.stdin.closed, child.status.signal.name)
"""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "True SIGTERM\n", "")


def test_wait_and_status_check_their_arguments(backend: str) -> None:
    """A pid that is not an int is a TypeError, one <= 0 a ValueError, each naming pid."""
    import asyncio

    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        for bad, error in [("abc", TypeError), (1.0, TypeError), (True, TypeError),
                           (None, TypeError), (0, ValueError), (-1, ValueError)]:  # fmt: skip
            for call in (
                lambda pid: reaper.wait(pid),
                lambda pid: reaper.status(pid),
                lambda pid: asyncio.run(reaper.wait_async(pid)),
            ):
                with pytest.raises(error, match=r"\bpid must be"):
                    call(bad)
        child = reaper.spawn(sh("exec sleep 60"))
        with pytest.raises(TypeError, match=r"\btimeout must be"):
            reaper.wait(child.pid, timeout="1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"\btimeout must be"):
            child.wait(timeout="1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"\btimeout must be"):
            child.wait(timeout=float("nan"))
        assert child.running
        child.kill()
        assert reaper.wait(child.pid, timeout=10).signal == signal.SIGKILL


def test_spawn_of_an_empty_command_raises_value_error_like_spawn_detached() -> None:
    """spawn([]) raises the ValueError that spawn_detached([]) raises, not Popen's IndexError."""
    with Reaper() as reaper:
        with pytest.raises(ValueError, match="args is empty") as spawned:
            reaper.spawn([])
        with pytest.raises(ValueError, match="args is empty") as detached:
            reaper.spawn_detached([])
        assert str(spawned.value) == str(detached.value)
        assert reaper.children == ()


def test_a_timer_beyond_what_epoll_can_wait_does_not_stop_the_reaping_thread() -> None:
    """A timer days away (past epoll's 24.8-day limit) or never due leaves reaping working."""
    import math

    from .internals import call_later

    with Reaper() as reaper:
        call_later(math.inf, lambda: None)
        call_later(40 * 86_400.0, lambda: None)
        assert reaper.spawn(sh("exit 4")).wait(10).returncode == 4
