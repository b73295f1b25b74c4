"""The public errors: each pickles with its fields, as crossing a multiprocessing boundary needs."""

from __future__ import annotations

import pickle

import pytest

import zombiereaper
from zombiereaper import (
    BackendUnavailableError,
    ChildLeakWarning,
    NotInstalledError,
    NotOurChildError,
    ReaperError,
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
