"""One line of a job's failure for its last log line: the cause, without a Java or Python stack trace."""

from __future__ import annotations

import re

EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")


def error_line(exc: BaseException) -> str:
    """The useful line of an error: from an executor, the last exception line of the Python traceback (or of
    the Java causes); otherwise the error's type and first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if EXCEPTION_LINE.match(line):
            return line
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
