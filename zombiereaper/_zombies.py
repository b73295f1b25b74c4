"""``zombiereaper zombies``: every zombie on the machine, grouped by the parent that leaks it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Final

import psutil

from ._linux import printable


@dataclass
class Zombie:
    """One zombie process."""

    pid: int
    name: str


@dataclass
class LeakingParent:
    """A process with zombie children it has not waited for."""

    pid: int
    name: str
    cmdline: list[str]
    zombies: list[Zombie] = field(default_factory=list)

    @property
    def count(self) -> int:
        """How many zombies this parent leaves."""
        return len(self.zombies)


def find_zombies() -> list[LeakingParent]:
    """List every zombie process, grouped by parent, the worst leaker first."""
    by_parent: dict[int, list[Zombie]] = {}
    for proc in psutil.process_iter(["pid", "ppid", "name", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            by_parent.setdefault(info["ppid"], []).append(Zombie(info["pid"], info["name"] or "?"))
    parents = []
    for ppid, zombies in by_parent.items():
        try:
            parent = psutil.Process(ppid)
            name, cmdline = parent.name(), parent.cmdline()
        except psutil.NoSuchProcess:
            name, cmdline = "(gone)", []
        except psutil.AccessDenied:
            name, cmdline = "?", []
        parents.append(LeakingParent(ppid, name, cmdline, sorted(zombies, key=lambda z: z.pid)))
    return sorted(parents, key=lambda p: (-p.count, p.pid))


def as_json_data(parents: list[LeakingParent]) -> dict[str, object]:
    """The listing as plain data, for ``--json``."""
    return {
        "zombies": sum(p.count for p in parents),
        "parents": [{**asdict(p), "count": p.count} for p in parents],
    }


#: How many zombies of one parent the text listing names before it only counts the rest.
_NAMED_PER_PARENT: Final = 10


def as_text(parents: list[LeakingParent]) -> str:
    """The listing for people: a line per parent, then its zombies.

    Names and command lines are passed through :func:`printable`: each parent and each zombie
    takes exactly one line, whatever its command line holds.
    """
    total = sum(p.count for p in parents)
    if not total:
        return "no zombie processes"
    lines = [f"{total} zombie process(es) under {len(parents)} parent(s)"]
    for parent in parents:
        name = printable(parent.name)
        command = printable(" ".join(parent.cmdline)) or name
        lines.append(f"parent {parent.pid} ({name}) leaves {parent.count}: {command}")
        lines.extend(
            f"    zombie {z.pid} ({printable(z.name)})" for z in parent.zombies[:_NAMED_PER_PARENT]
        )
        if parent.count > _NAMED_PER_PARENT:
            lines.append(f"    ... and {parent.count - _NAMED_PER_PARENT} more (see --json)")
    return "\n".join(lines)
