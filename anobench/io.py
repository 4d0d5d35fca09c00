"""Small file helpers shared by result files and leaderboards: atomic writes and a folder lock."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from anobench.errors import AnobenchError, LockWarning


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Let `write` fill a temporary file beside `path`, then rename it over `path`.

    Readers see the old file or the new one, never half of one; on any error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """JSON version of `atomic_write_text` (sorted keys, so files diff cleanly)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Dict rows as a CSV written atomically; the columns are every key in first-seen order (blank where a
    row lacks one, e.g. rows of an older file read back beside new ones)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


@contextlib.contextmanager
def folder_lock(folder: str | Path, name: str = ".lock", exclusive: bool = True,
                busy_message: str | None = None) -> Iterator[None]:
    """Advisory lock on `folder/name`; serialises concurrent sweep jobs rebuilding a table.

    `exclusive=False` takes a shared lock (many holders, no exclusive one). With `busy_message` the lock
    is not waited for: AnobenchError(busy_message) if another process holds a conflicting one.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a+") as handle:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        locked = True
        try:
            fcntl.flock(handle.fileno(), mode | (fcntl.LOCK_NB if busy_message is not None else 0))
        except BlockingIOError:
            raise AnobenchError(busy_message) from None
        except OSError as error:  # Lustre/NFS mounted without flock support: ENOLCK, EOPNOTSUPP, ...
            _warn_unlocked(folder / name, error)
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


_UNLOCKED: set[Path] = set()


def _warn_unlocked(path: Path, error: OSError) -> None:
    """Go on without the lock, saying so once per lock file: every write is atomic anyway, so what is lost is
    the exclusion (a duplicated computation, a leaderboard rebuilt twice), never a file's integrity."""
    if path in _UNLOCKED:
        return
    _UNLOCKED.add(path)
    warnings.warn(f"{path}: this file system does not support file locks ({error.strerror or error}); going on "
                  f"without the lock. Do not run two anobench commands on the same results folder or teacher "
                  f"cache at once, or put them on a file system with flock (local disk, or Lustre/NFS mounted "
                  f"with flock support)", LockWarning, stacklevel=4)
