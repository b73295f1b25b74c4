"""Running out of descriptors with the pidfd backend loses nothing: it falls back to sweeps."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .helpers import HAS_PIDFD

# Run in a child process: lowering RLIMIT_NOFILE in the test process would break the test run.
SCRIPT = r"""
import errno, json, logging, os, resource, sys
from zombiereaper import Reaper

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
with Reaper(backend="pidfd") as reaper:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    filler = []
    try:
        while True:
            filler.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as err:
        assert err.errno == errno.EMFILE
    # close_fds=False and an absolute path make Popen use posix_spawn, which needs no
    # descriptor of ours: only the pidfd cannot be had.
    children = [reaper.spawn(["/bin/sh", "-c", f"exit {n}"], close_fds=False) for n in range(20)]
    fallbacks = sum(c._watch.notice.fileno is None for c in children)
    codes = [c.wait(20).returncode for c in children]
    for fd in filler:
        os.close(fd)
    print(json.dumps({"codes": codes, "fallbacks": fallbacks, "recorded": len(reaper.registry)}))
"""


@pytest.mark.skipif(not HAS_PIDFD, reason="needs pidfd")
def test_pidfd_backend_falls_back_when_descriptors_run_out() -> None:
    """With RLIMIT_NOFILE exhausted, children are watched by sweeps and every status arrives."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["codes"] == list(range(20)) and result["recorded"] == 20, result
    # Nearly all fall back: the reaping thread frees its two reserve descriptors for a moment
    # to check an exited child's identity, and a spawn at that moment gets a pidfd after all.
    assert result["fallbacks"] >= 10, result
    assert "no pidfd for pid" in proc.stderr
