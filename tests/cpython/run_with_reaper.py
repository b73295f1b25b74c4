"""Run CPython's own regression tests with a Reaper installed, from the main thread.

    python tests/cpython/run_with_reaper.py [--scope owned|all] [--backend ...] TEST [TEST ...]

zombiereaper promises that code which starts and waits for its own children keeps working
exactly, Reaper or not: this runs ``test_subprocess`` and ``test_asyncio.test_subprocess``
(CPython's own proof of that code) while a Reaper's SIGCHLD handler, reaping thread and,
with ``--scope all``, its sweep of unknown children are active.
"""

from __future__ import annotations

import argparse
import sys

from zombiereaper import Reaper


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scope", choices=["owned", "all"], default="owned")
    parser.add_argument("--backend", choices=["pidfd", "sigchld"], default=None)
    parser.add_argument("tests", nargs="+")
    options = parser.parse_args()
    from test.libregrtest.main import main as regrtest

    # regrtest reads sys.argv itself: hand it only what is its own.
    sys.argv = [sys.argv[0], "--quiet", *options.tests]
    with Reaper(scope=options.scope, backend=options.backend):
        try:
            regrtest()
        except SystemExit as end:  # regrtest always ends with sys.exit
            code = end.code
    return code if isinstance(code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
