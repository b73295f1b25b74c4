"""ExitStatus and the decoding of raw wait statuses."""

from __future__ import annotations

import dataclasses
import operator
import os
import signal
from fractions import Fraction
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zombiereaper import ExitStatus, Reaper, decode_wait_status
from zombiereaper._status import is_same_exit, wait_status_from_waitid

from .helpers import sh
from .strategies import exit_codes, pids, signal_numbers, wait_statuses


@given(pids, exit_codes)
def test_exit_decodes_to_its_code(pid: int, code: int) -> None:
    """An exit with code N reads as code N under every convention."""
    status = decode_wait_status(pid, code << 8)
    assert status.pid == pid
    assert status.exit_code == code
    assert status.returncode == code
    assert status.shell_code == code
    assert status.signal is None
    assert status.signal_number is None
    assert not status.core_dumped
    assert status.success is (code == 0)


@given(pids, signal_numbers, st.booleans())
def test_signal_decodes_to_negative_returncode_and_128_plus(
    pid: int, number: int, core: bool
) -> None:
    """A death by signal N reads as returncode -N, shell code 128+N, and keeps the core bit."""
    status = decode_wait_status(pid, number | (0x80 if core else 0))
    assert status.exit_code is None
    assert status.signal_number == number
    assert status.returncode == -number
    assert status.shell_code == 128 + number
    assert status.core_dumped is core
    assert not status.success
    known = number in signal.Signals._value2member_map_
    assert status.signal == (signal.Signals(number) if known else None)


@given(pids, wait_statuses)
def test_decoding_agrees_with_the_os_macros(pid: int, raw: int) -> None:
    """Decoding agrees with os.WIFEXITED/WEXITSTATUS/WTERMSIG/WCOREDUMP for every valid word."""
    status = decode_wait_status(pid, raw)
    if os.WIFEXITED(raw):
        assert status.exit_code == os.WEXITSTATUS(raw)
    else:
        assert status.signal_number == os.WTERMSIG(raw)
        assert status.core_dumped == os.WCOREDUMP(raw)
    assert status.returncode == os.waitstatus_to_exitcode(raw)


@given(pids, wait_statuses)
def test_from_returncode_round_trips_without_the_core_bit(pid: int, raw: int) -> None:
    """Rebuilding a record from its returncode keeps everything but the core-dump bit."""
    status = decode_wait_status(pid, raw)
    again = ExitStatus.from_returncode(pid, status.returncode)
    assert again.returncode == status.returncode
    assert again.signal_number == status.signal_number
    assert not again.core_dumped


@given(wait_statuses)
def test_waitid_fields_rebuild_the_same_word(raw: int) -> None:
    """The (si_code, si_status) pair of waitid rebuilds the waitpid status word."""
    if os.WIFEXITED(raw):
        code, value = os.CLD_EXITED, os.WEXITSTATUS(raw)
    elif os.WCOREDUMP(raw):
        code, value = os.CLD_DUMPED, os.WTERMSIG(raw)
    else:
        code, value = os.CLD_KILLED, os.WTERMSIG(raw)
    assert wait_status_from_waitid(code, value) == raw


@pytest.mark.parametrize("raw", [-1, 0x10000, 0x7F, 0x137F, 0xFFFF, 0x0101])
def test_words_that_are_not_exits_are_refused(raw: int) -> None:
    """Stopped, continued and malformed status words raise ValueError instead of decoding."""
    with pytest.raises(ValueError, match="wait status"):
        decode_wait_status(1, raw)


@pytest.mark.parametrize("returncode", [256, -127, -200, 1000])
def test_from_returncode_refuses_impossible_codes(returncode: int) -> None:
    """A returncode that no process can have is refused."""
    with pytest.raises(ValueError, match="returncode"):
        ExitStatus.from_returncode(1, returncode)


def test_waitid_codes_that_are_not_exits_are_refused() -> None:
    """A stopped or trapped child's waitid result cannot be turned into an exit."""
    with pytest.raises(ValueError, match="not an exit"):
        wait_status_from_waitid(os.CLD_STOPPED, signal.SIGSTOP)


def test_repr_and_str_read_as_sentences() -> None:
    """repr and str say what happened in words."""
    assert str(decode_wait_status(1234, 3 << 8)) == "pid 1234 exited with code 3"
    assert str(decode_wait_status(1234, signal.SIGKILL)) == "pid 1234 killed by SIGKILL"
    assert (
        repr(decode_wait_status(1234, signal.SIGKILL)) == "<ExitStatus pid 1234 killed by SIGKILL>"
    )
    assert (
        str(decode_wait_status(7, signal.SIGSEGV | 0x80)) == "pid 7 killed by SIGSEGV (core dumped)"
    )
    assert str(decode_wait_status(7, 40)) == "pid 7 killed by signal 40"


