"""Benchmarks 6 to 8, start-up: import time, the init's start-up, and the init's resident memory.

All three start fresh processes of the interpreter this suite runs on (``sys.executable``):

- **import time**: ``python -c "import zombiereaper"`` against ``python -c pass``, and
  ``python -c "from zombiereaper import Reaper"`` as an informational row;
- **init start-up**: ``zombiereaper run -- /bin/true`` against ``python -I -c pass``, with
  ``tini -s -- /bin/true`` and ``dumb-init /bin/true`` beside it when they are installed;
- **init memory**: the resident size (``VmRSS``) of ``zombiereaper run -- sleep 60`` once its
  program runs, with tini and dumb-init beside it, and a bare ``python -I`` that starts the same
  program and waits for it as the floor of any init written in Python.

The timed children run in turns, in an order that rotates from round to round, and each round
gives every contender a ratio to the baseline measured moments apart: the suite reports the
medians of the times and of those ratios. A time runs from just before ``os.posix_spawn`` to
the return of ``os.waitpid``.

The measured children run without ``PYTHONDONTWRITEBYTECODE`` (whatever this process's
environment says) and each command runs once before the timing starts, so that every module's
``.pyc`` exists: the benchmark measures imports, not compilation. The JSON says whether the
package's bytecode was there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import psutil

import zombiereaper

from .common import BENCH_DIR, IDLE_ARGS, TRUE_ARGS, median, percentile, rotated

if TYPE_CHECKING:
    from collections.abc import Callable

    from .common import Config

IMPORT_BASELINE: Final = "python -c pass"
IMPORT_TARGET_ROW: Final = 'python -c "import zombiereaper"'
INIT_BASELINE: Final = "python -I -c pass"
INIT_TARGET_ROW: Final = "zombiereaper run -- /bin/true"
RSS_TARGET_ROW: Final = "zombiereaper run -- sleep 60"
RSS_REFERENCE_ROW: Final = "python -I, posix_spawn + waitpid (floor)"
#: How long an init may take to start its program before the benchmark gives up on it.
SYNC_TIMEOUT: Final = 10.0
#: The program the memory benchmark's inits run, and how it is recognized once it runs.
SLEEP_ARGS: Final = [IDLE_ARGS[0], "60"]
SLEEP_NAME: Final = os.path.basename(IDLE_ARGS[0])
#: The floor of the memory benchmark: a bare interpreter that starts the program and waits.
SPAWN_AND_WAIT: Final = (
    "import os, sys; os.waitpid(os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ), 0)"
)

Command = tuple[str, list[str]]

# stdin, stdout and stderr of the timed children: nothing to read, nothing to write to a tty.
_QUIET: Final = [
    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
]


# --- the children's environment -----------------------------------------------------------------


def _imported_file(env: dict[str, str]) -> str | None:
    """Which zombiereaper ``python -c "import zombiereaper"`` imports with ``env``, or None."""
    done = subprocess.run(
        [sys.executable, "-c", "import zombiereaper; print(zombiereaper.__file__)"],
        env=env,
        cwd=BENCH_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() or None


def measuring_env() -> tuple[dict[str, str], bool]:
    """The environment of the measured children, and whether it had to set ``PYTHONPATH``.

    It is this process's, without ``PYTHONDONTWRITEBYTECODE`` (so that the warm-up run writes
    the ``.pyc`` files). ``PYTHONPATH`` gains the directory of the zombiereaper this process
    imported only when the children would import another one: every directory on the path costs
    every import a look-up, so it is not added for nothing.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    ours = os.path.realpath(zombiereaper.__file__)
    found = _imported_file(env)
    if found is not None and os.path.realpath(found) == ours:
        return env, False
    package_root = os.path.dirname(os.path.dirname(ours))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    found = _imported_file(env)
    if found is None or os.path.realpath(found) != ours:
        raise RuntimeError(f"the children import zombiereaper from {found}, not from {ours}")
    return env, True


def bytecode_cached() -> dict[str, bool]:
    """Whether the ``.pyc`` of the package's entry modules exists (the warm-up should write it)."""
    package = Path(zombiereaper.__file__).resolve().parent
    return {
        f"zombiereaper/{name}": os.path.exists(importlib.util.cache_from_source(package / name))
        for name in ("__init__.py", "_cli.py")
    }


