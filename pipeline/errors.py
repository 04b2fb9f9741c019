"""One-line summaries of exceptions, for failure rows, statuses, warnings and the CLI.

The one home of "say this error in one line"; ffmpeg's own messages (a tail of
its stderr) are pipeline/media.py's.
"""

from __future__ import annotations

from pydantic import ValidationError


def first_line(exc: BaseException) -> str:
    """The first non-empty line of the exception's message, or its type's name when it has none."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def describe_error(exc: BaseException) -> str:
    """``Type: first line``, and ``out of memory: ...`` when it is one, for a failure row or status."""
    text = first_line(exc) if str(exc).strip() else ""
    if "out of memory" in text.lower() or isinstance(exc, MemoryError):
        return f"out of memory: {text or type(exc).__name__}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def describe_validation_error(exc: ValidationError) -> str:
    """``field.path: message`` of a pydantic error's first problem."""
    first = exc.errors()[0]
    return f"{'.'.join(str(part) for part in first['loc']) or 'value'}: {first['msg']}"


def ray_worker_error(exc: BaseException) -> str:
    """What failed inside a Ray worker: the last line of a Ray error is the worker's own exception."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