def test_exit_status_is_immutable_and_hashable() -> None:
    """An ExitStatus cannot be changed and can be used as a key."""
    status = decode_wait_status(1, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.pid = 2  # type: ignore[misc]
    assert {status: 1}[decode_wait_status(1, 0)] == 1


@pytest.mark.parametrize(
    ("script", "returncode"),
    [("exit 0", 0), ("exit 3", 3), ("exit 255", 255), ("kill -TERM $$", -15), ("kill -9 $$", -9)],
)
def test_real_statuses_decode_like_subprocess(script: str, returncode: int) -> None:
    """Statuses read from real children decode to what subprocess reports for them."""
    import subprocess

    proc = subprocess.Popen(sh(script))
    pid, raw = os.waitpid(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(raw)  # keep Popen from reaping it again
    assert decode_wait_status(pid, raw).returncode == returncode


# --- comparing, hashing and converting like the returncode (issue 13) ---------------------------


@given(pids, wait_statuses)
def test_a_status_equals_its_returncode(pid: int, raw: int) -> None:
    """A status is == to its returncode and != to any other int, from either side."""
    status = decode_wait_status(pid, raw)
    code = status.returncode
    assert status == code
    assert code == status
    assert (status != code) is False
    assert status != code + 1
    assert code + 1 != status


@given(pids, pids, wait_statuses)
def test_statuses_with_the_same_returncode_are_equal(first: int, second: int, raw: int) -> None:
    """Two statuses are equal, and hash alike, when their returncodes are, whatever the pids."""
    a = decode_wait_status(first, raw)
    b = ExitStatus.from_returncode(second, a.returncode)  # without the core-dump bit
    assert a == b
    assert hash(a) == hash(b)
    assert decode_wait_status(first, 3 << 8) != decode_wait_status(first, 4 << 8)


@given(pids, wait_statuses)
def test_a_status_hashes_and_converts_like_its_returncode(pid: int, raw: int) -> None:
    """hash(), int(), operator.index() and %d give the returncode, so it finds int keys."""
    status = decode_wait_status(pid, raw)
    code = status.returncode
    assert hash(status) == hash(code)
    assert {code: "found"}[status] == "found"  # type: ignore[index]
    assert status in {code}
    assert int(status) == code
    assert operator.index(status) == code
    assert "%d" % status == str(code)  # noqa: UP031 - %-formatting itself is under test


def test_a_status_compares_with_other_numbers_like_an_int() -> None:
    """Floats and Fractions compare as they would with the returncode; strings never match."""
    status = decode_wait_status(1, 3 << 8)
    assert status == 3.0
    assert status == Fraction(3)
    assert status != "3"
    assert status != None  # noqa: E711 - comparing with None is under test
    assert status == mock.ANY


@given(pids, wait_statuses)
def test_a_status_has_no_truth_value(pid: int, raw: int) -> None:
    """bool(status) raises TypeError naming the tests to write: the two habits disagree."""
    status = decode_wait_status(pid, raw)
    with pytest.raises(TypeError, match=r"status\.success.*is not None"):
        bool(status)
    assert (status == 0) is status.success


def test_statuses_have_no_order() -> None:
    """<, <=, > and >= raise TypeError, with an int or another status (a pin, not a change)."""
    status = decode_wait_status(1, 3 << 8)
    for other in (3, status):
        with pytest.raises(TypeError):
            _ = status < other  # type: ignore[operator]
        with pytest.raises(TypeError):
            _ = status >= other  # type: ignore[operator]


def test_is_same_exit_compares_the_record_not_the_returncode() -> None:
    """is_same_exit() tells apart equal statuses of another pid or without the core bit."""
    dumped = decode_wait_status(7, signal.SIGSEGV | 0x80)
    assert is_same_exit(dumped, decode_wait_status(7, signal.SIGSEGV | 0x80))
    assert dumped == ExitStatus.from_returncode(7, -signal.SIGSEGV)
    assert not is_same_exit(dumped, ExitStatus.from_returncode(7, -signal.SIGSEGV))
    assert dumped == decode_wait_status(8, signal.SIGSEGV | 0x80)
    assert not is_same_exit(dumped, decode_wait_status(8, signal.SIGSEGV | 0x80))


def test_the_wait_of_a_child_compares_like_popen_wait() -> None:
    """child.wait() == 0 and != 0 read as they do with Popen.wait(), the issue's headline."""
    with Reaper() as reaper:
        ok = reaper.spawn(sh("exit 0")).wait(10)
        failed = reaper.spawn(sh("exit 3")).wait(10)
    assert ok == 0 and (ok != 0) is False
    assert failed != 0 and failed == 3
    assert {0: "ok", 3: "usage"}[failed] == "usage"  # type: ignore[index]
