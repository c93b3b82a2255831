"""Whether a process of this machine is still running: how a lock or a record left by a process
that was killed (SIGKILL gives it no chance to clean up) is told from one still in use."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True
