"""Run zombiereaper's benchmark suite and write its table, JSON and chart.

The one documented command, from the repository root::

    python benchmarks/run.py

prints the table and writes ``benchmarks/results/results.json`` and
``benchmarks/results/performance.png`` (about 9 minutes on 2 cores). ``--quick`` runs a
scaled-down smoke variant in seconds. See ``benchmarks/README.md`` for what each benchmark
measures and how.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zrbench import common, latency, memory, report, startup, throughput, zombies

import zombiereaper

if TYPE_CHECKING:
    from collections.abc import Callable

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
#: Latency and scaling share their passes (and their idle pools), so asking for one runs both.
BENCHMARKS = ("throughput", "latency", "scaling", "memory", "zombies", "startup")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _package_state() -> dict[str, Any]:
    """Which zombiereaper was measured: where it was imported from, and a hash of its sources."""
    package = Path(zombiereaper.__file__).resolve().parent
    digest = hashlib.sha256()
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode())
        digest.update(source.read_bytes())
    return {"path": str(package), "sources_sha256": digest.hexdigest()[:16]}


def _git_state(package: Path) -> dict[str, Any] | None:
    """The commit of the measured sources, when they are a git checkout's (else None)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=package, capture_output=True, text=True, check=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    top = git("rev-parse", "--show-toplevel")
    if top is None or not package.is_relative_to(Path(top).resolve()):
        return None
    status = git("status", "--porcelain", "--", ".")
    return {"commit": git("rev-parse", "HEAD"), "package_modified": bool(status)}


def machine_info(config: common.Config, fd_limits: tuple[int, int]) -> dict[str, Any]:
    """Where and how the run happened."""
    return {
        "mode": config.name,
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "zombiereaper": zombiereaper.__version__,
        "package": _package_state(),
        "git": _git_state(Path(zombiereaper.__file__).resolve().parent),
        "backends": list(common.BACKENDS),
        "fd_limit": list(fd_limits),
        "config": dataclasses.asdict(config),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Benchmark zombiereaper against the standard library.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a scaled-down smoke run that takes seconds (its numbers mean little)",
    )
    parser.add_argument(
        "--json", type=Path, help=f"where to write the JSON (default {DEFAULT_OUT}/results.json)"
    )
    parser.add_argument(
        "--png", type=Path, help=f"where to write the chart (default {DEFAULT_OUT}/performance.png)"
    )
    parser.add_argument("--no-png", action="store_true", help="do not draw the chart")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="PATH",
        help="run nothing: print the table and draw the chart of an earlier run's JSON",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        help="run only this benchmark (repeatable; latency and scaling always run together)",
    )
    return parser.parse_args(argv)


def run_suite(config: common.Config, only: set[str], log: Callable[[str], None]) -> dict[str, Any]:
    """Run the chosen benchmarks in order and gather their results."""
    results: dict[str, Any] = {}
    if "throughput" in only:
        results["throughput"] = throughput.run(config, log)
    if only & {"latency", "scaling"}:
        results["latency"], results["scaling"] = latency.run(config, log)
    if "memory" in only:
        results["memory"] = memory.run(config, log)
    if "zombies" in only:
        results["zombies"] = zombies.run(config, log)
    if "startup" in only:
        results.update(startup.run(config, log))
    return results


def replay(json_path: Path, png_path: Path | None, log: Callable[[str], None]) -> int:
    """Print the table of an earlier run, and draw its chart when ``png_path`` is given."""
    results: dict[str, Any] = json.loads(json_path.read_text(encoding="utf-8"))
    results["targets"] = report.targets(results)
    print(report.render(results))
    if png_path is not None and report.write_png(results, png_path, log):
        log(f"wrote {png_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the suite; 0 when it ran (targets met or not), 130 when interrupted."""
    args = parse_args(argv)
    config = common.QUICK if args.quick else common.FULL
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    if args.from_json is not None:
        return replay(args.from_json, args.png, log)

    fd_limits = common.raise_fd_limit()
    needed = max(config.latency_levels) + config.window + 64
    if fd_limits[0] < needed:
        log(f"warning: only {fd_limits[0]} descriptors; the pidfd backend may fall back")
    results: dict[str, Any] = {"meta": machine_info(config, fd_limits)}
    only = set(args.only or BENCHMARKS)
    try:
        with common.children_cleaned_up(log):
            results.update(run_suite(config, only, log))
    except KeyboardInterrupt:
        log("interrupted: every child was killed and reaped")
        return 130
    results["meta"]["seconds"] = time.perf_counter() - started
    results["targets"] = report.targets(results)
    print(report.render(results))
    json_path = args.json or DEFAULT_OUT / "results.json"
    report.write_json(results, json_path)
    log(f"wrote {json_path}")
    if not args.no_png:
        png_path = args.png or DEFAULT_OUT / "performance.png"
        if report.write_png(results, png_path, log):
            log(f"wrote {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
