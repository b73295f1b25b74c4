"""Compare the throughput of two (or more) zombiereaper installations, in turns.

Each installation is a Python interpreter that imports its own zombiereaper (a virtualenv with
an editable install of another checkout, say). Every round runs each interpreter once, in a
fresh process, rotating the order; each run measures ``spawn()`` + ``wait()`` of ``/bin/true``
children (at most 100 alive) against bare ``Popen`` + ``wait`` in the same process, moments
apart, and prints the ratio (above 1.00x is faster than ``Popen``). The medians of those
ratios are comparable between installations even on a busy machine, where absolute times are
not::

    python benchmarks/ab_throughput.py /path/to/old/venv/bin/python .venv/bin/python

Wall time on a shared 2-core machine moves by several points from run to run. ``--cpu`` also
prints the process CPU (user + system) that each child costs beyond what bare ``Popen`` +
``wait`` costs in the same run, and how much of it the reaping thread spent (Linux): steadier
figures for a difference of a few percent.

``--latency`` also times, each round and in turns, how long ``on_exit`` takes to run after an
idle child is sent SIGKILL (``--kills`` children, one at a time), and prints the medians of
the rounds' p50 and p90, as the latency benchmark of ``benchmarks/run.py`` measures it.

The full suite (``benchmarks/run.py``) measures one installation; this answers "did a change
make reaping slower?" (docs/performance.md quotes its figures).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

#: Run in each interpreter: warm up, then Popen, zombiereaper, Popen; prints the ratio, then
#: the process CPU per child (us) of Popen and of zombiereaper, and the reaping thread's share
#: of the latter (-1 where it cannot be read).
_MEASURE = """
import collections, resource, subprocess, sys, threading, time
from zombiereaper import Reaper

backend, n = sys.argv[1], int(sys.argv[2])
cpu = {}


def process_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def thread_cpu(name):
    for thread in threading.enumerate():
        if thread.name == name:
            try:
                with open(f"/proc/self/task/{thread.native_id}/schedstat") as stat:
                    return int(stat.read().split()[0]) / 1e9
            except OSError:
                break
    return None


def run(start, wait, key):
    pending = collections.deque()
    reaping = thread_cpu("zombiereaper")
    cpu_before, began = process_cpu(), time.perf_counter()
    for _ in range(n):
        if len(pending) >= 100:
            wait(pending.popleft())
        pending.append(start())
    for item in pending:
        wait(item)
    took = time.perf_counter() - began
    cpu.setdefault(key, []).append((process_cpu() - cpu_before) / n * 1e6)
    if reaping is not None:
        cpu["reaping"] = (thread_cpu("zombiereaper") - reaping) / n * 1e6
    return took


def popen():
    return run(lambda: subprocess.Popen(["/bin/true"]), lambda p: p.wait(), "popen")


def reaper():
    with Reaper(backend=backend) as r:
        return run(lambda: r.spawn(["/bin/true"]), lambda c: c.wait(), "ours")


reaper()
cpu.clear()
before, ours, after = popen(), reaper(), popen()
print((before + after) / 2 / ours)
print(sum(cpu["popen"]) / 2, cpu["ours"][0], cpu.get("reaping", -1))
"""


#: Run in each interpreter with --latency: kill idle children one at a time, time each
#: on_exit; prints the p50 and the p90 in us.
_LATENCY = """
import os, random, signal, subprocess, sys, threading, time
from zombiereaper import Reaper

backend, kills = sys.argv[1], int(sys.argv[2])
stamps = {}
arrived = threading.Condition()


def on_exit(status):
    now = time.perf_counter_ns()
    with arrived:
        stamps[status.pid] = now
        arrived.notify_all()


samples = []
with Reaper(backend=backend, on_exit=on_exit) as reaper:
    for _ in range(kills):
        child = reaper.spawn(["sleep", "600"], stdin=subprocess.DEVNULL)
        time.sleep(random.uniform(0.005, 0.010))  # idle, as in benchmarks/run.py's
        sent = time.perf_counter_ns()
        os.kill(child.pid, signal.SIGKILL)
        with arrived:
            if not arrived.wait_for(lambda: child.pid in stamps, 10):
                sys.exit(f"no on_exit for pid {child.pid} within 10 s")
        samples.append((stamps.pop(child.pid) - sent) / 1e3)
        child.wait(10)
samples.sort()
print(samples[len(samples) // 2], samples[int(len(samples) * 0.9)])
"""


def _run_in(python: str, script: str, *args: str) -> str:
    """``script``'s output, run by ``python`` on its own zombiereaper."""
    return subprocess.run(
        [python, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",  # import the interpreter's own zombiereaper, not a checkout's
        timeout=600,
    ).stdout


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print each installation's median ratio to Popen + wait."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pythons", nargs="+", help="interpreters, each with its zombiereaper")
    parser.add_argument("--backend", choices=["pidfd", "sigchld"], default="pidfd")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--children", type=int, default=1500)
    parser.add_argument(
        "--cpu", action="store_true", help="also print the CPU per child beyond Popen's"
    )
    parser.add_argument(
        "--latency", action="store_true", help="also time SIGKILL -> on_exit, each round"
    )
    parser.add_argument("--kills", type=int, default=100, help="children killed per latency run")
    args = parser.parse_args(argv)
    count = len(args.pythons)
    ratios: list[list[float]] = [[] for _ in args.pythons]  # by position: one may repeat
    #: Per round: (CPU per child beyond Popen's, the reaping thread's part), in us.
    cpus: list[list[tuple[float, float]]] = [[] for _ in args.pythons]
    #: Per round: (p50, p90) of SIGKILL -> on_exit, in us.
    latencies: list[list[tuple[float, float]]] = [[] for _ in args.pythons]
    for number in range(args.rounds):
        for index in [(number + step) % count for step in range(count)]:
            python = args.pythons[index]
            out = _run_in(python, _MEASURE, args.backend, str(args.children))
            ratio, cpu = out.splitlines()
            ratios[index].append(float(ratio))
            popen_us, ours_us, reaping_us = (float(word) for word in cpu.split())
            cpus[index].append((ours_us - popen_us, reaping_us))
            if args.latency:
                p50, p90 = _run_in(python, _LATENCY, args.backend, str(args.kills)).split()
                latencies[index].append((float(p50), float(p90)))
        print(f"round {number + 1}/{args.rounds} done", file=sys.stderr)
    for python, values, costs, waits in zip(args.pythons, ratios, cpus, latencies, strict=True):
        spread = " ".join(f"{value:.2f}" for value in values)
        print(f"{statistics.median(values):.2f}x  {python}  ({args.backend}; rounds: {spread})")
        if args.cpu:
            beyond = statistics.median(cost for cost, _ in costs)
            reaping = statistics.median(part for _, part in costs)
            thread = f", {reaping:.0f} us of it on the reaping thread" if reaping >= 0 else ""
            print(f"      CPU per child beyond Popen's: {beyond:.0f} us{thread}")
        if args.latency:
            p50 = statistics.median(low for low, _ in waits)
            p90 = statistics.median(high for _, high in waits)
            print(f"      SIGKILL -> on_exit: p50 {p50:.0f} us, p90 {p90:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
