"""The package's version, in one place (the CLI and the package read it from here)."""

from __future__ import annotations

__version__ = "0.1.0.dev0"
