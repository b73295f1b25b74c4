"""Compare the throughput of two (or more) zombiereaper installations, in turns.

Each installation is a Python interpreter that imports its own zombiereaper (a virtualenv with
an editable install of another checkout, say). Every round runs each interpreter once, in a
fresh process, rotating the order; each run measures ``spawn()`` + ``wait()`` of ``/bin/true``
children (at most 100 alive) against bare ``Popen`` + ``wait`` in the same process, moments
apart, and prints the ratio (above 1.00x is faster than ``Popen``). The medians of those
ratios are comparable between installations even on a busy machine, where absolute times are
not::

    python benchmarks/ab_throughput.py /path/to/old/venv/bin/python .venv/bin/python

The full suite (``benchmarks/run.py``) measures one installation; this answers "did a change
make reaping slower?" (docs/performance.md quotes its figures).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

#: Run in each interpreter: warm up, then Popen, zombiereaper, Popen; prints the ratio.
_MEASURE = """
import collections, subprocess, sys, time
from zombiereaper import Reaper

backend, n = sys.argv[1], int(sys.argv[2])


def run(start, wait):
    pending = collections.deque()
    began = time.perf_counter()
    for _ in range(n):
        if len(pending) >= 100:
            wait(pending.popleft())
        pending.append(start())
    for item in pending:
        wait(item)
    return time.perf_counter() - began


def popen():
    return run(lambda: subprocess.Popen(["/bin/true"]), lambda p: p.wait())


def reaper():
    with Reaper(backend=backend) as r:
        return run(lambda: r.spawn(["/bin/true"]), lambda c: c.wait())


reaper()
before, ours, after = popen(), reaper(), popen()
print((before + after) / 2 / ours)
"""


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print each installation's median ratio to Popen + wait."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pythons", nargs="+", help="interpreters, each with its zombiereaper")
    parser.add_argument("--backend", choices=["pidfd", "sigchld"], default="pidfd")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--children", type=int, default=1500)
    args = parser.parse_args(argv)
    count = len(args.pythons)
    ratios: list[list[float]] = [[] for _ in args.pythons]  # by position: one may repeat
    for number in range(args.rounds):
        for index in [(number + step) % count for step in range(count)]:
            python = args.pythons[index]
            out = subprocess.run(
                [python, "-c", _MEASURE, args.backend, str(args.children)],
                capture_output=True,
                text=True,
                check=True,
                cwd="/",  # import the interpreter's own zombiereaper, not a checkout's
                timeout=600,
            ).stdout
            ratios[index].append(float(out))
        print(f"round {number + 1}/{args.rounds} done", file=sys.stderr)
    for python, values in zip(args.pythons, ratios, strict=True):
        spread = " ".join(f"{value:.2f}" for value in values)
        print(f"{statistics.median(values):.2f}x  {python}  ({args.backend}; rounds: {spread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
