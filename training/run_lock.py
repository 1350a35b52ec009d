"""One training run per output folder: a lock on `<out>/.lock`, held for the whole run.

Two `train.py` runs into one `--out` would overwrite each other's checkpoints, or the second's
start-up would delete the first's in-flight temporary checkpoint. So train.py locks the folder
before any work and a second run gets a one-line error naming the holder.

The lock is an OS file lock (`fcntl.flock`; `msvcrt.locking` on Windows), not the mere existence of
a file: the kernel releases it when the process ends in any way, SIGKILL and power loss included, so
a crashed run never blocks the next one. The file records the holder's pid and start time: a clean
exit deletes it, and a run that finds one left by a process that died says that it takes it over.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from contextlib import suppress
from pathlib import Path

try:
    import fcntl
except ImportError:          # Windows
    fcntl = None
    import msvcrt

LOCK_NAME = ".lock"


class FolderLocked(RuntimeError):
    """Another live process holds the folder's lock."""


def _try_lock(fd: int) -> bool:
    """Take the lock without waiting: True if we hold it now, False if another process does."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK):
            return False
        raise


def _describe(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {when}"


def _read_holder(fd: int) -> dict:
    with suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
        return holder if isinstance(holder, dict) else {}
    return {}


class RunLock:
    """`lock = RunLock(folder); note = lock.acquire(); ...; lock.release()` (or `with RunLock(folder):`).

    acquire() raises FolderLocked if a live process holds the folder, OSError if the lock file cannot
    be created (a read-only folder); it returns a note when it took over the lock file of a dead run.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> str | None:
        while True:
            # O_NOFOLLOW: a lock file that is a link (planted, or left by a copy) would have us truncate and
            # write its target, a file outside the run
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise FolderLocked(f"{self.path} is a symbolic link, not a lock file; remove the link (its "
                                       "target is left alone) or choose another --out") from None
                raise
            try:
                if not _try_lock(fd):
                    holder = _read_holder(fd)
                    raise FolderLocked(f"{self.folder} is in use by another training run ({_describe(holder)}); "
                                       "wait for it to finish, or choose another --out")
                # the holder we waited out may have deleted the file after we opened it: our lock would
                # then be on an orphaned file while a newcomer locks a fresh one; start again
                with suppress(FileNotFoundError):
                    if os.fstat(fd).st_ino == os.lstat(self.path).st_ino:
                        break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        self.fd = fd
        previous = _read_holder(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode())
        if previous.get("pid") not in (None, os.getpid()):
            return (f"note: {self.folder} was locked by a run that is no longer running ({_describe(previous)}); "
                    "taking its lock over")
        return None

    def release(self) -> None:
        if self.fd is None:
            return
        with suppress(OSError):
            self.path.unlink()            # while still holding the lock: nobody can have taken it meanwhile
        os.close(self.fd)                 # closing drops the lock
        self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
