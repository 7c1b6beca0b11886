"""Who runs a flow: owner ids, and whether an owner may still be alive.

An owner is ``host:pid:token`` (the token is new for every engine, and after ``fork()``).
On the owner's own host a dead pid means a dead owner, so recovery after a crash is
immediate; for another host only the lease can tell.
"""

from __future__ import annotations

import os
import socket

HOST = socket.gethostname()

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    """This process's pid, without a system call (``os.getpid()`` is one, and the engine asks
    on every write whether it is still the process that opened its connections). Kept right
    across ``os.fork()`` (``multiprocessing`` included) by an at-fork hook."""
    return _pid


def owner_alive(owner: str | None) -> bool:
    """Is the engine named by ``owner`` ('host:pid:token') possibly alive?"""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_s, _, _token = rest.partition(":")
    if host != HOST:
        return True
    try:
        pid = int(pid_s)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return not _exited(pid)


def _exited(pid: int) -> bool:
    """A process that has exited but that its parent has not reaped yet (a zombie) still
    answers ``kill(pid, 0)``: a worker SIGKILLed by a supervisor that has not waited for it
    would otherwise hold its flows for a whole lease. Linux tells by the state in
    ``/proc/<pid>/stat``; where there is no ``/proc``, the process counts as alive (the lease
    still ends the wait)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    end = stat.rfind(b")")  # "pid (comm) state ...": comm may itself hold ")"
    return stat[end + 2 : end + 3] in (b"Z", b"X")
