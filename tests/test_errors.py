"""The public errors: pickling with their fields, and WaitTimeout as subprocess.TimeoutExpired."""

from __future__ import annotations

import pickle
import subprocess

import pytest

import zombiereaper
from zombiereaper import (
    BackendUnavailableError,
    ChildLeakWarning,
    NotInstalledError,
    NotOurChildError,
    Reaper,
    ReaperError,
    ServiceTimeout,
    StatusLostError,
    WaitTimeout,
)

#: One instance of each public exception class, with every field it has set.
SAMPLES: dict[str, BaseException] = {
    "BackendUnavailableError": BackendUnavailableError("pidfd_open() is not available here"),
    "ChildLeakWarning": ChildLeakWarning("left behind: pid 1234"),
    "NotInstalledError": NotInstalledError("install the Reaper first"),
    "NotOurChildError": NotOurChildError(1234, "pid 1234 is not a child of this process"),
    "ReaperError": ReaperError("the reaping engine has stopped"),
    "ServiceTimeout": ServiceTimeout("web", 2.5),
    "StatusLostError": StatusLostError(1234),
    "WaitTimeout": WaitTimeout(1234, 0.5),
}


def _public_exception_names() -> list[str]:
    return [
        name
        for name in zombiereaper.__all__
        if isinstance(getattr(zombiereaper, name), type)
        and issubclass(getattr(zombiereaper, name), BaseException)
    ]


def test_every_public_exception_has_a_sample() -> None:
    """The pickling test below covers every exception class that zombiereaper exports."""
    assert sorted(SAMPLES) == _public_exception_names()


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_public_exceptions_pickle_with_their_fields(name: str, protocol: int) -> None:
    """Each public exception survives a pickle round trip with its class, fields and message."""
    error = SAMPLES[name]
    error.add_note("a note added on the way")
    try:
        again = pickle.loads(pickle.dumps(error, protocol))
    finally:
        del error.__notes__
    assert type(again) is type(error)
    assert str(again) == str(error)
    assert again.args == error.args
    assert vars(again) == {**vars(error), "__notes__": ["a note added on the way"]}


def test_a_pickled_os_error_keeps_its_errno() -> None:
    """An error that is also an OSError keeps errno and strerror through pickling."""
    error = BackendUnavailableError(38, "pidfd_open() is not implemented")
    again = pickle.loads(pickle.dumps(error))
    assert (again.errno, again.strerror, str(again)) == (error.errno, error.strerror, str(error))


def test_wait_timeout_is_a_subprocess_timeout_expired() -> None:
    """WaitTimeout is a TimeoutExpired with its fields: cmd, timeout, and no output."""
    error = WaitTimeout(1234, 0.5, cmd=["sleep", "60"])
    assert isinstance(error, subprocess.TimeoutExpired)
    assert isinstance(error, TimeoutError)
    assert isinstance(error, ReaperError)
    assert (error.cmd, error.timeout, error.pid) == (["sleep", "60"], 0.5, 1234)
    assert (error.output, error.stdout, error.stderr) == (None, None, None)
    assert str(error) == (
        "pid 1234 was still running after 0.5 s; wait again, or stop it with child.stop() "
        "(SIGTERM, then SIGKILL)"
    )


def test_wait_timeout_names_the_pid_when_the_command_is_unknown() -> None:
    """Without a command, WaitTimeout.cmd is the pid: never None for TimeoutExpired handlers."""
    error = WaitTimeout(1234, 2.0, "pid 1234 is slow")
    assert error.cmd == 1234
    assert str(error) == "pid 1234 is slow"


def test_except_timeout_expired_catches_a_child_wait() -> None:
    """`except subprocess.TimeoutExpired` catches child.wait(timeout=...), as for Popen.wait()."""
    with Reaper() as reaper, reaper.spawn(["sleep", "60"]) as child:
        with pytest.raises(subprocess.TimeoutExpired) as caught:
            child.wait(timeout=0.01)
        assert isinstance(caught.value, WaitTimeout)
        assert caught.value.pid == child.pid
        assert caught.value.timeout == 0.01
        assert caught.value.stdout is None
        assert caught.value.cmd == ["sleep", "60"]
