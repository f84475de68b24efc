"""The data directory: created with a clear error when it cannot be, and one writer at a time.

Readers (questions, search, status) never need to write here: an index on a read-only disk still answers.
Writers (`rag ingest`, the page's Re-index) take `writer_lock()`, so two ingests take turns instead of one
dropping the collection the other is writing into.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from rag.errors import ConfigError

logger = logging.getLogger(__name__)

LOCK_NAME = "ingest.lock"
WHAT_TO_DO = "set RAG_DATA_DIR (or --data-dir) to a folder you can write to"


def prepare_data_dir(data_dir: Path) -> Path:
    """Create the data dir (and its parents); a path that is a file or cannot be written is one ConfigError."""
    data_dir = Path(data_dir).expanduser()
    try:
        if data_dir.exists() and not data_dir.is_dir():
            raise ConfigError(f"the data dir {data_dir} is a file, not a folder: {WHAT_TO_DO}")
        data_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # a parent is a file
        raise ConfigError(f"cannot create the data dir {data_dir}: a part of that path is a file: {WHAT_TO_DO}") from e
    except OSError as e:
        raise ConfigError(f"cannot create the data dir {data_dir} ({e.strerror}): {WHAT_TO_DO}") from e
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"the data dir {data_dir} is not writable: {WHAT_TO_DO}")
    return data_dir


@contextlib.contextmanager
def writer_lock(data_dir: Path, wait_note_after_s: float = 0.5) -> Iterator[None]:
    """Hold the data dir's writer lock (an flock, released by the OS even after kill -9); waits for another writer."""
    data_dir = prepare_data_dir(data_dir)
    path = data_dir / LOCK_NAME
    try:
        handle = path.open("a+")
    except OSError as e:
        raise ConfigError(f"cannot open the lock file {path} ({e.strerror}): {WHAT_TO_DO}") from e
    with handle:
        started = time.monotonic()
        noted = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise ConfigError(f"cannot lock {path} ({e.strerror}): {WHAT_TO_DO}") from e
            if not noted and time.monotonic() - started >= wait_note_after_s:
                logger.warning("another ingest is writing to %s: waiting for it to finish", data_dir)
                noted = True
            time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
