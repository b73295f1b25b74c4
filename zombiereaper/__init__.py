"""zombiereaper: reap child processes without stealing anybody's exit status."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._backends import can_recover_stolen_status as can_recover_stolen_status
from ._backends import can_use_pidfd as can_use_pidfd
from ._child import Child as Child
from ._child import CompletedRun as CompletedRun
from ._child import SpawnedChild as SpawnedChild
from ._errors import BackendUnavailableError as BackendUnavailableError
from ._errors import ChildLeakWarning as ChildLeakWarning
from ._errors import NotInstalledError as NotInstalledError
from ._errors import NotOurChildError as NotOurChildError
from ._errors import ReaperError as ReaperError
from ._errors import StatusLostError as StatusLostError
from ._errors import WaitTimeout as WaitTimeout
from ._reaper import Reaper as Reaper
from ._registry import Registry as Registry
from ._status import ExitStatus as ExitStatus
from ._status import decode_wait_status as decode_wait_status
from ._supervise import Backoff as Backoff
from ._supervise import Intensity as Intensity
from ._supervise import Service as Service
from ._supervise import ServiceEvent as ServiceEvent
from ._supervise import ServiceTimeout as ServiceTimeout

__all__ = [
    "BackendUnavailableError",
    "Backoff",
    "Child",
    "ChildLeakWarning",
    "CompletedRun",
    "ExitStatus",
    "Intensity",
    "NotInstalledError",
    "NotOurChildError",
    "Reaper",
    "ReaperError",
    "Registry",
    "Service",
    "ServiceEvent",
    "ServiceTimeout",
    "SpawnedChild",
    "StatusLostError",
    "WaitTimeout",
    "can_recover_stolen_status",
    "can_use_pidfd",
    "decode_wait_status",
]

from ._version import __version__ as __version__

# Shown as zombiereaper.X in tracebacks and warnings, where users import them from.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj

if TYPE_CHECKING:
    # Deprecated: still there for type checkers while __getattr__ below warns at run time.
    from .testing import ManualClock as ManualClock
else:

    def __getattr__(name: str) -> object:
        """Give the names that moved away, with a DeprecationWarning."""
        if name == "ManualClock":
            import warnings  # noqa: PLC0415 - only a deprecated name needs it

            warnings.warn(
                "zombiereaper.ManualClock moved to zombiereaper.testing: use "
                "`from zombiereaper.testing import ManualClock` (the old name will be removed)",
                DeprecationWarning,
                stacklevel=2,
            )
            from .testing import ManualClock  # noqa: PLC0415 - its home, imported on demand

            return ManualClock
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


del TYPE_CHECKING
