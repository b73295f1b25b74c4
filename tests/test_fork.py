"""Fork safety: a forked child inherits nothing live, and can install a Reaper of its own."""

from __future__ import annotations

import signal

import pytest

from zombiereaper import NotOurChildError, Reaper, _engine, _sighandler

from .helpers import FORK_IN_THREADED_PROCESS, check_in_fork, pidfds_open, sh


@pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)
def test_forked_child_starts_clean_and_can_reap_its_own(backend: str) -> None:
    """After os.fork() the inherited Reaper is inert, old handles refuse, and a new Reaper works."""
    handler_before = signal.getsignal(signal.SIGCHLD)
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        sleeper = reaper.spawn(sh("exec sleep 30"))

        def in_the_fork() -> None:
            assert _engine.current() is None
            assert not reaper.installed
            assert reaper.children == ()
            assert signal.getsignal(signal.SIGCHLD) is handler_before
            assert not _sighandler.is_installed()
            # Both backends: sigchld children hold pidfds too, a few at a time.
            assert pidfds_open() == 0, "inherited pidfds were not closed"
            try:
                sleeper.wait(1)
            except NotOurChildError:
                pass
            else:
                raise AssertionError("the parent's child handle still worked")
            with Reaper(backend=backend) as own:  # type: ignore[arg-type]
                assert own.spawn(sh("exit 17")).wait(10).returncode == 17

        assert check_in_fork(in_the_fork) == "ok"
        # The parent's side is untouched by the fork.
        assert sleeper.running
        sleeper.kill()
        assert sleeper.wait(10).signal == signal.SIGKILL
