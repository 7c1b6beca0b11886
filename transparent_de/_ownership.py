"""Who runs a flow: owner ids, and whether an owner may still be alive.

An owner is ``host:pid:token`` (the token is new for every engine, and after ``fork()``).
On the owner's own host a dead pid means a dead owner, so recovery after a crash is
immediate; for another host only the lease can tell.
"""

from __future__ import annotations

import os
import socket

HOST = socket.gethostname()


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
    return True
