"""Logging for rule scripts and commands: one log file per rule, also echoed to stderr."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(log_file: str | Path | None = None, level: int = logging.INFO, append: bool = False,
              prefix: str = "") -> None:
    """Log to stderr and ``log_file``; ``append`` and ``prefix`` for processes that share a log (ranks)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a" if append else "w", encoding="utf-8"))
    logging.basicConfig(level=level, format=prefix + FORMAT, handlers=handlers, force=True)
    logging.captureWarnings(True)


@contextlib.contextmanager
def logged(log_file: str | Path | None) -> Iterator[logging.Logger]:
    """Log to ``log_file`` for the duration; an exception is logged with its traceback (to stderr, and to
    ``log_file`` when there is one) before it propagates."""
    configure(log_file)
    logger = logging.getLogger("cocoseg")
    try:
        yield logger
    except Exception as e:
        logger.exception("failed: %s", e)
        raise
