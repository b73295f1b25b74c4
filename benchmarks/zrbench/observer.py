"""The independent witness of the zombie-lifetime benchmark, run as ``python -m zrbench.observer``.

It reads a JSON list of pids on stdin, opens a pidfd for each (any process may open a pidfd
for any pid it can see; these are not its children, so it can never reap them), prints
``ready``, and then, until every pid is gone or the deadline passes:

- notes when each pidfd turns readable, which the kernel does the moment the process dies
  (becomes a zombie): the *death* time;
- polls ``/proc/<pid>`` for the dead ones, about every millisecond, and notes when it vanishes,
  which happens when the parent reaps the zombie: the *gone* time.

Every time is CLOCK_MONOTONIC in nanoseconds, the same clock as the parent's. It prints
``{"pid": [death, gone], ...}`` as JSON (null for what it never saw).
"""

from __future__ import annotations

import json
import os
import select
import sys
import time

POLL_INTERVAL = 0.001


def _now() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def observe(pids: list[int], deadline: float) -> dict[int, list[int | None]]:
    """Watch ``pids`` die and disappear; see the module docstring."""
    epoll = select.epoll()
    by_fd: dict[int, int] = {}
    seen: dict[int, list[int | None]] = {pid: [None, None] for pid in pids}
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        by_fd[fd] = pid
        epoll.register(fd, select.EPOLLIN)
    print("ready", flush=True)
    dead_not_gone: set[int] = set()
    left = len(pids)
    while left and time.monotonic() < deadline:
        events = epoll.poll(POLL_INTERVAL if dead_not_gone else 1.0, max(1, len(by_fd)))
        stamp = _now()
        for fd, _ in events:
            pid = by_fd.pop(fd)
            epoll.unregister(fd)
            os.close(fd)
            seen[pid][0] = stamp
            dead_not_gone.add(pid)
        for pid in list(dead_not_gone):
            if not os.path.exists(f"/proc/{pid}"):
                seen[pid][1] = _now()
                dead_not_gone.discard(pid)
                left -= 1
    for fd in by_fd:
        os.close(fd)
    epoll.close()
    return seen


def main() -> None:
    """Read the pids, watch them, print what was seen."""
    pids = json.loads(sys.stdin.readline())
    timeout = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    deadline = time.monotonic() + timeout
    seen = observe(pids, deadline)
    json.dump({str(pid): times for pid, times in seen.items()}, sys.stdout)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
