"""One run per output_dir: a lock file that the run's main process holds for the run's whole life.

The lock is `fcntl.flock` on `output_dir/.run.lock`: the kernel (or the NFS lock manager) releases it
when the holding process ends in any way, SIGKILL included, so a dead run never holds a folder. The
file itself says who holds it (host, process, since when, the command), for the line a refused run
prints; a file left by a killed run is taken over with a note. Where the filesystem has no locks
(flock fails with ENOLCK or EOPNOTSUPP), the file is created exclusively instead, and a holder on this
host whose process is gone counts as stale.

Nothing of a running run is touched by a refused one: the file is opened without truncation and only
written by the process that got the lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Optional

LOCK_FILE = ".run.lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def _holder_record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime()),
            "command": " ".join(sys.argv)[:300]}


def describe_holder(text: str) -> str:
    """The holder of a lock file's text, in words: 'host H, process P, since T (command)'."""
    try:
        record = json.loads(text)
        return (f"host {record['host']}, process {record['pid']}, since {record['since']}"
                + (f", running {record['command']!r}" if record.get("command") else ""))
    except (ValueError, TypeError, KeyError):
        return "a run that has not said who it is yet"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunLock:
    """The lock of one output_dir; `acquire` returns None when taken, else who holds it (in words)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, note: Callable[[str], None] = print) -> Optional[str]:
        """Take the lock, or return the holder's description. Raises OSError when the folder cannot hold it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 4096, 0).decode(errors="replace")
                os.close(fd)
                return describe_holder(text)
            except OSError as err:
                os.close(fd)
                if err.errno in _NO_LOCKS:
                    return self._acquire_exclusive(note)
                raise
            # The releasing run unlinks the file before closing it: a lock taken on an unlinked file is no lock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            break
        left = os.pread(fd, 4096, 0).decode(errors="replace")
        if left.strip():
            note(f"note: {self.path.parent} was held by a run that ended without releasing it "
                 f"({describe_holder(left)}); taken over")
        self._write(fd)
        self._fd = fd
        return None

    def _acquire_exclusive(self, note: Callable[[str], None]) -> Optional[str]:
        """The lock on a filesystem without flock: create the file exclusively; a holder on this host whose
        process is gone is stale and taken over."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                text = self.path.read_text(errors="replace")
                try:
                    record = json.loads(text)
                    stale = record["host"] == socket.gethostname() and not _process_alive(int(record["pid"]))
                except (ValueError, TypeError, KeyError):
                    stale = False
                if not stale:
                    return (f"{describe_holder(text)}; this filesystem has no locks: delete {self.path} if that "
                            f"run has ended")
                note(f"note: {self.path.parent} was held by a run that ended without releasing it "
                     f"({describe_holder(text)}); taken over")
                self.path.unlink(missing_ok=True)
                continue
            self._write(fd)
            self._fd = fd
            return None
        return describe_holder(self.path.read_text(errors="replace"))

    @staticmethod
    def _write(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder_record()) + "\n").encode(), 0)

    def release(self) -> None:
        """Give the folder back: the file goes first, then the lock (see `acquire`)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
