"""The benchmark suite's quick variant runs to the end and reports every benchmark.

It asserts nothing about time: only that ``benchmarks/run.py --quick`` works, so the suite
cannot rot between full runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

RUNNER = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
AB = RUNNER.with_name("ab_throughput.py")
BENCHMARKS = ("throughput", "latency", "scaling", "memory", "zombies", "import", "init", "init_rss")
SECTIONS = (
    "1. Throughput",
    "2. Exit-to-record latency",
    "3. Scaling",
    "4. Memory",
    "5. Zombie lifetime",
    "6. Import time",
    "7. Init start-up",
    "8. Init memory",
    "Targets",
)

pytestmark = pytest.mark.skipif(not RUNNER.exists(), reason="benchmarks/ is not in this tree")


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """One quick run of the suite, shared by the tests below."""
    out = tmp_path_factory.mktemp("bench")
    json_path, png_path = out / "results.json", out / "chart.png"
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--quick", "--json", str(json_path), "--png", str(png_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=out,
        check=False,
    )
    return done, json_path, png_path


def _results(
    quick_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """The quick run, checked to have exited 0, and its JSON."""
    done, json_path, _ = quick_run
    assert done.returncode == 0, done.stderr
    return done, json.loads(json_path.read_text(encoding="utf-8"))


@pytest.mark.timeout(150)
def test_quick_run_prints_every_section(
    quick_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    """The quick variant exits 0 and its table has a section for every benchmark and the targets."""
    done, _, _ = quick_run
    assert done.returncode == 0, done.stderr
    for section in SECTIONS:
        assert section in done.stdout, f"{section!r} missing from:\n{done.stdout}"


@pytest.mark.timeout(150)
def test_quick_run_writes_json_with_every_benchmark(
    quick_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    """The JSON holds every benchmark with results for each contender; every child was reaped."""
    done, results = _results(quick_run)
    for key in ("meta", "targets", *BENCHMARKS):
        assert key in results, key
    contenders = results["throughput"]["contenders"]
    assert "Popen+wait" in contenders
    assert any(name.startswith("zombiereaper[") for name in contenders)
    assert results["latency"]["results"]
    assert results["scaling"]["results"]
    for entry in results["memory"]["results"].values():
        assert len(entry["readings"]) == len(results["memory"]["checkpoints"])
    for entry in results["zombies"]["results"].values():
        assert entry["not_recorded"] == 0
        assert entry["zombies_left"] == 0
    assert "killed and reaped" not in done.stderr, "the run left children for the cleanup"


@pytest.mark.timeout(150)
def test_quick_run_writes_asyncio_and_startup_rows(
    quick_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    """The JSON has the event-loop contender, and the start-up rows with their raw samples."""
    _, results = _results(quick_run)
    contenders = results["throughput"]["contenders"]
    assert "asyncio subprocess" in contenders
    assert "zombiereaper[pidfd] wait_async" in contenders or (
        "zombiereaper[sigchld] wait_async" in contenders
    )
    for entry in contenders.values():
        assert len(entry["ratios_to_asyncio"]) == results["throughput"]["rounds"]
    for key in ("import", "init"):
        data = results[key]
        assert data["target_row"] in data["contenders"]
        assert data["baseline"] in data["contenders"]
        for entry in data["contenders"].values():
            assert len(entry["seconds"]) == data["rounds"]
            assert len(entry["ratios_to_baseline"]) == data["rounds"]
        package = Path(results["meta"]["package"]["path"])
        if os.access(package / "__pycache__", os.W_OK) or os.access(package, os.W_OK):
            assert all(data["bytecode_cached"].values()), "the warm-up wrote no .pyc"
    rss = results["init_rss"]
    assert rss["target_row"] in rss["contenders"]
    for entry in rss["contenders"].values():
        assert len(entry["vm_rss"]) == rss["rounds"]
        assert all(size > 0 for size in entry["vm_rss"])
    for data in (results["init"], rss):
        for tool in ("tini", "dumb-init"):
            measured = any(name.startswith(f"{tool} ") for name in data["contenders"])
            assert measured != (tool in data["skipped"]), tool


@pytest.mark.timeout(150)
def test_quick_run_draws_chart_or_says_why_not(
    quick_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    """The chart is written, or skipped with a message when matplotlib is not installed."""
    done, _, png_path = quick_run
    assert done.returncode == 0, done.stderr
    assert png_path.exists() or "matplotlib is not installed" in done.stderr


def _run_ab(*args: str) -> subprocess.CompletedProcess[str]:
    """benchmarks/ab_throughput.py with ``args``, run to its end."""
    return subprocess.run(
        [sys.executable, str(AB), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.timeout(150)
def test_the_ab_comparison_runs_each_interpreter_in_turns() -> None:
    """benchmarks/ab_throughput.py prints one median ratio per interpreter, every round's too."""
    options = ["--rounds", "2", "--children", "30", "--backend", "sigchld"]
    done = _run_ab(sys.executable, sys.executable, *options)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    for line in lines:
        ratio, python, rest = line.split(maxsplit=2)
        assert ratio.endswith("x") and float(ratio[:-1]) > 0
        assert python == sys.executable and rest.startswith("(sigchld; rounds: ")


@pytest.mark.timeout(150)
def test_the_ab_comparison_counts_cpu_when_asked() -> None:
    """With --cpu, each interpreter's line is followed by its CPU per child beyond Popen's."""
    options = ["--rounds", "1", "--children", "30", "--backend", "sigchld", "--cpu"]
    done = _run_ab(sys.executable, *options)
    assert done.returncode == 0, done.stderr
    ratio_line, cpu_line = done.stdout.splitlines()
    assert ratio_line.split()[1] == sys.executable
    words = cpu_line.split()
    assert words[:5] == ["CPU", "per", "child", "beyond", "Popen's:"], cpu_line
    float(words[5])  # a number of us (may be negative: CPU is noisy over 30 children)
    if sys.platform == "linux":
        assert cpu_line.endswith("us of it on the reaping thread"), cpu_line


@pytest.mark.timeout(150)
def test_the_ab_comparison_times_the_latency_when_asked() -> None:
    """With --latency, each interpreter's line is followed by its p50 and p90 to on_exit."""
    options = ["--rounds", "1", "--children", "30", "--backend", "sigchld", "--latency"]
    done = _run_ab(sys.executable, *options, "--kills", "5")
    assert done.returncode == 0, done.stderr
    ratio_line, latency_line = done.stdout.splitlines()
    assert ratio_line.split()[1] == sys.executable
    words = latency_line.split()
    assert words[:4] == ["SIGKILL", "->", "on_exit:", "p50"], latency_line
    p50, p90 = float(words[4]), float(words[7])
    assert 0 < p50 <= p90, latency_line
