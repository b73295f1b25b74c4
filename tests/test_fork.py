"""Fork safety: a forked child inherits nothing live, and can install a Reaper of its own."""

from __future__ import annotations

import os
import signal
import traceback

import pytest

from zombiereaper import NotOurChildError, Reaper, _engine, _sighandler

from .helpers import FORK_IN_THREADED_PROCESS, pidfds_open, read_fork_report, sh


@pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)
def test_forked_child_starts_clean_and_can_reap_its_own(backend: str) -> None:
    """After os.fork() the inherited Reaper is inert, old handles refuse, and a new Reaper works."""
    handler_before = signal.getsignal(signal.SIGCHLD)
    read_end, write_end = os.pipe()
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        sleeper = reaper.spawn(sh("exec sleep 30"))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the forked child, reports through the pipe
            report = "ok"
            try:
                os.close(read_end)
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
            except BaseException:
                report = traceback.format_exc()
            os.write(write_end, report.encode())
            os._exit(0)
        os.close(write_end)
        assert read_fork_report(read_end, pid).decode() == "ok"
        # The parent's side is untouched by the fork.
        assert sleeper.running
        sleeper.kill()
        assert sleeper.wait(10).signal == signal.SIGKILL
