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
between processes on one machine and on most local file systems; on NFS it depends on the mount.

A gs:// folder (a pod's shared MODEL_DIR) has no flock: `BucketLock` (what `DirectoryLock` becomes for a gs://
folder) is a lock object `<folder>/.lock` created only if absent (a generation precondition, ifGenerationMatch=0:
of two writers racing, Cloud Storage lets one create it), holding the writer's host, PID and a heartbeat that a
background thread renews every `HEARTBEAT_S` (each renewal conditional on the generation it wrote last). A dead
writer cannot release it, so a lock whose heartbeat is older than `STALE_AFTER_S` is taken over, with a message
(at once when its holder was a process of this host that is gone: a run killed and started again on one machine);
a live one refuses a second writer as the local lock does. The lock is read back after every write and compared
by a random token, so a writer whose lock was replaced (or a store that ignores preconditions, such as the GCS
emulator) stops at its next checkpoint rather than writing beside another. Other URLs are not locked (a warning).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import stat
import sys
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# A gs:// lock's heartbeat is renewed this often; one not renewed for STALE_AFTER_S belongs to a dead writer.
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0


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

  def __new__(cls, folder: str | os.PathLike, what: str = "training run", **kwargs):
    if cls is DirectoryLock and os.fspath(folder).startswith("gs://"):
      return super().__new__(BucketLock)
    return super().__new__(cls)

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


def _record(what: str, token: str, started: float) -> dict:
  return {
    "pid": os.getpid(),
    "host": socket.gethostname(),
    "what": what,
    "started": started,
    "heartbeat": time.time(),
    "token": token,
    "command": " ".join(sys.argv)[:500],
  }


def _pid_alive(pid) -> bool:
  """Whether a process of this host has this PID (a holder on this host that is gone needs no heartbeat wait)."""
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


