"""A short tour of what zombiereaper does, in plain words (run: python examples/quickstart.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from zombiereaper import Reaper


def zombies() -> list[psutil.Process]:
    """This process's children that are zombies right now."""
    found = []
    for proc in psutil.Process().children():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def wait_until(predicate: object, timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def main() -> int:
    """Show a zombie, then a Reaper that leaves none and keeps every exit code."""
    print("1. A child that exits while nobody waits for it stays a zombie:")
    leaked = subprocess.Popen(["sh", "-c", "exit 3"])
    wait_until(lambda: bool(zombies()))
    print(
        f"   pid {leaked.pid} is in state {psutil.Process(leaked.pid).status()!r}; "
        f"zombies now: {len(zombies())}"
    )
    leaked.wait()
    print(f"   only its parent's wait() removes it: zombies now: {len(zombies())}\n")

    print("2. Under a Reaper, children are reaped as they exit and every status is kept:")
    with Reaper() as reaper:
        children = [reaper.spawn(["sh", "-c", f"exit {code}"]) for code in range(10)]
        killed = reaper.spawn(["sleep", "60"])
        killed.kill()
        wait_until(lambda: len(reaper.registry) == 11)
        print(f"   started 11 children and waited for none; zombies now: {len(zombies())}")
        for child in [*children[:3], killed]:
            print(f"   {reaper.registry[child.pid]}")
        print(f"   ... {len(reaper.registry)} exits recorded in all (backend: {reaper.backend})\n")

        print("3. Code that waits for its own children still gets the real exit code:")
        result = subprocess.run(["sh", "-c", "exit 42"], check=False)
        print(
            f"   subprocess.run(...).returncode == {result.returncode} (a blanket waitpid(-1) "
            "reaper would have made it 0)"
        )
    print(f"\nDone: zombies left: {len(zombies())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
