"""One way to write a file so that a crash at any moment leaves the old file or the new one.

Checkpoints (checkpoint.py), the token cache (data/tokens.py) and the saved Hub copy of the
essays (data/sources.py) all write through `atomic_write`. Training is killed at arbitrary moments
(Ctrl-C, SIGKILL, a pre-empted node), and a half-written `latest.pt` or token array must never be
read back as if it were whole.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable, mode: str = "wb") -> Path:
    """Run write(handle) on a temporary file beside `path`, then rename it over `path`.

    1) The temporary file `.NAME.PID.RANDOM.tmp` is in the SAME directory: os.replace is atomic only
       within one filesystem. It is created with the mode of any new file, 0666 & ~umask (not with
       mkstemp, whose 0600 would make every checkpoint and cache file private to its writer). A
       killed write leaves such a file behind; checkpoint.remove_stale_temp_files deletes them.
    2) flush + fsync push the bytes to the disk before the rename makes them visible.
    3) os.replace swaps the files atomically (POSIX rename), and an fsync of the directory makes the
       rename itself survive a power cut.
    `mode` is "wb" (binary) or "w" (UTF-8 text, newlines written as given).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **text) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _fsync_dir(directory: Path) -> None:
    with suppress(OSError):            # not every platform/filesystem lets us open a directory
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