def zombiereaper_command() -> tuple[list[str], str]:
    """How to start the ``zombiereaper`` command: the console script next to ``sys.executable``.

    Returns:
        The argv prefix, and how it was found (``console script`` or ``python -m``).
    """
    script = Path(sys.executable).parent / "zombiereaper"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)], "console script"
    return [sys.executable, "-m", "zombiereaper"], "python -m (no console script found)"


def other_inits(program: list[str], shown: str) -> tuple[list[Command], dict[str, str]]:
    """tini and dumb-init running ``program`` as non-PID-1, where installed; why not otherwise.

    Each row is named after its command line, with ``shown`` for the program.

    tini wants ``-s`` (become a subreaper) when it is not PID 1, or it warns on every start;
    dumb-init needs no option.
    """
    found: list[Command] = []
    missing: dict[str, str] = {}
    for tool, options in (("tini", ["-s", "--"]), ("dumb-init", [])):
        path = shutil.which(tool)
        if path is None:
            missing[tool] = "not installed (not on PATH)"
            continue
        found.append((" ".join([tool, *options, shown]), [path, *options, *program]))
    return found, missing


# --- timing fresh processes ---------------------------------------------------------------------


def time_once(argv: list[str], env: dict[str, str]) -> float:
    """The seconds from starting ``argv`` to reaping it.

    Raises:
        RuntimeError: It did not exit 0 (with what it printed, from a second, untimed run).
    """
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=_QUIET)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        again = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        raise RuntimeError(
            f"{argv} exited {os.waitstatus_to_exitcode(status)}: {again.stderr.strip()}"
        )
    return elapsed


def time_in_turns(
    commands: list[Command], baseline: str, env: dict[str, str], rounds: int, warmups: int
) -> dict[str, Any]:
    """Time each command ``rounds`` times in turns, the order rotating every round.

    Returns:
        Per command: every sample, the median, p90, and the median over rounds of its time
        divided by the baseline's in the same round (lower is faster).
    """
    for _, argv in commands:
        for _ in range(warmups):
            time_once(argv, env)
    times: dict[str, list[float]] = {name: [] for name, _ in commands}
    for round_index in range(rounds):
        for name, argv in rotated(commands, round_index):
            times[name].append(time_once(argv, env))
    base = times[baseline]
    results: dict[str, Any] = {}
    for name, argv in commands:
        own = times[name]
        ratios = [mine / theirs for mine, theirs in zip(own, base, strict=True)]
        results[name] = {
            "argv": argv,
            "seconds": own,
            "median_seconds": median(own),
            "p90_seconds": percentile(own, 90),
            "ratio_to_baseline": median(ratios),
            "ratios_to_baseline": ratios,
        }
    return results


# --- an init's resident memory ------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in bytes, from ``/proc/<pid>/status``."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as file:
        for line in file:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024
    return found


