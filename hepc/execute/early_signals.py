"""SIGTERM before a run holds anything (imports, compiling, planning): exit 130 at once, like Ctrl-C.

The command line installs `terminated_early` first thing, before its heavy imports; `hepc run`
replaces it with the driver's handler (hepc.execute.driver), which checkpoints and releases leases,
once there is something to stop cleanly. Without it a SIGTERM in a run's first second ended the
process with the default action (exit 143)."""

from __future__ import annotations

import os
import signal
import threading


def terminated_early(signum, frame) -> None:
    os.write(2, b"interrupted (SIGTERM): stopped at once\n")
    os._exit(130)


def install() -> None:
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, terminated_early)
