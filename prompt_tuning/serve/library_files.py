"""The library folder on disk (`--prompts_dir`): every change to the served library is written through before it is
answered, and a restart restores every entry with its id and version.

- A PUT writes `<id>.safetensors` (the entry format of `prompt_tuning.serve.store`: float32 tensors named as the
  method's arrays, {"method": M, "version": "N"} in the metadata) as a temporary file in the same folder
  (`.<id>.<pid>-<n>.partial`), fsyncs it, renames it over `<id>.safetensors` and fsyncs the folder. A reader, a
  restart or a crash (kill -9, power loss) sees the old file or the new one, never a torn one; concurrent PUTs of one
  id are serialized by `PromptLibrary`, so the file and the served entry are the same upload.
- A DELETE removes the entry's files the same way (unlink, folder fsync). A library folder placed by the operator
  (a PEFT adapter, an export folder, a MODEL_DIR) is never destroyed: it is moved into `.removed/` beside the
  entries (hidden, never loaded). A PUT over an id held by another file (`<id>.npy`, `<id>/`) does the same with
  the old file once the new one is in place.
- A DELETE also records the entry's last version in a hidden `.<id>.deleted` file (written like an entry, before
  the entry's files go), so an id uploaded again after a restart continues from that version: a client that kept
  `(id, version)` never sees one version number name two different prompts.
- At start-up, temporary files a crash left are removed; when a crash between the two steps above left two files
  for one id, the one with the higher recorded version is served and the other moved into `.removed/`.

A folder the server may change is checked up front (`open_folder`): it must be writable (a probe file is created,
fsynced and removed) and must not be the demo library shipped inside the package, which is never written to.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from prompt_tuning.serve.store import PromptError, check_id, read_entry_file

log = logging.getLogger(__name__)

ENTRY_SUFFIX = ".safetensors"
PARTIAL_SUFFIX = ".partial"
DELETED_SUFFIX = ".deleted"
REMOVED_FOLDER = ".removed"
# Test-only fault injection: seconds to sleep between a PUT's fsynced temporary file and its rename, so a test can
# kill -9 the server mid-write. Unset (the default) it does nothing.
TEST_PAUSE_BEFORE_RENAME_ENV = "PROMPT_TUNING_TEST_ONLY_PAUSE_BEFORE_RENAME_S"
_PACKAGE_ASSETS = Path(__file__).resolve().parents[1] / "assets"
_counter = itertools.count()


class LibraryFolderError(ValueError):
  """A library folder the server cannot use as asked; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class StoredEntry:
  """One entry as the folder holds it."""

  prompt_id: str
  method: str
  arrays: Mapping[str, np.ndarray]
  version: int
  path: Path


def encode_entry(method: str, arrays: Mapping[str, Any], version: int) -> bytes:
  """The bytes of `<id>.safetensors`: float32 tensors, the method and the version in the metadata."""
  from safetensors.numpy import save

  tensors = {name: np.ascontiguousarray(a, np.float32) for name, a in arrays.items()}
  return save(tensors, {"method": method, "version": str(version)})


def recorded_version(path: Path) -> int:
  """The version a `.safetensors` entry records (1 for any other file, or one written by hand without it)."""
  if path.suffix != ENTRY_SUFFIX or not path.is_file():
    return 1
  from safetensors import safe_open

  with safe_open(str(path), "np") as f:
    version = (f.metadata() or {}).get("version", "1")
  if not version.isdigit() or int(version) < 1:
    raise PromptError(f"{path} records version {version!r}; a version is a positive integer.")
  return int(version)


def _fsync_folder(folder: Path) -> None:
  fd = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _write_file(path: Path, data: bytes, pause: float = 0.0) -> None:
  """Writes `data` as `path` atomically: a temporary file in the same folder, fsync, rename, folder fsync."""
  partial = path.parent / f".{path.name}.{os.getpid()}-{next(_counter)}{PARTIAL_SUFFIX}"
  fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    if pause:
      time.sleep(pause)
    os.replace(partial, path)
  except BaseException:
    partial.unlink(missing_ok=True)
    raise
  _fsync_folder(path.parent)


def _entry_id(path: Path) -> str:
  return path.name if path.is_dir() else path.stem


def is_shipped(folder: Path) -> bool:
  """Whether `folder` lies inside the package's assets (the shipped demo library): never written to."""
  return folder.resolve().is_relative_to(_PACKAGE_ASSETS)


