"""The bounded, thread-safe registry of exits."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zombiereaper import ExitStatus, Registry


def _status(pid: int, code: int = 0) -> ExitStatus:
    return ExitStatus.from_returncode(pid, code)


def test_registry_is_a_read_only_mapping() -> None:
    """The registry reads like a Mapping and offers no way to write."""
    registry = Registry(3)
    registry._record(_status(10, 1))
    assert isinstance(registry, Mapping)
    assert registry[10].returncode == 1
    assert 10 in registry
    assert registry.get(11) is None
    assert dict(registry) == {10: _status(10, 1)}
    with pytest.raises(TypeError):
        registry[11] = _status(11)  # type: ignore[index]


@given(st.lists(st.integers(min_value=1, max_value=50), max_size=200), st.integers(0, 20))
def test_registry_keeps_the_latest_history_records(pids: list[int], history: int) -> None:
    """At most `history` records stay, the most recently recorded ones, latest per pid."""
    registry = Registry(history)
    for index, pid in enumerate(pids):
        registry._record(_status(pid, index % 256))
    expected: dict[int, int] = {}
    for index, pid in enumerate(pids):
        expected.pop(pid, None)
        expected[pid] = index % 256
    kept = list(expected.items())[-history:] if history else []
    assert [(pid, registry[pid].returncode) for pid in registry] == kept
    assert len(registry) == len(kept) <= history


def test_registry_can_be_read_while_another_thread_records() -> None:
    """Readers in other threads never see a broken mapping while records pour in."""
    registry = Registry(100)
    done = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not done.is_set():
                for pid in registry:
                    registry.get(pid)
                assert len(registry) <= 100
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    for pid in range(1, 20_001):
        registry._record(_status(pid))
    done.set()
    for reader in readers:
        reader.join(10)
    assert not errors
    assert list(registry) == list(range(19_901, 20_001))
