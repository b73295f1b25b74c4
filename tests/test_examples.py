"""The README's quick-start example runs and shows what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "quickstart.py"


def test_quickstart_runs_and_leaves_no_zombie() -> None:
    """examples/quickstart.py shows a zombie, then none, and keeps subprocess's exit code."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "in state 'zombie'" in proc.stdout
    assert "waited for none; zombies now: 0" in proc.stdout
    assert "returncode == 42" in proc.stdout
    assert proc.stdout.rstrip().endswith("zombies left: 0")
