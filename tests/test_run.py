"""Reaper.run(): subprocess.run for a Reaper's children, with the exit status recorded."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import threading
import warnings
from collections.abc import Iterator

import pytest

from zombiereaper import (
    CompletedRun,
    ExitStatus,
    NotInstalledError,
    Reaper,
    StatusLostError,
    can_recover_stolen_status,
)

from . import internals
from .helpers import HAS_PIDFD, eventually, is_zombie_or_gone, py, sh, zombie_children

#: Prints a line on stdout and one on stderr, as soon as it starts, then sleeps a minute.
PARTIAL_THEN_SLEEP = py(
    "import sys, time; print('partial', flush=True); print('oops', file=sys.stderr, flush=True);"
    "time.sleep(60)"
)


@pytest.fixture
def no_resource_warnings() -> Iterator[None]:
    """Fail the test if an unclosed pipe or a running Popen is collected during it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == []


def test_run_returns_a_completed_process_with_the_recorded_status(backend: str) -> None:
    """run() returns a CompletedProcess whose status is the one recorded, on_exit told once."""
    told: list[ExitStatus] = []
    with Reaper(backend=backend, on_exit=told.append) as reaper:  # type: ignore[arg-type]
        result = reaper.run(sh("exit 3"))
        assert isinstance(result, subprocess.CompletedProcess)
        assert isinstance(result, CompletedRun)
        assert (result.args, result.returncode, result.stdout, result.stderr) == (
            sh("exit 3"),
            3,
            None,
            None,
        )
        assert result.status.returncode == 3
        assert result.pid == result.status.pid
        assert reaper.registry[result.pid] is result.status
        assert reaper.children == ()
        assert not zombie_children()
    assert told == [result.status]


