"""The SIGCHLD handler: it only wakes the thread, chains, restores, and reaping never needs it."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from types import FrameType

import pytest

from zombiereaper import ExitStatus, Reaper, ReaperError, _engine, _linux, _sighandler

from .helpers import HAS_PIDFD, eventually, read_line, sh
from .internals import sweeps


class CountingHandler:
    """A previous SIGCHLD handler that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.calls += 1


@pytest.fixture
def counting_handler() -> object:
    handler = CountingHandler()
    previous = signal.signal(signal.SIGCHLD, handler)
    yield handler
    signal.signal(signal.SIGCHLD, previous)


def test_handler_is_installed_chained_and_restored(counting_handler: CountingHandler) -> None:
    """The first Reaper installs our handler in front of the old one; the last restores it."""
    first = Reaper(backend="sigchld").install()
    assert signal.getsignal(signal.SIGCHLD) is _sighandler._on_sigchld
    second = Reaper(backend="sigchld").install()
    calls_before = counting_handler.calls
    first.spawn(sh("exit 0")).wait(10)
    eventually(lambda: counting_handler.calls > calls_before, what="the old handler to be called")
    first.uninstall()
    assert signal.getsignal(signal.SIGCHLD) is _sighandler._on_sigchld
    second.uninstall()
    assert signal.getsignal(signal.SIGCHLD) is counting_handler


@pytest.mark.skipif(not HAS_PIDFD, reason="needs pidfd")
def test_a_pidfd_reaper_leaves_sigchld_alone(counting_handler: CountingHandler) -> None:
    """A pidfd Reaper needs no signal: the handler that was there gets each SIGCHLD directly.

    Ours would run Python on the main thread at every exit, competing with the reaping thread
    for the GIL just when it reaps. A sigchld Reaper installed beside it does install ours,
    which then stays until the last Reaper is uninstalled.
    """
    with Reaper(backend="pidfd") as reaper:
        assert signal.getsignal(signal.SIGCHLD) is counting_handler
        calls_before = counting_handler.calls
        assert reaper.spawn(sh("exit 6")).wait(10).returncode == 6
        eventually(lambda: counting_handler.calls > calls_before, what="their handler's call")
        with Reaper(backend="sigchld") as swept:
            assert signal.getsignal(signal.SIGCHLD) is _sighandler._on_sigchld
            assert swept.spawn(sh("exit 7")).wait(10).returncode == 7
        assert signal.getsignal(signal.SIGCHLD) is _sighandler._on_sigchld
    assert signal.getsignal(signal.SIGCHLD) is counting_handler


def test_a_handler_installed_over_ours_is_left_in_place() -> None:
    """If other code replaces our handler, uninstall leaves theirs."""
    theirs = CountingHandler()
    original = signal.getsignal(signal.SIGCHLD)
    reaper = Reaper(backend="sigchld").install()
    try:
        signal.signal(signal.SIGCHLD, theirs)
    finally:
        reaper.uninstall()
    try:
        assert signal.getsignal(signal.SIGCHLD) is theirs
    finally:
        signal.signal(signal.SIGCHLD, original)


