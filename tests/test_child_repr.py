"""A Child's repr: its pid, its command as a shell would read it, and its state."""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

import pytest

from zombiereaper import Reaper

from .helpers import FORK_IN_THREADED_PROCESS, sh


def _exit_with(code: int) -> None:
    sys.exit(code)


def test_the_repr_names_the_command_while_running_and_after(backend: str) -> None:
    """A spawned child's repr shows its args joined by spaces, before and after it ends."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(["sleep", "60"])
        assert repr(child) == f"<Child pid={child.pid} 'sleep 60' running>"
        child.stop()
        assert repr(child) == f"<Child pid={child.pid} 'sleep 60' killed by SIGTERM>"


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["sh", "-c", "exit 3"], "sh -c 'exit 3'"),
        ([Path("/bin/sh"), b"-c", "exit 3"], "/bin/sh -c 'exit 3'"),
        (("sh", "-c", "exit 3 # ünïcode"), "sh -c 'exit 3 # ünïcode'"),
    ],
)
def test_the_command_is_quoted_as_a_shell_would(args: object, shown: str) -> None:
    """Arguments are quoted like shlex.join, with paths and bytes decoded, quotes not doubled."""
    with Reaper() as reaper:
        child = reaper.spawn(args)  # type: ignore[arg-type]
        child.wait(10)
        assert repr(child) == f"<Child pid={child.pid} {shown!r} exited with code 3>"


def test_a_shell_command_line_is_shown_as_given() -> None:
    """A shell=True command string is shown as it was written."""
    with Reaper() as reaper:
        child = reaper.spawn("exit 4", shell=True)
        child.wait(10)
        assert repr(child) == f"<Child pid={child.pid} 'exit 4' exited with code 4>"


def test_a_long_command_is_cut_short() -> None:
    """A command longer than 40 characters is cut to 40, ending in '...'."""
    with Reaper() as reaper:
        child = reaper.spawn(["sh", "-c", "exit 5", "0123456789abcdefghijklmnopqrstuvwxyz"])
        child.wait(10)
        assert repr(child) == (
            f"<Child pid={child.pid} \"sh -c 'exit 5' 0123456789abcdefghijkl...\" "
            "exited with code 5>"
        )


def test_control_characters_in_the_command_are_escaped() -> None:
    """A newline in the command shows as \\n: the repr stays on one line."""
    with Reaper() as reaper:
        child = reaper.spawn(sh("exit 0\n"))
        child.wait(10)
        assert "\n" not in repr(child)
        assert "exit 0\\n" in repr(child)


@pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)
def test_a_watched_process_is_named() -> None:
    """A watched multiprocessing.Process shows its name."""
    context = multiprocessing.get_context("fork")
    with Reaper() as reaper:
        process = context.Process(target=_exit_with, args=(0,), name="worker-1")
        process.start()
        child = reaper.watch(process)
        child.wait(20)
        process.join(20)
        process.close()
        assert repr(child) == f"<Child pid={child.pid} 'worker-1' exited with code 0>"


def test_a_bare_pid_has_no_command_part() -> None:
    """A watched bare pid has no command to show (a pin: its repr is as before)."""
    with Reaper() as reaper:
        pid = os.posix_spawn("/bin/sh", sh("exit 2"), os.environ)
        child = reaper.watch(pid)
        child.wait(10)
        assert repr(child) == f"<Child pid={pid} exited with code 2>"