def _runs_program(pid: int) -> bool:
    """Whether ``pid`` has exec'd the program: between fork and exec it shows its parent's argv."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            argv0 = file.read().split(b"\0", 1)[0]
    except OSError:
        return False
    return os.path.basename(argv0).decode(errors="replace") == SLEEP_NAME


def wait_for_program(init: subprocess.Popen[bytes], timeout: float) -> int:
    """Poll until ``init`` has a child that runs the program; return that child's pid.

    Raises:
        RuntimeError: ``init`` exited first, or ``timeout`` passed.
    """
    deadline = time.monotonic() + timeout
    process = psutil.Process(init.pid)
    while time.monotonic() < deadline:
        if init.poll() is not None:
            raise RuntimeError(f"{init.args!r} exited {init.returncode} before its program ran")
        with contextlib.suppress(psutil.Error):
            for child in process.children():
                if _runs_program(child.pid):
                    return child.pid
        time.sleep(0.001)
    raise RuntimeError(f"{init.args!r} did not start its program within {timeout:g} s")


def stop_init(init: subprocess.Popen[bytes]) -> None:
    """Kill the init's descendants (its program), let it exit and reap it; kill it if it lingers."""
    with contextlib.suppress(psutil.Error):
        for descendant in psutil.Process(init.pid).children(recursive=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(descendant.pid, signal.SIGKILL)
    try:
        init.wait(timeout=SYNC_TIMEOUT)
    except subprocess.TimeoutExpired:
        init.kill()
        init.wait()


def rss_once(argv: list[str], env: dict[str, str]) -> dict[str, int]:
    """Start the init ``argv``, read its memory once its program runs, then stop it all."""
    init = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_program(init, SYNC_TIMEOUT)
        return _proc_status(init.pid)
    finally:
        stop_init(init)


def rss_in_turns(commands: list[Command], env: dict[str, str], rounds: int) -> dict[str, Any]:
    """Read every init's memory ``rounds`` times, in turns (the memory needs no warm-up).

    Returns:
        Per init: every reading of ``VmRSS`` and ``VmHWM`` (bytes) and their medians.
    """
    readings: dict[str, list[dict[str, int]]] = {name: [] for name, _ in commands}
    for round_index in range(rounds):
        for name, argv in rotated(commands, round_index):
            readings[name].append(rss_once(argv, env))
    return {
        name: {
            "argv": argv,
            "vm_rss": [r["VmRSS"] for r in readings[name]],
            "vm_hwm": [r["VmHWM"] for r in readings[name]],
            "median_vm_rss": median([float(r["VmRSS"]) for r in readings[name]]),
            "median_vm_hwm": median([float(r["VmHWM"]) for r in readings[name]]),
        }
        for name, argv in commands
    }


# --- the benchmark ------------------------------------------------------------------------------


def run(config: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """Run the three start-up benchmarks.

    Returns:
        ``import``, ``init`` and ``init_rss``: the commands, their samples, medians and ratios,
        and which rows were skipped and why.
    """
    env, pythonpath_added = measuring_env()
    rounds, warmups = config.startup_rounds, config.startup_warmups
    python = sys.executable

    log(f"startup: import time, {rounds} rounds")
    imports: list[Command] = [
        (IMPORT_BASELINE, [python, "-c", "pass"]),
        (IMPORT_TARGET_ROW, [python, "-c", "import zombiereaper"]),
        (
            'python -c "from zombiereaper import Reaper"',
            [python, "-c", "from zombiereaper import Reaper"],
        ),
    ]
    import_results = time_in_turns(imports, IMPORT_BASELINE, env, rounds, warmups)

    log(f"startup: init start-up, {rounds} rounds")
    prefix, found_as = zombiereaper_command()
    tools, missing = other_inits(TRUE_ARGS, TRUE_ARGS[0])
    inits: list[Command] = [
        (INIT_BASELINE, [python, "-I", "-c", "pass"]),
        (INIT_TARGET_ROW, [*prefix, "run", "--", *TRUE_ARGS]),
        *tools,
    ]
    init_results = time_in_turns(inits, INIT_BASELINE, env, rounds, warmups)

    log(f"startup: init memory, {config.init_rss_rounds} round(s)")
    sleepers, _ = other_inits(SLEEP_ARGS, "sleep 60")
    holders: list[Command] = [
        (RSS_TARGET_ROW, [*prefix, "run", "--", *SLEEP_ARGS]),
        *sleepers,
        (RSS_REFERENCE_ROW, [python, "-I", "-c", SPAWN_AND_WAIT, *SLEEP_ARGS]),
    ]
    rss_results = rss_in_turns(holders, env, config.init_rss_rounds)

    common: dict[str, Any] = {
        "python": python,
        "pythonpath_added": pythonpath_added,
        "bytecode_cached": bytecode_cached(),
        "rounds": rounds,
        "warmups": warmups,
    }
    return {
        "import": {
            **common,
            "baseline": IMPORT_BASELINE,
            "target_row": IMPORT_TARGET_ROW,
            "contenders": import_results,
        },
        "init": {
            **common,
            "baseline": INIT_BASELINE,
            "target_row": INIT_TARGET_ROW,
            "zombiereaper_command": prefix,
            "zombiereaper_found_as": found_as,
            "skipped": missing,
            "contenders": init_results,
        },
        "init_rss": {
            "rounds": config.init_rss_rounds,
            "program": SLEEP_ARGS,
            "target_row": RSS_TARGET_ROW,
            "reference_row": RSS_REFERENCE_ROW,
            "zombiereaper_command": prefix,
            "zombiereaper_found_as": found_as,
            "skipped": missing,
            "contenders": rss_results,
        },
    }