def test_run_captures_output_and_feeds_input(backend: str) -> None:
    """capture_output, input, text and encoding behave as in subprocess.run."""
    echo = py(
        "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data.upper());"
        "sys.stderr.write('err')"
    )
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        raw = reaper.run(echo, input=b"bytes", capture_output=True)
        assert (raw.stdout, raw.stderr) == (b"BYTES", b"err")
        text = reaper.run(echo, input="text", capture_output=True, text=True)
        assert (text.stdout, text.stderr) == ("TEXT", "err")
        # The bytes that arrive, in hex, then themselves: encoded and decoded as latin-1.
        hexdump = py(
            "import sys; data = sys.stdin.buffer.read();"
            "sys.stdout.buffer.write(data.hex().encode() + b' ' + data)"
        )
        latin = reaper.run(hexdump, input="\xe9", stdout=subprocess.PIPE, encoding="latin-1")
        assert (latin.stdout, latin.stderr) == ("e9 \xe9", None)
        merged = reaper.run(echo, input=b"x", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert merged.stdout == b"Xerr"


def test_run_refuses_what_subprocess_run_refuses() -> None:
    """What subprocess.run refuses is refused, and a bad timeout, before anything starts."""
    with Reaper() as reaper:
        with pytest.raises(ValueError, match="stdin and input"):
            reaper.run(["true"], input=b"x", stdin=subprocess.DEVNULL)
        for stream in ("stdout", "stderr"):
            with pytest.raises(ValueError, match="capture_output"):
                reaper.run(["true"], capture_output=True, **{stream: subprocess.DEVNULL})
        with pytest.raises(ValueError, match="args is empty"):
            reaper.run([])
        with pytest.raises(TypeError, match=r"run\(\): timeout must be"):
            reaper.run(["true"], timeout="1")  # type: ignore[arg-type]
        assert len(reaper.registry) == 0


def test_run_needs_an_installed_reaper() -> None:
    """run() on a Reaper that is not installed raises NotInstalledError naming run()."""
    with pytest.raises(NotInstalledError, match=r"run\(\) needs an installed Reaper"):
        Reaper().run(["true"])


def test_check_raises_called_process_error_with_the_output(backend: str) -> None:
    """check=True turns a non-zero code into CalledProcessError carrying output and stderr."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        with pytest.raises(subprocess.CalledProcessError) as info:
            reaper.run(sh("echo out; echo err >&2; exit 5"), capture_output=True, check=True)
        assert info.value.returncode == 5
        assert info.value.cmd == sh("echo out; echo err >&2; exit 5")
        assert (info.value.output, info.value.stderr) == (b"out\n", b"err\n")
        killed = reaper.run(sh("kill -TERM $$"), check=False)
        assert killed.returncode == -signal.SIGTERM
        assert killed.status.signal == signal.SIGTERM
        with pytest.raises(subprocess.CalledProcessError, match=r"died with <Signals\.SIGTERM"):
            killed.check_returncode()
        assert reaper.run(["true"], check=True).returncode == 0


def test_a_timeout_kills_and_reaps_the_child_then_raises_with_the_output_so_far(
    backend: str, no_resource_warnings: None
) -> None:
    """On timeout the child is killed and recorded before TimeoutExpired, which has the output."""
    told: list[ExitStatus] = []
    with Reaper(backend=backend, on_exit=told.append) as reaper:  # type: ignore[arg-type]
        with pytest.raises(subprocess.TimeoutExpired) as info:
            reaper.run(PARTIAL_THEN_SLEEP, capture_output=True, timeout=3)
        # Recorded already, not merely signalled: nothing is left to reap.
        (status,) = reaper.registry.values()
        assert status.signal == signal.SIGKILL
        assert is_zombie_or_gone(status.pid)
        assert reaper.children == ()
        assert info.value.timeout == 3
        assert info.value.cmd == PARTIAL_THEN_SLEEP
        assert (info.value.output, info.value.stderr) == (b"partial\n", b"oops\n")
    assert told == [status]


def test_the_pipes_are_closed_whatever_happens(backend: str, no_resource_warnings: None) -> None:
    """No pipe of run()'s Popen is left open, after success, failure or an error writing input."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        reaper.run(sh("cat; echo err >&2"), input=b"in", capture_output=True)
        with pytest.raises(subprocess.CalledProcessError):
            reaper.run(sh("exit 1"), input=b"in", capture_output=True, check=True)
        with pytest.raises(AttributeError):
            # Text mode with bytes input: communicate() fails before the child ends.
            reaper.run(sh("exec sleep 60"), input=b"bytes", capture_output=True, text=True)
        (status,) = [s for s in reaper.registry.values() if s.signal is not None]
        assert status.signal == signal.SIGKILL


def test_a_keyboard_interrupt_kills_and_reaps_the_child_before_it_propagates(
    backend: str,
) -> None:
    """Ctrl-C during run() kills the child and waits for its record, as subprocess.run does."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    ready_read, ready_write = os.pipe()
    main = threading.get_ident()
    assert main == threading.main_thread().ident

    def interrupt_once_started() -> None:
        if os.read(ready_read, 1) == b"r":
            signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_once_started)
    interrupter.start()
    try:
        with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
            with pytest.raises(KeyboardInterrupt):
                reaper.run(
                    py(f"import os, time; os.write({ready_write}, b'r'); time.sleep(60)"),
                    pass_fds=(ready_write,),
                )
            # Reaped and recorded before the exception came out of run().
            (status,) = reaper.registry.values()
            assert status.signal == signal.SIGKILL
            assert reaper.children == ()
    finally:
        os.close(ready_write)
        interrupter.join(10)
        os.close(ready_read)
        signal.signal(signal.SIGINT, previous)


@pytest.mark.skipif(not HAS_PIDFD, reason="SIGCHLD ignored: only a pidfd still says it exited")
def test_a_status_taken_by_other_code_raises_status_lost_instead_of_a_made_up_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the kernel or other code takes the status, run() raises StatusLostError, not a 0.

    As on a kernel before 6.15, which keeps no status on the pidfd (the next test: one that
    does).
    """
    internals.force_no_recovery(monkeypatch)
    with Reaper(backend="pidfd") as reaper:
        handler = signal.getsignal(signal.SIGCHLD)
        # Other code sets SIGCHLD to SIG_IGN: the kernel discards every exit status.
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        try:
            with pytest.raises(StatusLostError) as info:
                reaper.run(sh("read line; exit 3"), input=b"go\n", capture_output=True)
        finally:
            signal.signal(signal.SIGCHLD, handler)
        assert reaper.status(info.value.pid) is None
        assert reaper.children == ()
        eventually(lambda: is_zombie_or_gone(info.value.pid), what="the child to be gone")


@pytest.mark.skipif(not can_recover_stolen_status(), reason="needs Linux 6.15+ (PIDFD_INFO_EXIT)")
def test_a_status_the_kernel_discarded_is_read_back_from_the_pidfd() -> None:
    """SIGCHLD set to SIG_IGN by other code: Linux 6.15+ still has the status on the pidfd."""
    with Reaper(backend="pidfd") as reaper:
        handler = signal.getsignal(signal.SIGCHLD)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        try:
            # The child exits once it reads its input: after spawn() has opened its pidfd.
            done = reaper.run(sh("read line; exit 3"), input=b"go\n", capture_output=True)
        finally:
            signal.signal(signal.SIGCHLD, handler)
        assert done.returncode == 3 and done.status.exit_code == 3
        assert reaper.status(done.status.pid) == 3