class LibraryFolder:
  """The files of one library folder; `writable=False` reads it only (a --read_only server, or no admin token)."""

  def __init__(self, folder: str | Path, writable: bool):
    self.folder, self.writable = Path(folder), writable
    self._paths: dict[str, list[Path]] = {}  # id -> the files and folders that hold it
    self._lock = threading.Lock()

  def scan(self) -> list[StoredEntry]:
    """Reads every entry (formats in `prompt_tuning.serve.store`), cleaning what a crash left when writable.

    Raises:
      PromptError: a file that cannot be read, or two files giving one id at the same version; the message names
        them.
    """
    if self.writable:
      for partial in self.folder.glob(f".*{PARTIAL_SUFFIX}"):
        log.warning("library: removing %s, an upload a crash interrupted (the entry before it is kept)", partial)
        partial.unlink(missing_ok=True)
    found: dict[str, list[StoredEntry]] = {}
    for path in sorted(self.folder.iterdir()):
      if path.name.startswith("."):
        continue
      try:
        prompt_id = check_id(_entry_id(path))
        method, arrays = read_entry_file(path)
        stored = StoredEntry(prompt_id, method, arrays, recorded_version(path), path)
      except (PromptError, ValueError, KeyError, FileNotFoundError) as e:
        raise PromptError(f"cannot load {path} into the library: {e}") from e
      found.setdefault(prompt_id, []).append(stored)
    entries = []
    for prompt_id, candidates in found.items():
      candidates.sort(key=lambda s: s.version)
      newest = candidates[-1]
      if len(candidates) > 1 and candidates[-2].version == newest.version:
        names = ", ".join(str(s.path) for s in candidates)
        raise PromptError(f"the library files {names} all give the id {prompt_id!r}; keep one of them.")
      for older in candidates[:-1]:
        log.warning("library: %s is older than %s (a replaced entry a crash left)", older.path, newest.path)
        if self.writable:
          self._set_aside(older.path)
      self._paths[prompt_id] = [newest.path]
      entries.append(newest)
    return entries

  def write(self, prompt_id: str, method: str, arrays: Mapping[str, Any], version: int) -> Path:
    """Writes an entry through to disk (atomically), then sets aside the files it replaces."""
    check_id(prompt_id)
    target = self.folder / f"{prompt_id}{ENTRY_SUFFIX}"
    pause = float(os.environ.get(TEST_PAUSE_BEFORE_RENAME_ENV) or 0)
    with self._lock:
      _write_file(target, encode_entry(method, arrays, version), pause)
      for old in self._paths.get(prompt_id, []):
        if old != target:
          self._set_aside(old)
      self._paths[prompt_id] = [target]
    return target

  def deleted_versions(self) -> dict[str, int]:
    """The last version of every id deleted from this folder (its `.<id>.deleted` record), by id."""
    versions = {}
    for record in self.folder.glob(f".*{DELETED_SUFFIX}"):
      text = record.read_text(errors="replace").strip()
      if not text.isdigit():
        raise PromptError(f"{record} should hold the version of a deleted entry, not {text[:40]!r}; remove the file.")
      versions[record.name[1 : -len(DELETED_SUFFIX)]] = int(text)
    return versions

  def remove(self, prompt_id: str, version: int) -> None:
    """Removes an entry's files (its own `.safetensors`/`.npy` unlinked, a folder moved into `.removed/`), first
    recording `version` as the id's last, so the id's next upload, after a restart too, is `version + 1`."""
    with self._lock:
      _write_file(self.folder / f".{prompt_id}{DELETED_SUFFIX}", str(version).encode())
      for path in self._paths.pop(prompt_id, []):
        self._set_aside(path)

  def _set_aside(self, path: Path) -> None:
    if path.is_dir():
      removed = self.folder / REMOVED_FOLDER
      removed.mkdir(exist_ok=True)
      path.rename(removed / f"{path.name}.{time.time_ns()}")
    else:
      path.unlink(missing_ok=True)
    _fsync_folder(self.folder)


def open_folder(folder: str | Path, changes: bool) -> LibraryFolder:
  """The library folder, checked up front when the server may change it (`changes`).

  Raises:
    LibraryFolderError: the folder is missing, or (with `changes`) is the shipped demo library or is not writable.
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise LibraryFolderError(f"--prompts_dir {folder} is not a folder; create it (an empty one is an empty library).")
  if not changes:
    return LibraryFolder(folder, writable=False)
  if is_shipped(folder):
    raise LibraryFolderError(
      f"--prompts_dir {folder} is the demo library shipped inside the package, which is never written to: serve a "
      f"copy (cp -r {folder} /tmp/library; --prompts_dir=/tmp/library), or serve it unchanged with --read_only."
    )
  probe = folder / f".write-check.{os.getpid()}{PARTIAL_SUFFIX}"
  try:
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
      os.write(fd, b"probe")
      os.fsync(fd)
    finally:
      os.close(fd)
    probe.unlink()
    _fsync_folder(folder)
  except OSError as e:
    raise LibraryFolderError(
      f"--prompts_dir {folder} is not writable ({e.strerror}), so uploads could not be kept across restarts: give a "
      "folder this server may write, or start it with --read_only to serve the folder without changes."
    ) from e
  return LibraryFolder(folder, writable=True)


def restore(library, files: LibraryFolder) -> list[str]:
  """Puts every entry of the folder into `library` (a `PromptLibrary`) with its recorded version, and the last
  version of every deleted id (an upload under it continues from there); returns the ids of the entries."""
  library.continue_versions(files.deleted_versions())
  ids = []
  for stored in files.scan():
    try:
      library.put(stored.prompt_id, stored.method, stored.arrays, str(stored.path), version=stored.version, write=False)
    except PromptError as e:
      raise PromptError(f"cannot load {stored.path} into the library: {e}", e.status) from e
    ids.append(stored.prompt_id)
  return ids
