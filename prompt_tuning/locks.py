"""One writer per folder: `DirectoryLock`, taken by `train` on MODEL_DIR (and meant for sweep run folders and the
server's prompt store).

    with DirectoryLock(model_dir, what="training run"):
      ...  # a second `with DirectoryLock(model_dir)` anywhere on this machine raises FolderInUseError

How: an exclusive `fcntl.flock` on `<folder>/.lock`, plus the holder's PID, host, command and start time written
into that file for the message a second writer gets. Why flock and not an O_EXCL PID file: the kernel drops a
flock when its process dies, however it dies (kill -9, OOM killer, power loss of a container), so a lock can never
be left held by a dead process and no one has to guess whether a PID in a file is stale, or race another process
to delete it. The PID in the file is only information: when the lock is free and the file names a process, that
process ended without releasing it (it was killed), which is logged as a stale lock taken over. flock works
between processes on one machine and on most local file systems; on NFS it depends on the mount, and object
stores (gs://) have no locks at all: such folders are not locked (with a warning).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import stat
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class FolderInUseError(RuntimeError):
  """Another live process holds the folder's lock; the message names it."""


def _read_holder(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  raw = os.read(fd, 65536)
  try:
    holder = json.loads(raw.decode()) if raw.strip() else {}
  except (UnicodeDecodeError, json.JSONDecodeError):
    return {}
  return holder if isinstance(holder, dict) else {}


def describe_holder(holder: dict) -> str:
  """'PID 123 on host (train, started 2026-01-01 12:00:00)' from a lock file's record."""
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])) if "started" in holder else "?"
  return f"PID {holder.get('pid', '?')} on {holder.get('host', '?')} ({holder.get('what', '?')}, started {started})"


class DirectoryLock:
  """An exclusive, process-wide lock on a folder (a context manager; re-entrant use is an error).

  Args:
    folder: the folder to lock (created if missing).
    what: what holds it, for the message a second writer gets ("training run", "sweep", "prompt store").
  """

  def __init__(self, folder: str | os.PathLike, what: str = "training run"):
    self.folder = Path(folder)
    self.path = self.folder / LOCK_NAME
    self.what = what
    self._fd: int | None = None
    self.stale_holder: dict | None = None  # the dead process whose lock was taken over, if any

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> DirectoryLock:
    """Takes the lock, or raises FolderInUseError naming the process that holds it."""
    if self._fd is not None:
      raise RuntimeError(f"{self.path} is already held by this DirectoryLock")
    if "://" in str(self.folder):
      log.warning("%s is not a local folder; it is not locked against a second writer.", self.folder)
      return self
    self.folder.mkdir(parents=True, exist_ok=True)
    try:
      # O_NOFOLLOW: a link planted as the lock file would make us truncate and write the file it points to.
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
      if os.path.islink(self.path):
        raise FolderInUseError(
          f"{self.path} is a symbolic link (to {os.readlink(self.path)}), not a lock file: it is never followed, so "
          f"that file is not touched. Remove the link (rm {self.path}) and start again."
        ) from None
      raise FolderInUseError(
        f"cannot open the lock file {self.path} ({e.strerror}): fix it, or use another folder."
      ) from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
      os.close(fd)
      raise FolderInUseError(f"{self.path} is not a regular file: remove it and start again.")
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise FolderInUseError(
        f"{self.folder} is in use by {describe_holder(holder)}: one {self.what} writes a folder at a time. Wait for "
        f"it to finish, stop it (kill {holder.get('pid', 'PID')}), or use another folder."
      ) from None
    previous = _read_holder(fd)
    if previous.get("pid"):  # a clean release empties the file: its holder died holding the lock
      self.stale_holder = previous
      log.warning(
        "took over the stale lock of %s in %s: it ended without releasing it.", describe_holder(previous), self.folder
      )
    record = {
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "what": self.what,
      "started": time.time(),
      "command": " ".join(sys.argv)[:500],
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def check(self) -> None:
    """Raises FolderInUseError unless the lock file in the folder is still the one this lock holds: when it was
    deleted or replaced, a second writer can take a new lock on the new file, and both would write the folder.
    Train calls this at every checkpoint, before writing it.
    """
    if self._fd is None:
      return
    held = os.fstat(self._fd)
    try:
      now = os.lstat(self.path)
    except FileNotFoundError:
      now = None
    if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
      change = "deleted" if now is None else "replaced"
      raise FolderInUseError(
        f"the lock file {self.path} was {change} while this {self.what} held it, so another process may now write "
        f"{self.folder}: stopped before writing into it. Make sure no other process uses the folder, then run the "
        "same command again (it resumes from the last finished checkpoint)."
      )

  def release(self) -> None:
    """Releases the lock; the file stays (unlinking a lock file lets two processes lock different inodes)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)  # an empty file: no holder, released cleanly
      fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
      os.close(fd)

  def __enter__(self) -> DirectoryLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
