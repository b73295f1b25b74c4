"""Run Python code as PID 1 of a new PID namespace, where a test can choose the next pid.

A namespace of its own is what makes pid reuse testable: nothing else forks there, and
writing N to its ``/proc/sys/kernel/ns_last_pid`` gives the next process pid N + 1. So code
running inside can reap a child and hand its pid to the very next process it starts
(:func:`set_next_pid`), instead of waiting for the pid counter to wrap.

Every process in the namespace dies with its PID 1; this process is left with nothing: the
``unshare`` process is waited for, and on a timeout the namespace is killed and waited for too.
Tests skip, with the reason, where the namespace cannot be had (no ``unshare``, no
CAP_SYS_ADMIN): a probe of exactly what they need, run once.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, NamedTuple

import psutil
import pytest

#: The worktree's root: what the code inside imports ``tests`` and ``zombiereaper`` from.
ROOT: Final = Path(__file__).resolve().parent.parent

#: ``--kill-child``: should ``unshare`` itself die, its PID 1 gets SIGKILL, and so does every
#: process in the namespace with it.
UNSHARE_ARGS: Final = ("--pid", "--fork", "--mount-proc", "--kill-child")

#: Seconds a whole run as PID 1 may take before the namespace is killed.
DEFAULT_TIMEOUT: Final = 15.0

_RESULT_PREFIX: Final = "pidns-result: "

#: Starts a child with a chosen pid: prints "<own pid> <child's pid>".
_PROBE: Final = """
import os
with open("/proc/sys/kernel/ns_last_pid", "w", encoding="ascii") as file:
    file.write("499")
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print(os.getpid(), pid)
"""


class Pid1Result(NamedTuple):
    """How a run as PID 1 ended."""

    returncode: int
    stdout: str
    stderr: str


def set_next_pid(pid: int) -> None:
    """Make the next process (or thread) created in this PID namespace get ``pid``.

    Only inside a namespace run by :func:`run_as_pid1`; ``pid`` must be free, and nothing
    else may fork in between.
    """
    with open("/proc/sys/kernel/ns_last_pid", "w", encoding="ascii") as file:
        file.write(str(pid - 1))


@functools.cache
def why_no_pid_namespace() -> str | None:
    """Why code cannot run as PID 1 of a new PID namespace that picks its next pid; or None."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "no unshare command (util-linux)"
    try:
        probe = _run_unshared([unshare, *UNSHARE_ARGS, sys.executable, "-c", _PROBE])
    except (OSError, AssertionError) as err:
        return f"unshare failed: {err}"
    if probe.returncode != 0 or probe.stdout.split() != ["1", "500"]:
        detail = (probe.stderr.strip() or probe.stdout.strip()).splitlines()
        return (
            f"unshare --pid cannot start a namespace whose next pid can be chosen "
            f"(exit {probe.returncode}: {detail[-1] if detail else 'no output'}); "
            "it needs CAP_SYS_ADMIN"
        )
    return None


def skip_without_pid_namespace() -> None:
    """Skip the calling test where :func:`why_no_pid_namespace` has a reason."""
    reason = why_no_pid_namespace()
    if reason is not None:
        pytest.skip(f"needs a PID namespace of its own: {reason}")


def run_as_pid1(script: str, timeout: float = DEFAULT_TIMEOUT) -> Pid1Result:
    """Run ``python -c script`` as PID 1 of a new PID namespace and wait for it to end.

    The script runs in this interpreter, with this process's warning options, from the
    worktree's root (``tests`` and ``zombiereaper`` importable). Skips the test where no
    namespace can be had.

    Raises:
        AssertionError: It still ran after ``timeout`` seconds (it was killed, with its
            namespace, and waited for).
    """
    skip_without_pid_namespace()
    unshare = shutil.which("unshare")
    assert unshare is not None
    python_path = os.environ.get("PYTHONPATH")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), python_path] if python_path else [str(ROOT)]),
    }
    warning_options = [f"-W{option}" for option in sys.warnoptions]
    command = [unshare, *UNSHARE_ARGS, sys.executable, *warning_options, "-c", script]
    return _run_unshared(command, timeout, cwd=ROOT, env=env)


def _run_unshared(
    command: list[str], timeout: float = DEFAULT_TIMEOUT, **popen_kwargs: Any
) -> Pid1Result:
    """Run an ``unshare`` command line and wait for it, its output captured as text.

    Raises:
        AssertionError: It still ran after ``timeout`` seconds (the namespace was killed and
            ``unshare`` waited for); the message carries the output.
    """
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen_kwargs,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_namespace(process)
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"PID 1 still ran after {timeout:g} s and was killed\n"
            f"--- stdout\n{stdout}--- stderr\n{stderr}"
        ) from None
    return Pid1Result(process.returncode, stdout, stderr)


def _kill_namespace(process: subprocess.Popen[str]) -> None:
    """Kill the namespace's PID 1 (and with it everything inside), then wait for ``unshare``.

    PID 1 is killed rather than ``unshare``: it stays the child of ``unshare``, which reaps it,
    instead of coming back to this process (a subreaper in the test run) as an orphan.
    """
    try:
        pid1s = psutil.Process(process.pid).children()
    except psutil.NoSuchProcess:
        pid1s = []
    for pid1 in pid1s:
        try:
            pid1.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        process.wait(5.0)
    except subprocess.TimeoutExpired:
        process.kill()  # --kill-child then kills PID 1
        process.wait()


def call_as_pid1(
    function: Callable[..., Mapping[str, object]],
    *args: object,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Call ``function(*args)`` as PID 1 of a new PID namespace and return what it returned.

    ``function`` must be a module-level function importable from the worktree; its arguments
    and its result travel as JSON.

    Raises:
        AssertionError: It raised, printed no result, or still ran after ``timeout`` seconds.
    """
    script = (
        "import json\n"
        f"from {function.__module__} import {function.__qualname__} as function\n"
        f"result = function(*json.loads({json.dumps(args)!r}))\n"
        f"print({_RESULT_PREFIX!r} + json.dumps(result), flush=True)\n"
    )
    run = run_as_pid1(script, timeout)
    results = [
        line[len(_RESULT_PREFIX) :]
        for line in run.stdout.splitlines()
        if line.startswith(_RESULT_PREFIX)
    ]
    if run.returncode != 0 or len(results) != 1:
        raise AssertionError(
            f"{function.__qualname__}{args!r} as PID 1 exited {run.returncode}\n"
            f"--- stdout\n{run.stdout}--- stderr\n{run.stderr}"
        )
    result: dict[str, Any] = json.loads(results[0])
    return result