def test_sig_ign_is_reset_while_installed_and_restored_after(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGCHLD=SIG_IGN (kernel auto-reaping) is replaced on install, logged, and restored after.

    By either backend: a pidfd Reaper, which needs no signal, still cannot leave the kernel
    discarding every status.
    """
    original = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="zombiereaper"),
            Reaper(backend=backend) as reaper,  # type: ignore[arg-type]
        ):
            assert signal.getsignal(signal.SIGCHLD) is _sighandler._on_sigchld
            assert reaper.spawn(sh("exit 9")).wait(10).returncode == 9
            # Other code's children get real codes again too, instead of Popen's 0.
            assert subprocess.run(sh("exit 4"), check=False).returncode == 4
        assert "SIG_IGN" in caplog.text
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGCHLD, original)


@pytest.mark.parametrize("previous", [signal.SIG_DFL, signal.SIG_IGN], ids=["dfl", "ign"])
def test_uninstall_beside_a_storm_of_sigchld_reports_no_ignored_signal(
    previous: signal.Handlers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restoring SIG_DFL/SIG_IGN while other threads take SIGCHLDs leaves no call pending.

    A SIGCHLD taken by another thread just before the restore could run its C handler after
    it (that thread preempted in between), and CPython then reported "Signal 17 ignored due
    to race condition" as an unraisable error at the main thread's next bytecode (seen in CI,
    and within a few hundred install/uninstall rounds here). The kernel's disposition is now
    restored first and Python's table only once the reaping thread is joined.
    """
    caught: list[BaseException | None] = []
    monkeypatch.setattr("sys.unraisablehook", lambda raised: caught.append(raised.exc_value))
    original = signal.signal(signal.SIGCHLD, previous)
    stop = threading.Event()

    def storm() -> None:
        while not stop.is_set():
            pid = os.posix_spawn("/bin/true", ["true"], os.environ)
            with contextlib.suppress(ChildProcessError):  # SIG_IGN: the kernel reaped it
                os.waitpid(pid, 0)

    threads = [threading.Thread(target=storm) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        with _quiet():
            deadline = time.monotonic() + 4
            for _ in range(800):
                Reaper(backend="sigchld").install().uninstall()
                if caught or time.monotonic() > deadline:
                    break
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        signal.signal(signal.SIGCHLD, original)
    assert caught == []


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the SIG_IGN warning that each install() would log."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def test_a_reaper_installed_between_the_two_steps_of_an_uninstall_gets_the_signal_back() -> None:
    """begin_uninstall() gave the kernel SIG_DFL; an install() before finish gives ours back."""
    assert not _sighandler.is_installed()
    _sighandler.install()
    try:
        assert _sighandler.begin_uninstall()
        assert not _kernel_catches_sigchld()
        # Python's table still names ours until finish_uninstall().
        assert signal.getsignal(signal.SIGCHLD) is _sighandler._on_sigchld
        _sighandler.install()
        assert _kernel_catches_sigchld()
        _sighandler.finish_uninstall()  # nothing to do: the handler is ours again
        assert signal.getsignal(signal.SIGCHLD) is _sighandler._on_sigchld
        assert _kernel_catches_sigchld()
    finally:
        _sighandler.uninstall()
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    assert not _kernel_catches_sigchld()


def test_a_thread_sees_sig_ign_between_the_two_steps_of_an_uninstall() -> None:
    """While the kernel has SIG_IGN back but Python's table lags, a thread's install is refused."""
    original = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    errors: list[BaseException] = []
    try:
        with _quiet():
            _sighandler.install()
        assert _sighandler.begin_uninstall()

        def worker() -> None:
            try:
                _sighandler.check_disposition()
            except ReaperError as err:
                errors.append(err)

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(10)
        _sighandler.finish_uninstall()
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGCHLD, original)
    assert len(errors) == 1


def test_threads_handling_finds_a_runnable_thread_with_sigchld_blocked() -> None:
    """What uninstall waits for: a runnable thread with SIGCHLD blocked, as in its handler."""
    started = threading.Event()
    stop = threading.Event()
    native: list[int] = []

    def blocked_and(busy: bool) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        native.append(threading.get_native_id())
        started.set()
        if busy:
            while not stop.is_set():
                pass
        else:
            stop.wait(30)

    for busy in (True, False):
        started.clear()
        stop.clear()
        native.clear()
        thread = threading.Thread(target=blocked_and, args=(busy,))
        thread.start()
        try:
            assert started.wait(10)
            if busy:
                eventually(lambda: native[0] in _linux.threads_handling(signal.SIGCHLD))
            else:
                eventually(lambda: proc_state(native[0]) == "S")
                assert native[0] not in _linux.threads_handling(signal.SIGCHLD)
        finally:
            stop.set()
            thread.join(10)
    # Never the caller itself.
    assert threading.get_native_id() not in _linux.threads_handling(signal.SIGCHLD)


def proc_state(tid: int) -> str:
    """The state letter of one of this process's threads."""
    with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def _kernel_catches_sigchld() -> bool:
    """Whether the kernel has a handler for SIGCHLD in this process (SigCgt)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGCHLD - 1) & 1)
    raise AssertionError("no SigCgt line")


def test_sig_ign_from_a_thread_is_refused_with_the_fix() -> None:
    """Installing from a non-main thread while SIGCHLD is SIG_IGN raises and says what to do."""
    original = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            Reaper().install().uninstall()
        except ReaperError as err:
            errors.append(err)

    try:
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(10)
    finally:
        signal.signal(signal.SIGCHLD, original)
    assert errors and "main thread" in str(errors[0])
    assert _engine.current() is None


#: rt_sigtimedwait's system call number, as /proc/<tid>/syscall shows it.
RT_SIGTIMEDWAIT = {"x86_64": 128, "aarch64": 137}.get(platform.machine())


def _in_syscall(tid: int, number: int) -> bool:
    try:
        with open(f"/proc/self/task/{tid}/syscall", encoding="ascii") as file:
            return file.read().split(" ", 1)[0] == str(number)
    except OSError:
        return False


@pytest.mark.skipif(RT_SIGTIMEDWAIT is None, reason="needs the rt_sigtimedwait syscall number")
def test_exit_is_recorded_while_the_main_thread_sits_in_a_long_c_call(
    backend: str, counting_handler: CountingHandler
) -> None:
    """With the main thread blocked in sigtimedwait (no Python handler runs), exits are recorded.

    The child exits only once the main thread sits in the C call: a SIGCHLD that another
    thread (pytest-xdist's, say) takes would otherwise run the Python handler before it.
    """
    assert RT_SIGTIMEDWAIT is not None
    main = threading.main_thread()
    assert main.ident is not None and main.native_id is not None
    main_ident, main_tid = main.ident, main.native_id
    heard: list[ExitStatus] = []
    handler_calls_at_exit: list[int] = []

    def on_exit(status: ExitStatus) -> None:
        heard.append(status)
        handler_calls_at_exit.append(counting_handler.calls)  # the main thread still waits
        signal.pthread_kill(main_ident, signal.SIGUSR1)

    blocked = {signal.SIGCHLD, signal.SIGUSR1}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        with Reaper(backend=backend, on_exit=on_exit) as reaper:  # type: ignore[arg-type]
            child = reaper.spawn(sh("read line; exit 12"), stdin=subprocess.PIPE)
            stdin = child.popen.stdin
            assert stdin is not None
            calls_before = counting_handler.calls

            def release_once_main_waits() -> None:
                eventually(lambda: _in_syscall(main_tid, RT_SIGTIMEDWAIT), 20, "sigtimedwait")
                stdin.write(b"go\n")
                stdin.close()

            releaser = threading.Thread(target=release_once_main_waits)
            releaser.start()
            # A C call that runs no Python until SIGUSR1 comes from on_exit on the reaping thread.
            info = signal.sigtimedwait([signal.SIGUSR1], 30)
            releaser.join(10)
            assert info is not None, "the exit was not recorded while the main thread was blocked"
            assert heard[0].pid == child.pid and heard[0].returncode == 12
            # No Python-level handler had run when the exit was recorded.
            assert handler_calls_at_exit == [calls_before]
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def test_a_sigchld_storm_does_not_spin() -> None:
    """Thousands of spurious SIGCHLD cause a bounded number of sweeps, and reaping still works."""
    with Reaper(backend="sigchld") as reaper:
        sleeper = reaper.spawn(sh("exec sleep 30"))
        before = sweeps()
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < 0.5:
            os.kill(os.getpid(), signal.SIGCHLD)
            sent += 1
        made = sweeps() - before
        # The safety timer alone gives ~5 sweeps in 0.5 s; the backoff adds ~log2(100) more.
        assert made <= 25, f"{made} sweeps for {sent} spurious SIGCHLD"
        assert sent > 1000
        sleeper.kill()
        assert sleeper.wait(10).signal == signal.SIGKILL


def test_the_sigchld_backend_finds_exits_without_the_handler() -> None:
    """With SIGCHLD blocked everywhere but nowhere handled, the safety sweep still reaps."""
    reaper_holder: list[Reaper] = []
    result: list[int] = []

    def worker() -> None:
        # Installed from a thread: no handler at all, so only the timer can notice the exit.
        with Reaper(backend="sigchld") as reaper:
            reaper_holder.append(reaper)
            result.append(reaper.spawn(sh("exit 21")).wait(10).returncode)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(20)
    assert result == [21]


@pytest.mark.skipif(not HAS_PIDFD, reason="needs pidfd")
def test_a_signal_sent_while_the_owner_waits_reaches_only_our_child() -> None:
    """terminate() works while another thread sits in popen.wait() holding Popen's lock."""
    with Reaper(backend="sigchld") as reaper:
        child = reaper.spawn(
            sh("trap 'exit 33' TERM; echo ready; while :; do sleep 0.01; done"),
            stdout=subprocess.PIPE,
        )
        popen = child.popen
        assert popen is not None
        assert read_line(popen.stdout) == "ready\n"
        codes: list[int] = []
        waiter = threading.Thread(target=lambda: codes.append(popen.wait()))
        waiter.start()
        eventually(lambda: popen._waitpid_lock.locked(), what="the owner to hold the lock")
        child.terminate()
        waiter.join(10)
        assert codes == [33]
        assert child.wait(10).returncode == 33
        popen.stdout.close()  # type: ignore[union-attr]
