"""Ending a process that used DuckDB without the interpreter's finalisation.

DuckDB's nanobind bindings print hundreds of harmless "leaked instance" lines at interpreter exit
once a store was used through SQLAlchemy; they bury a command's output (CLI, test summary,
benchmark tables). `exit_quietly` does what a normal exit does first (atexit handlers: Prefect's
temporary server, temporary files), flushes the streams and ends with `os._exit`.
"""

from __future__ import annotations

import atexit
import os
import sys


def exit_quietly(code: int = 0) -> None:
    """Run the atexit handlers, flush stdout/stderr, end the process with ``code``; never returns."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
