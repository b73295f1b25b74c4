"""The sigchld backend's pidfds: a bounded number of its children are named by one.

Where pidfds work, up to SWEPT_PIDFD_LIMIT children of the sigchld backend hold a pidfd at
once, so that reading and reaping them needs no identity check by pid. The limit is given back
as children settle; past it, or with no descriptor to be had, a child is named by pid and
identity as before and loses nothing; a forked child holds none of them and counts afresh.
(A status that another waiter took still reads as lost with this backend, held pidfd or not:
tests/test_pid_reuse.py, race 6, modes "sigchld" and "sigchld-inode".)
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from zombiereaper import Reaper, SpawnedChild
from zombiereaper._backends.sigchld import SWEPT_PIDFD_LIMIT

from . import internals
from .helpers import (
    FORK_IN_THREADED_PROCESS,
    HAS_PIDFD,
    check_in_fork,
    eventually,
    pidfds_open,
    sh,
)

pytestmark = pytest.mark.skipif(not HAS_PIDFD, reason="needs pidfds")


def _waiting(reaper: Reaper) -> SpawnedChild:
    """A child that exits 0 once its stdin closes."""
    return reaper.spawn(sh("read line; exit 0"), stdin=subprocess.PIPE)


def _end(child: SpawnedChild) -> None:
    assert child.popen.stdin is not None
    child.popen.stdin.close()
    assert child.wait(10).returncode == 0


def test_the_limit_is_a_few_dozen() -> None:
    """Bounded whatever the number of children, yet above a busy program's short-lived few."""
    assert 16 <= SWEPT_PIDFD_LIMIT <= 256


def test_up_to_the_limit_children_hold_a_pidfd_and_give_it_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    internals.limit_swept_pidfds(2, monkeypatch)
    before = pidfds_open()
    with Reaper(backend="sigchld") as reaper:
        children = [_waiting(reaper) for _ in range(4)]
        try:
            assert [internals.holds_swept_pidfd(child) for child in children] == [
                True,
                True,
                False,
                False,
            ]
            assert internals.swept_pidfds_held() == 2
            assert pidfds_open() == before + 2
            assert internals.pidfds_here() == 0, "a swept child's pidfd went to the poller"
            for child in children[:2]:
                _end(child)
            # Closed right after the waiters are woken, on the thread that settled them.
            eventually(lambda: internals.swept_pidfds_held() == 0, 10, "the pidfds to go back")
            assert pidfds_open() == before
            later = _waiting(reaper)
            assert internals.holds_swept_pidfd(later), "a pidfd given back was not taken again"
            for child in [*children[2:], later]:
                _end(child)
        finally:
            for child in children:
                if child.popen.stdin is not None:
                    child.popen.stdin.close()
    assert internals.swept_pidfds_held() == 0
    assert pidfds_open() == before


def test_with_no_pidfd_to_be_had_the_child_is_named_by_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of descriptors, a child is named by pid and identity; nothing is counted or lost."""

    def no_room(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    with Reaper(backend="sigchld") as reaper:
        with monkeypatch.context() as patch:
            patch.setattr(os, "pidfd_open", no_room)
            child = reaper.spawn(sh("exit 3"))
        assert not internals.holds_swept_pidfd(child)
        assert internals.swept_pidfds_held() == 0, "the limit kept a pidfd that was never had"
        assert child.wait(10).returncode == 3
        assert _next_holds_a_pidfd(reaper), "no pidfd once descriptors were there again"


def _next_holds_a_pidfd(reaper: Reaper) -> bool:
    """Whether the next child spawned holds a pidfd (it is ended before this returns)."""
    child = _waiting(reaper)
    try:
        return internals.holds_swept_pidfd(child)
    finally:
        _end(child)


@pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)
def test_a_forked_child_holds_none_and_counts_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    internals.limit_swept_pidfds(1, monkeypatch)

    def in_the_fork() -> None:
        assert pidfds_open() == 0, "the forked child kept the parent's pidfd"
        assert internals.swept_pidfds_held() == 0, "it counts the parent's pidfd"
        with Reaper(backend="sigchld") as own:
            assert _next_holds_a_pidfd(own), "the fork's first child has none"

    with Reaper(backend="sigchld") as reaper:
        held = _waiting(reaper)
        try:
            assert internals.holds_swept_pidfd(held)
            assert check_in_fork(in_the_fork) == "ok"
            assert internals.swept_pidfds_held() == 1, "the fork changed the parent's count"
        finally:
            _end(held)