class BucketLock(DirectoryLock):
  """The lock of a gs:// folder (see the module docstring); made by `DirectoryLock(\"gs://...\")`.

  Args:
    folder: the gs:// folder.
    what: what holds it, for the message a second writer gets.
    stale_after_s: a lock whose heartbeat is older than this is a dead writer's, and is taken over.
    heartbeat_s: how often the heartbeat is renewed while held.
  """

  def __init__(
    self,
    folder: str | os.PathLike,
    what: str = "training run",
    stale_after_s: float = STALE_AFTER_S,
    heartbeat_s: float = HEARTBEAT_S,
  ):
    self.folder = os.fspath(folder).rstrip("/")
    self.path = f"{self.folder}/{LOCK_NAME}"
    self.what = what
    self.stale_after_s = stale_after_s
    self.heartbeat_s = heartbeat_s
    self.stale_holder = None
    self._fd = None  # `held` is True while a token is held
    self._token: str | None = None
    self._generation: str | None = None
    self._started = 0.0
    self._lost: str | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._mutex = threading.Lock()

  def _fs(self):
    from prompt_tuning import storage

    return storage._fs()

  def _bucket_key(self) -> tuple[str, str]:
    bucket, _, key = self.path[len("gs://") :].partition("/")
    return bucket, key

  def _read(self) -> tuple[dict | None, str | None]:
    """(the lock's record, its generation), (None, None) when there is no lock object."""
    fs = self._fs()
    fs.invalidate_cache(self.path)  # gcsfs caches listings; another host may have written the lock since
    try:
      info = fs.info(self.path)
      raw = fs.cat_file(self.path)
    except FileNotFoundError:
      return None, None
    try:
      holder = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
      holder = {}
    return (holder if isinstance(holder, dict) else {}), str(info.get("generation") or "")

  def _write(self, record: dict, if_generation: str) -> str:
    """Uploads the record only if the object's generation is `if_generation` ("0": only if absent); its new one."""
    bucket, key = self._bucket_key()
    fs = self._fs()
    # A multipart upload (metadata, then the body): the JSON API's one request that carries a precondition and is
    # understood by Cloud Storage and its emulators alike.
    body = (
      f"--==lock==\nContent-Type: application/json; charset=UTF-8\n\n{json.dumps({'name': key})}\n--==lock==\n"
      f"Content-Type: application/json\n\n{json.dumps(record)}\n--==lock==--"
    ).encode()
    out = fs.call(
      "POST",
      f"{fs._location}/upload/storage/v1/b/{bucket}/o",
      uploadType="multipart",
      ifGenerationMatch=if_generation,
      headers={"Content-Type": 'multipart/related; boundary="==lock=="'},
      data=body,
      json_out=True,
    )
    return str(out.get("generation") or "")

  def _in_use(self, holder: dict) -> FolderInUseError:
    beat = holder.get("heartbeat")
    age = f", last heartbeat {time.time() - beat:.0f} s ago" if isinstance(beat, (int, float)) else ""
    return FolderInUseError(
      f"{self.folder} is in use by {describe_holder(holder)}{age}: one {self.what} writes a folder at a time. Wait "
      f"for it to finish or stop it. A writer that died leaves its lock, which is taken over once its heartbeat is "
      f"{self.stale_after_s / 60:.0f} minutes old (or delete {self.path} when you are sure it is gone)."
    )

  def acquire(self) -> BucketLock:
    """Takes the lock, or raises FolderInUseError naming the live writer that holds it."""
    if self._token is not None:
      raise RuntimeError(f"{self.path} is already held by this lock")
    holder, generation = self._read()
    if holder is not None:
      beat = holder.get("heartbeat")
      dead_here = holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid"))
      if isinstance(beat, (int, float)) and time.time() - beat < self.stale_after_s and not dead_here:
        raise self._in_use(holder)
      self.stale_holder = holder
      if dead_here:
        why = "that process is no longer running on this host"
      elif isinstance(beat, (int, float)):
        why = f"no heartbeat for {(time.time() - beat) / 60:.1f} minutes"
      else:
        why = "it holds no heartbeat (an unreadable lock)"
      log.warning("took over the stale lock of %s in %s: %s.", describe_holder(holder), self.folder, why)
    token, started = uuid.uuid4().hex, time.time()
    try:
      written = self._write(_record(self.what, token, started), "0" if holder is None else generation)
    except FileExistsError:  # another writer created or renewed it between our read and write
      raise self._in_use(self._read()[0] or {}) from None
    now, now_generation = self._read()
    if now is None or now.get("token") != token:  # a store that ignores preconditions: the last writer won
      raise self._in_use(now or {})
    self._token, self._generation, self._started, self._fd = token, now_generation or written, started, -1
    self._thread = threading.Thread(target=self._beat, name=f"lock heartbeat {self.folder}", daemon=True)
    self._thread.start()
    return self

  def _renew(self) -> None:
    with self._mutex:
      if self._token is None or self._lost:
        return
      holder, generation = self._read()
      if holder is None or holder.get("token") != self._token:
        self._lost = "deleted" if holder is None else f"taken by {describe_holder(holder)}"
        return
      try:
        self._generation = self._write(_record(self.what, self._token, self._started), generation)
      except FileExistsError:
        self._lost = "replaced"

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        self._renew()
      except Exception as e:  # noqa: BLE001 - a network error: the next beat, or the checkpoint's check, retries
        log.warning("could not renew the lock %s (%s); trying again in %.0f s.", self.path, e, self.heartbeat_s)

  def check(self) -> None:
    """Renews the heartbeat; raises FolderInUseError when the lock was deleted or taken by another writer."""
    if self._token is None:
      return
    self._renew()
    if self._lost:
      raise FolderInUseError(
        f"the lock {self.path} was {self._lost} while this {self.what} held it, so another process may now write "
        f"{self.folder}: stopped before writing into it. Make sure no other process uses the folder, then run the "
        "same command again (it resumes from the last finished checkpoint)."
      )

  def release(self) -> None:
    """Stops the heartbeat and deletes the lock object, if it is still this writer's."""
    if self._token is None:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    from prompt_tuning import storage

    with self._mutex:
      token, self._token, self._fd = self._token, None, None
      if storage.lost() is not None:
        log.warning("the lock %s stays (the bucket stopped answering); a next run takes it over.", self.path)
        return
      try:
        holder, generation = self._read()
        if holder is not None and holder.get("token") == token:
          bucket, key = self._bucket_key()
          self._fs().call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=generation)
      except Exception as e:  # noqa: BLE001 - the lock goes stale and is taken over: say so, do not fail the run
        log.warning("could not remove the lock %s (%s): the next writer takes it over when it is stale.", self.path, e)
