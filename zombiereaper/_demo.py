"""``zombiereaper demo``: the library's main job, shown on three situations in plain words."""

from __future__ import annotations

import subprocess
import time
from typing import TYPE_CHECKING, TextIO

import psutil

from ._reaper import Reaper

if TYPE_CHECKING:
    from collections.abc import Callable


def _zombies() -> list[psutil.Process]:
    found = []
    for proc in psutil.Process().children():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def run_demo(out: TextIO) -> int:
    """Show a zombie reaped, a burst recorded and a daemon leaving nothing; return 0."""

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say("1. A child that exits while nobody waits for it stays a zombie.")
    leaked = subprocess.Popen(["sh", "-c", "exit 3"])
    _until(lambda: bool(_zombies()))
    state = psutil.Process(leaked.pid).status()
    say(f"   pid {leaked.pid} exited; the process table shows it in state {state!r}.")
    say(f"   Zombies now: {len(_zombies())}.")
    with Reaper() as reaper:
        child = reaper.watch(leaked)
        say(f"   A Reaper watches it and reaps it: {child.wait(10)}.")
    say(f"   Zombies now: {len(_zombies())}.")
    say()

    say("2. Many children exit at once; a Reaper records every status.")
    with Reaper() as reaper:
        children = [reaper.spawn(["sh", "-c", f"exit {n}"]) for n in range(90)]
        sleepers = [reaper.spawn(["sleep", "60"]) for _ in range(10)]
        for victim in sleepers:
            victim.kill()
        children += sleepers
        _until(lambda: len(reaper.registry) == len(children))
        killed = sum(1 for c in children if c.status is not None and c.status.signal)
        say(f"   Started {len(children)} children, killed 10, and waited for none of them.")
        say(
            f"   Recorded {len(reaper.registry)} exits ({killed} killed by SIGKILL); "
            f"zombies now: {len(_zombies())}."
        )
        sample = ", ".join(str(reaper.registry[c.pid].outcome) for c in children[:3])
        say(f"   The first three: {sample}.")
    say()

    say("3. A double-forked daemon becomes an orphan and leaves no zombie behind.")
    with Reaper(scope="all", subreaper=True, grace=0.1) as reaper:
        before = len(_zombies())
        daemon = reaper.spawn_detached(["sh", "-c", "sleep 0.3; exit 7"])
        parent = psutil.Process(daemon).ppid()
        say(f"   Started daemon pid {daemon} in a session of its own; its parent, the")
        say("   intermediate process, is already gone and reaped, so it was adopted by this")
        say(f"   process (a subreaper, pid {parent}). Zombies before: {before}.")
        say(f"   It ended: {reaper.wait(daemon, timeout=10)}.")
        _until(lambda: not _zombies())
        say(f"   Zombies after: {len(_zombies())}.")
    say()
    say("Done: every exit recorded, no zombie left.")
    return 0
