"""Sessions: the test suite on every CPython >= 3.11 found here, ruff, mypy, the docs' examples
and the docs build."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True

CANDIDATES = [f"3.{minor}" for minor in range(11, 16)]


def _expose_pyenv_versions() -> None:
    """Let pyenv's shims answer for every installed CPython, not just the global one."""
    pyenv = shutil.which("pyenv")
    if pyenv is None or os.environ.get("PYENV_VERSION"):
        return
    listed = subprocess.run(
        [pyenv, "versions", "--bare"], capture_output=True, text=True, check=False
    ).stdout.split()
    wanted = [v for v in listed if any(v == c or v.startswith(c + ".") for c in CANDIDATES)]
    current = subprocess.run(
        [pyenv, "version-name"], capture_output=True, text=True, check=False
    ).stdout.strip()
    ordered = [current] + [v for v in wanted if v != current] if current in wanted else wanted
    if ordered:
        os.environ["PYENV_VERSION"] = ":".join(ordered)


def _available_pythons() -> list[str]:
    _expose_pyenv_versions()
    found = []
    for version in CANDIDATES:
        exe = shutil.which(f"python{version}")
        if (
            exe
            and subprocess.run([exe, "-c", ""], capture_output=True, check=False).returncode == 0
        ):
            found.append(version)
    return found


PYTHONS = _available_pythons() or ["3.11"]
ROOT = Path(__file__).parent


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite, warnings as errors (3.12's fork-in-threads warning included).

    Two pytest-xdist workers: the suite is mostly CPU-bound process start-ups, and two workers
    finish it in about 60 % of the time on two cores (each test is written to pass on a busy
    machine, and the other worker is one more load). ``nox -s tests -- -n 0`` runs it serially.
    """
    session.install("-e", ".[test]")
    session.run("python", "-W", "error", "-m", "pytest", "-n", "2", *session.posargs)


@nox.session(python=PYTHONS[-1])
def cpython(session: nox.Session) -> None:
    """CPython's own subprocess tests, passing with a Reaper installed (all scope, pidfd).

    On the newest Python found (about 45 s); ``nox -s cpython-3.11`` runs them on another.
    """
    session.install("-e", ".")
    session.run(
        "python",
        "tests/cpython/run_with_reaper.py",
        "--scope",
        "all",
        "test_subprocess",
        "test_asyncio.test_subprocess",
    )


@nox.session(python=PYTHONS[0])
def lint(session: nox.Session) -> None:
    """Check lint and formatting with ruff."""
    session.install("ruff==0.17.6")  # pinned: a new ruff release must not break CI by itself
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHONS[0])
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy --strict, and check every example of the docs.

    Each Python example of README.md and docs/ must pass mypy --strict as a user's code, and
    run (tests/examples/check_examples.py): one session, as both need the same tools.
    """
    session.install("-e", ".[test]", "mypy==2.4.1", "types-psutil")  # pinned, as ruff
    session.run("mypy", "--strict", "zombiereaper")
    # How typed code uses the API: these files must type-check as they are.
    session.run("mypy", "--strict", "tests/typecheck")
    session.run("python", "tests/examples/check_examples.py")


@nox.session(python=PYTHONS[0])
def docs(session: nox.Session) -> None:
    """Build the documentation, warnings as errors."""
    session.install("-e", ".[docs]")
    build = ROOT / "docs" / "_build"
    shutil.rmtree(build, ignore_errors=True)
    session.run(
        "python", "-m", "sphinx", "-W", "--keep-going", "-b", "html", "docs", str(build / "html")
    )
