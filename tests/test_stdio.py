"""The descriptors zombiereaper holds never take the standard numbers 0, 1 and 2.

Code that closes its standard streams for a moment and dup2()s them back (CPython's
test_subprocess, daemons) must get back what it restores: had a pidfd of ours taken the free
number meanwhile, its dup2() would silently replace the pidfd, and our later close of "our
pidfd" would close the restored stream. Each case runs in a fresh interpreter, so that this
test's own streams are never touched.
"""

from __future__ import annotations

import subprocess

import pytest

from .helpers import py

#: Runs in a child interpreter: closes 0-2 with a Reaper installed (after a first child has
#: come and gone, so that the reaping thread has nothing left to import or open), starts
#: children, notes which descriptors zombiereaper holds, restores 0-2, and checks that the
#: children's exits are seen and, in the owned scope, that 0-2 survive them. Prints the
#: numbers it noted. (The all scope reads /proc on its timer sweeps: a file it reads for a few
#: microseconds can take a free standard number, the race that any threaded program runs
#: when it closes its standard streams; docs/concepts.md says so.)
_SCRIPT = """
import os, subprocess, sys
from zombiereaper import Reaper, _fds

backend, scope = sys.argv[1], sys.argv[2]
quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
with Reaper(backend=backend, scope=scope) as reaper:
    assert reaper.spawn(["/bin/true"], **quiet).wait(30).returncode == 0
    gate_read, gate_write = os.pipe()
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    for fd in (0, 1, 2):
        os.close(fd)
    # Each reads a line from the gate, its stdin: none exits before the gate opens.
    gated = dict(stdin=gate_read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = [reaper.spawn(["/bin/sh", "-c", "read line; exit 7"], **gated) for _ in range(3)]
    held = sorted(_fds.snapshot())
    for fd in (0, 1, 2):
        os.dup2(saved[fd], fd)
        os.close(saved[fd])
    os.write(gate_write, b"go\\n" * 3)
    os.close(gate_write)
    os.close(gate_read)
    codes = [child.wait(30).returncode for child in children]
    assert codes == [7, 7, 7], codes
if scope == "owned":
    for fd in (0, 1, 2):
        os.fstat(fd)  # still open: EBADF otherwise
print(*held)
"""


@pytest.mark.parametrize("scope", ["owned", "all"])
def test_our_descriptors_stay_above_the_standard_streams(backend: str, scope: str) -> None:
    """A Reaper's pidfds never take 0-2, and closing them never closes a restored stream."""
    result = subprocess.run(
        [*py(_SCRIPT), backend, scope],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    held = [int(fd) for fd in result.stdout.split()]
    assert held, "the Reaper holds no descriptor: nothing was tested"
    assert min(held) > 2, f"zombiereaper holds {held}"


#: The relay started, lent a pidfd and handing it back while 0-2 are closed: its socket and
#: the pidfd it returns stay above 2, and its protocol works. Prints the numbers it noted.
_RELAY_SCRIPT = """
import os, select, subprocess, sys
from zombiereaper._backends.relay import Relay

gate_read, gate_write = os.pipe()
gated = dict(stdin=gate_read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
child = subprocess.Popen(["/bin/sh", "-c", "read line; exit 9"], **gated)
saved = [os.dup(fd) for fd in (0, 1, 2)]
for fd in (0, 1, 2):
    os.close(fd)
relay = Relay.start()
numbers = [relay.fileno()]
assert select.select([relay.fileno()], [], [], 10)[0], "no hello from the relay"
assert relay.receive() == ([], True)
pidfd = os.pidfd_open(child.pid)
assert relay.lend([(1, pidfd)]) == 1
os.close(pidfd)
os.write(gate_write, b"go\\n")
assert select.select([relay.fileno()], [], [], 10)[0], "the relay said nothing"
returned, alive = relay.receive()
[(token, back)] = returned
numbers.append(back)
for fd in (0, 1, 2):
    os.dup2(saved[fd], fd)
    os.close(saved[fd])
result = os.waitid(os.P_PIDFD, back, os.WEXITED)
assert (result.si_pid, result.si_status) == (child.pid, 9), result
child.returncode = 9
assert relay.close() == 0
print(*numbers)
"""


def test_the_relay_s_descriptors_stay_above_the_standard_streams() -> None:
    """The relay's socket and the pidfds it hands back never take 0-2."""
    result = subprocess.run(
        py(_RELAY_SCRIPT), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    numbers = [int(fd) for fd in result.stdout.split()]
    assert len(numbers) == 2 and min(numbers) > 2, f"the relay used {numbers}"
