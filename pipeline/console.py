"""What reaches the terminal: paddock's own lines, not its dependencies' start-up noise.

Ray's token-authentication notice, Ray Data's "progress bars disabled" and
per-operator lines, the core worker's constructor-argument warning and torch's
weight_norm deprecation (called by diffusers' Oobleck VAE) mean nothing to a
user of paddock. They are hidden unless `PADDOCK_VERBOSE=1` (the CLI's
`--verbose`), which Ray's worker processes inherit like the rest of the
driver's environment.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import warnings

VERBOSE_ENV = "PADDOCK_VERBOSE"
# Lines Ray's C++ core writes straight to the process's stderr, out of reach of Python's logging.
STDERR_NOISE = re.compile(rb"has constructor arguments in the object store and max_restarts > 0")


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet_dependencies() -> int:
    """Hide the dependencies' noise in this process (unless verbose); returns the log level for ray.init."""
    if is_verbose():
        return logging.WARNING
    warnings.filterwarnings("ignore", message=r".*weight_norm.*deprecated", category=FutureWarning)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return logging.ERROR


def filter_stderr_noise() -> None:
    """For the CLI's process (unless verbose): drop STDERR_NOISE lines from file descriptor 2.

    Everything else written there, by Python or by native code, passes
    through a pipe unchanged; at exit the rest is flushed.
    """
    if is_verbose():
        return
    read_fd, write_fd = os.pipe()
    terminal = os.dup(2)
    sys.stderr.flush()
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as source:
            for line in source:
                if not STDERR_NOISE.search(line):
                    os.write(terminal, line)

    thread = threading.Thread(target=pump, name="paddock-stderr", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # our end of the pipe closes; Ray's daemons may hold theirs a while
        thread.join(timeout=1.0)

    atexit.register(restore)
