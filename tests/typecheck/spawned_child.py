"""Type-checked with ``mypy --strict``, never run: what spawn() and run() give needs no casts.

A spawned child's Popen is never None, so the guide's ``child.popen.communicate()`` passes
``mypy --strict`` as written; run() gives a subprocess.CompletedProcess with the ExitStatus.
(Popen's own ``stdout`` stays Optional, as typeshed declares it: narrow it as for any Popen.)
"""

from __future__ import annotations

import subprocess
from typing import Any

from zombiereaper import CompletedRun, ExitStatus, Reaper, SpawnedChild


def talk_to_a_spawned_child(reaper: Reaper) -> str:
    """Spawn, communicate through the Popen, and wait, with no None check."""
    child = reaper.spawn(["echo", "hello"], stdout=subprocess.PIPE, text=True)
    output, _ = child.popen.communicate(timeout=10)
    code: int = child.popen.wait()
    status: ExitStatus = child.wait()
    assert code == status.returncode
    text: str = output
    return text


def read_a_line(reaper: Reaper) -> str:
    """The block's child is the SpawnedChild; its pipes narrow as any Popen's do."""
    with reaper.spawn(["echo", "hi"], stdout=subprocess.PIPE, text=True) as child:
        spawned: SpawnedChild = child
        stdout = spawned.popen.stdout
        assert stdout is not None
        line: str = stdout.readline()
    return line


def run_to_the_end(reaper: Reaper) -> int:
    """run() returns a CompletedProcess that carries the ExitStatus."""
    result: CompletedRun = reaper.run(["true"], capture_output=True, check=True)
    completed: subprocess.CompletedProcess[Any] = result
    status: ExitStatus = result.status
    pid: int = result.pid
    assert pid == status.pid
    return completed.returncode
