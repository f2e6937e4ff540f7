"""Files and folders that hold tokens, keys or databases: private from the moment they exist.

Invariants:
- A file made here is created with mode 0600 by the `open` that makes it
  (O_CREAT|O_EXCL), a folder with mode 0700 by its `mkdir`: nothing is created
  wider and narrowed afterwards, so no other user can open it in between, whatever
  the umask. SQLite gives a database's -wal and -shm files the database's own mode,
  so a database file made empty here first keeps all three private.
- Files and folders that already exist are never changed: their modes are the
  operator's. `exposed` says when one that holds a secret can be read by others,
  for the services to refuse to start, as ssh refuses a private key others can read.
- New content for an existing file is written to a new private file beside it and
  renamed over it, so the old mode does not carry over.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import IO

FILE_MODE = 0o600
FOLDER_MODE = 0o700
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def private_folder(path: Path) -> None:
    """Create `path` and its missing parents with mode 0700; existing ones stay as they are."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another: theirs
            folder.mkdir(mode=FOLDER_MODE)


def create_private(path: Path, data: bytes) -> None:
    """Write `data` to a new file with mode 0600; FileExistsError when `path` exists."""
    fd = os.open(path, _NEW, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def replace_private(path: Path, data: bytes) -> None:
    """Give `path` the content `data` through a new 0600 file renamed over it."""
    staged = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    create_private(staged, data)
    try:
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def private_database(path: Path) -> None:
    """Make the folder and an empty 0600 database file before SQLite opens `path` the first time."""
    private_folder(path.parent)
    with contextlib.suppress(FileExistsError):  # an existing one keeps its mode (`exposed`)
        os.close(os.open(path, _NEW, FILE_MODE))


def open_private_append(path: Path) -> IO[str]:
    """Open a text file for appending, creating it with mode 0600 when it does not exist."""
    private_folder(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    return os.fdopen(fd, "a", encoding="utf-8")


def exposed(path: Path, key: str) -> str | None:
    """Why the secret file `path` (named by config `key`) must not be used, or None.

    A file that group or others may read or write is refused, as ssh refuses such
    a private key; a missing file is someone else's error to report.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{key}: cannot inspect {path}: {exc.strerror}"
    if mode & 0o077 == 0:
        return None
    return (
        f"{key}: {path} holds a secret but is open to group or others (mode {mode:04o});"
        f" fix it with: chmod 600 {path}"
    )
