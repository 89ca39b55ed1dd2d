"""Route what native code (FAISS) prints on stderr into :mod:`logging`.

FAISS's k-means writes ``WARNING clustering 5183 points to 256 centroids: please provide at
least 9984 training points`` with ``fprintf(stderr, ...)`` from C++, whatever its ``verbose``
flag says, once per sub-quantizer: training ``PQ48x8`` on SciFact prints it 48 times. Python
cannot intercept a C ``fprintf``, so :func:`native_stderr_to_log` points file descriptor 2
at a temporary file while the block runs, then logs each distinct line once (with a repeat
count) on the caller's logger, at INFO by default: ``densezip -v`` shows it, the default
output does not.

While the block runs, anything else this process writes to stderr (other threads included)
is captured and logged the same way, not printed. Only one capture runs at a time: a
thread that finds another thread capturing runs its block uncaptured rather than waiting,
because swapping file descriptor 2 from two threads at once could lose stderr for good.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["native_stderr_to_log"]

_STDERR_FD = 2
_capturing = threading.RLock()  # re-entrant: a nested capture in the same thread is safe


@contextmanager
def native_stderr_to_log(logger: logging.Logger, *, level: int = logging.INFO) -> Iterator[None]:
    """Capture file descriptor 2 (C / C++ ``stderr``) during the block; log its lines on ``logger``.

    Parameters
    ----------
    logger : logging.Logger
        Receives one record per distinct non-empty line, prefixed ``"native: "``, with
        ``"(repeated N times)"`` when a line came more than once.
    level : int
        Logging level of those records (default INFO).

    Examples
    --------
    >>> import logging, os, sys
    >>> log = logging.getLogger("native-demo")
    >>> log.addHandler(logging.StreamHandler(sys.stdout)); log.setLevel(logging.INFO); log.propagate = False
    >>> with native_stderr_to_log(log):
    ...     for _ in range(3):
    ...         _ = os.write(2, b"WARNING from C\\n")  # what fprintf(stderr, ...) does
    native: WARNING from C (repeated 3 times)
    """
    if not _capturing.acquire(blocking=False):
        yield  # another thread holds descriptor 2; see the module docstring
        return
    try:
        try:
            sys.stderr.flush()
            saved = os.dup(_STDERR_FD)
        except (OSError, ValueError, AttributeError):  # no usable descriptor 2 (closed): nothing to capture
            saved = -1
        if saved < 0:
            yield
            return
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), _STDERR_FD)
            try:
                yield
            finally:
                try:
                    sys.stderr.flush()
                except (OSError, ValueError, AttributeError):
                    pass
                os.dup2(saved, _STDERR_FD)
                os.close(saved)
                sink.seek(0)
                _log_lines(logger, level, sink.read().decode("utf-8", errors="replace"))
    finally:
        _capturing.release()


def _log_lines(logger: logging.Logger, level: int, text: str) -> None:
    lines = Counter(line.strip() for line in text.splitlines() if line.strip())
    for line, count in lines.items():
        if count > 1:
            logger.log(level, "native: %s (repeated %d times)", line, count)
        else:
            logger.log(level, "native: %s", line)
