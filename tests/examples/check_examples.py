"""Check every Python example in README.md and docs/: it passes ``mypy --strict`` and it runs.

    python tests/examples/check_examples.py [--types] [--run] [--keep DIR]

With neither ``--types`` nor ``--run``, both. Each fenced ``python`` block is one example,
named ``file:line``. A MyST comment line right above a block can say how to run it::

    % example: argv sh -c "exit 3"
    % example: exit 3
    % example: skip why it cannot run here

An example runs as ``python -W error FILE [argv]`` in a fresh directory, with a 60 s timeout
(one that defines ``test_`` functions runs under ``python -W error -m pytest``);
it must exit 0 (or the code given) and leave no child behind: this process is a child
subreaper while the examples run, so a leaked orphan comes back here and is caught.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 60.0

_BLOCK = re.compile(r"^```python\n(?P<code>.*?)^```", re.S | re.M)
_DIRECTIVE = re.compile(r"^% example: (?P<what>argv|exit|skip)\b ?(?P<value>.*)$")


@dataclass
class Example:
    """One fenced python block and how to run it."""

    source: Path
    line: int
    code: str
    argv: list[str] = field(default_factory=list)
    exit_code: int = 0
    skip: str | None = None

    @property
    def name(self) -> str:
        """``file:line``, as a reader finds it."""
        return f"{self.source.relative_to(ROOT)}:{self.line}"

    @property
    def runner(self) -> list[str]:
        """How to run it: a test module under pytest (which fails if no test ran)."""
        if re.search(r"^def test_", self.code, re.M):
            return ["-m", "pytest", "-q", "-p", "no:cacheprovider"]
        return []

    @property
    def module_name(self) -> str:
        """A file name for it (mypy wants unique module names)."""
        return f"{self.source.stem}_{self.line}.py".replace("-", "_")


def collect() -> list[Example]:
    """Every example of README.md and docs/*.md, in order."""
    examples = []
    for source in SOURCES:
        text = source.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            example = Example(source, line, match.group("code"))
            above = text[: match.start()].splitlines()
            for directive in reversed(above):
                found = _DIRECTIVE.match(directive)
                if found is None:
                    break
                what, value = found.group("what"), found.group("value")
                if what == "argv":
                    example.argv = shlex.split(value)
                elif what == "exit":
                    example.exit_code = int(value)
                else:
                    example.skip = value or "no reason given"
            examples.append(example)
    return examples


def check_types(examples: list[Example], directory: Path) -> list[str]:
    """Write the examples to ``directory`` and run ``mypy --strict`` on them."""
    paths = []
    for example in examples:
        path = directory / example.module_name
        path.write_text(example.code, encoding="utf-8")
        paths.append(str(path))
    # The files written now, not the directory: a kept one may hold older examples.
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *paths],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return []
    by_module = {example.module_name: example.name for example in examples}
    problems = []
    for line in done.stdout.splitlines():
        module, _, rest = line.partition(":")
        name = by_module.get(Path(module).name)
        if name is not None and ": error:" in line:
            problems.append(
                f"{name} (block line {rest.split(':', 1)[0]}): {rest.split(': ', 1)[1]}"
            )
    return problems or [done.stdout + done.stderr]


def run(example: Example, directory: Path) -> str | None:
    """Run one example; a description of what went wrong, or None."""
    path = directory / example.module_name
    path.write_text(example.code, encoding="utf-8")
    workdir = Path(tempfile.mkdtemp(dir=directory))
    try:
        done = subprocess.run(
            [sys.executable, "-W", "error", *example.runner, str(path), *example.argv],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=workdir,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"still ran after {TIMEOUT:g} s"
    finally:
        leftovers = _reap_leftovers()
    if done.returncode != example.exit_code:
        output = (done.stdout + done.stderr).strip()[-2000:]
        return f"exited {done.returncode}, not {example.exit_code}:\n{output}"
    if leftovers:
        return f"left {leftovers} process(es) running behind it"
    return None


#: How long children left by an example get to exit by themselves (multiprocessing's resource
#: tracker and fork server end a moment after the program that started them).
_GRACE = 3.0


def _children() -> list[int]:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def _reap_leftovers() -> int:
    """Reap children left behind (orphans come back to us: we are a subreaper).

    Returns:
        How many were still running after the grace, and had to be killed.
    """
    deadline = time.monotonic() + _GRACE
    while True:
        running = []
        for pid in _children():
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if not reaped:
                running.append(pid)
        if not running:
            return 0
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    killed = 0
    while running:
        for pid in running:
            killed += 1
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        running = _children()
    return killed


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def main() -> int:
    """Check the examples; exit 1 if any fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", action="store_true", help="only type-check them")
    parser.add_argument("--run", action="store_true", help="only run them")
    parser.add_argument("--keep", type=Path, help="write the examples here, and keep them")
    options = parser.parse_args()
    both = not (options.types or options.run)
    examples = collect()
    if not examples:
        print("no examples found: is this run from the project's root?", file=sys.stderr)
        return 1
    directory = options.keep or Path(tempfile.mkdtemp(prefix="zr-examples-"))
    directory.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    if options.types or both:
        failures += check_types(examples, directory)
        print(f"types: {len(examples)} examples checked with mypy --strict")
    if options.run or both:
        _become_subreaper()
        for example in examples:
            if example.skip is not None:
                print(f"  skipped {example.name}: {example.skip}")
                continue
            problem = run(example, directory)
            print(f"  {'FAILED' if problem else 'ok'} {example.name}", flush=True)
            if problem:
                failures.append(f"{example.name}: {problem}")
    for failure in failures:
        print(failure, file=sys.stderr)
    print(f"{len(examples)} examples, {len(failures)} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
