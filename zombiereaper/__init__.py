"""zombiereaper: reap child processes without stealing anybody's exit status."""

from __future__ import annotations

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
from ._supervise import ManualClock as ManualClock
from ._supervise import Service as Service
from ._supervise import ServiceEvent as ServiceEvent

__all__ = [
    "BackendUnavailableError",
    "Backoff",
    "Child",
    "ChildLeakWarning",
    "CompletedRun",
    "ExitStatus",
    "Intensity",
    "ManualClock",
    "NotInstalledError",
    "NotOurChildError",
    "Reaper",
    "ReaperError",
    "Registry",
    "Service",
    "ServiceEvent",
    "SpawnedChild",
    "StatusLostError",
    "WaitTimeout",
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
