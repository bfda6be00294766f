"""The prompt library: every tuned-vector export a request can name, versioned, with a device cache capped in bytes.

An entry is a *method name and named arrays* (`PromptEntry`); what the names
and shapes are is the method's to say (`prompt_tuning.methods`: each method's
`check`, and its module docstring), so a method slots in without changing the
server. An entry is what the method's export holds (`Method.read_export`).

Files read from the library folder (the entry's id is the file or folder
name without extension):

- `ID.safetensors` whose metadata says {"method": M}: method M's entry, as
  `save_entry` writes it or as M's `export` wrote it;
- a folder holding one method's export as training writes it
  (MODEL_DIR/numpy_checkpoints/checkpoint_N: `<method>.safetensors`);
- anything a method reads as its own format (`Method.read_file`: a prompt's
  .npy or .safetensors, a PEFT prompt-tuning folder, a training step folder,
  a MODEL_DIR).

Entries are immutable: replacing an id makes a new entry with the next
version; a request holds the entry it started with, so deleting or replacing
a prompt never changes requests in flight. The library is capped in host
bytes (`max_library_bytes`); the device copies of recently used entries live
in an LRU capped in bytes (`DeviceCache`).
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from prompt_tuning import methods
from prompt_tuning.methods.base import Limits, PromptError, method_class
from prompt_tuning.models import adapters as sites

__all__ = ["DeviceCache", "Limits", "PromptEntry", "PromptError", "PromptLibrary", "read_entry_file", "save_entry"]

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ID_RULE = "1-128 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"


@dataclasses.dataclass(frozen=True)
class PromptEntry:
  """One library entry: immutable; a new upload under the same id is a new entry with version + 1."""

  prompt_id: str
  method: str
  arrays: Mapping[str, np.ndarray]
  version: int
  source: str

  @property
  def nbytes(self) -> int:
    return int(sum(a.nbytes for a in self.arrays.values()))

  @property
  def length(self) -> int:
    """Vectors per row: the longest of its padded axes (prompt or prefix length, LoRA rank); 0 for none (IA3)."""
    row = method_class(self.method).entry(self.arrays)
    return max((sites.filled_length(p, sites.get(row, p)) for p in sites.flat_paths(row)), default=0)

  def describe(self) -> dict[str, Any]:
    return {
      "id": self.prompt_id,
      "method": self.method,
      "version": self.version,
      "length": self.length,
      "bytes": self.nbytes,
      "source": self.source,
      "arrays": {name: list(a.shape) for name, a in self.arrays.items()},
    }


def _finite_floats(name: str, array: np.ndarray) -> np.ndarray:
  if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
    raise PromptError(f"array {name!r} holds {array.dtype} values; send numbers.")
  if not np.all(np.isfinite(array)):
    raise PromptError(f"array {name!r} contains NaN or infinite values; it cannot be used.")
  with np.errstate(over="ignore"):
    single = array.astype(np.float32)
  if not np.all(np.isfinite(single)):
    raise PromptError(f"array {name!r} holds values beyond float32's range (about 3.4e38); it cannot be used.")
  return single


def check_id(prompt_id: str) -> str:
  """Refuses ids outside the safe alphabet (no path separators, no '..')."""
  if not ID_PATTERN.fullmatch(prompt_id) or ".." in prompt_id:
    raise PromptError(f"prompt id {prompt_id!r} is not allowed; use {ID_RULE}.")
  return prompt_id


def make_entry(prompt_id: str, method: str, arrays: Mapping[str, Any], limits: Limits, version: int, source: str):
  """Checks an upload against the backbone and the server's limits; returns the entry.

  Raises:
    PromptError: an unknown method, a wrong name, shape or width, NaN, or a
      length over the server's maximum; the message says which.
  """
  check_id(prompt_id)
  cls = method_class(method)
  if cls.unserved_reason():
    raise PromptError(cls.unserved_reason())
  if method not in limits.methods:
    widths = sorted(axis for axis in sites.padded_axes(cls.leaves) if limits.width(axis) < 1)
    tables = "".join(f" and {limits.setting(axis)}=N" for axis in widths)
    raise PromptError(
      f"method {method!r} is not served here: this server was started with EngineShapes.methods={limits.methods}; "
      f"restart it with {method!r} in --gin.EngineShapes.methods{tables}."
    )
  checked = {str(name): _finite_floats(str(name), np.asarray(a)) for name, a in arrays.items()}
  cls.check(checked, limits)
  for a in checked.values():
    a.setflags(write=False)
  return PromptEntry(prompt_id, method, checked, version, source)


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  from safetensors import safe_open

  with safe_open(str(path), "np") as f:
    return {name: f.get_tensor(name) for name in f.keys()}, dict(f.metadata() or {})


def _read_export(folder: Path) -> tuple[str, dict[str, np.ndarray]] | None:
  """(method, arrays) of a training export folder holding one method's export file; None if it holds none."""
  found = [cls for cls in methods.registered().values() if cls.export_file() and (folder / cls.export_file()).is_file()]
  if not found:
    return None
  if len(found) > 1:
    names = [cls.name for cls in found]
    raise PromptError(f"{folder} holds the exports of {names}; a library entry is one method: copy one out.")
  (cls,) = found
  try:
    return cls.name, cls.read_export(*_read_safetensors(folder / cls.export_file()))
  except PromptError as e:
    raise PromptError(f"{folder}/{cls.export_file()}: {e}") from e


def read_entry_file(path: Path) -> tuple[str, dict[str, np.ndarray]]:
  """(method, arrays) of one library file or folder (formats in the module docstring).

  Raises:
    PromptError: a file of no method's format.
  """
  path = Path(path)
  if path.is_dir():
    exported = _read_export(path)
    if exported is not None:
      return exported
  if path.suffix == ".safetensors":
    tensors, metadata = _read_safetensors(path)
    cls = methods.registered().get(metadata.get("method", ""))
    if cls is not None and cls.export_file():
      return cls.name, cls.read_export(tensors, metadata)
  for cls in methods.registered().values():
    arrays = cls.read_file(path)
    if arrays is not None:
      return cls.name, arrays
  raise PromptError(f"{path} is no tuning method's export or file; see prompt_tuning.serve.store for the formats.")


def save_entry(
  path: str | Path, method: str, arrays: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> Path:
  """Writes (method, arrays) as `path` (.safetensors with the method in its metadata), readable by the library;
  `metadata` (strings, e.g. the backbone: `prompt_tuning.checkpoints.prompt_files.BACKBONE_KEYS`) is recorded too."""
  from safetensors.numpy import save_file

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tensors = {n: np.ascontiguousarray(a, np.float32) for n, a in arrays.items()}
  save_file(tensors, str(path), {**(metadata or {}), "method": method})
  return path


class PromptLibrary:
  """The live library: id -> newest entry, capped in host bytes; thread-safe.

  With `files` (a writable `prompt_tuning.serve.library_files.LibraryFolder`) every put and delete is written
  through to the library folder before it returns; changes are serialized, so the file and the entry agree.
  """

  def __init__(self, limits: Limits, max_library_bytes: int, files=None):
    self.limits, self.max_bytes, self.files = limits, max_library_bytes, files
    self._entries: dict[str, PromptEntry] = {}
    self._versions: dict[str, int] = collections.defaultdict(int)
    self._bytes = 0
    self._lock = threading.Lock()
    self._change_lock = threading.Lock()  # one put or delete at a time: its version, its file, its entry

  @property
  def nbytes(self) -> int:
    return self._bytes

  def __len__(self) -> int:
    return len(self._entries)

  def ids(self) -> list[str]:
    with self._lock:
      return sorted(self._entries)

  def get(self, prompt_id: str) -> PromptEntry:
    """The current entry. Raises PromptError (404) for an unknown id."""
    check_id(prompt_id)
    with self._lock:
      entry = self._entries.get(prompt_id)
    if entry is None:
      raise PromptError(f"no prompt {prompt_id!r} in the library; PUT /v1/prompts/{prompt_id} first.", status=404)
    return entry

  def put(
    self,
    prompt_id: str,
    method: str,
    arrays: Mapping[str, Any],
    source: str = "upload",
    version: int | None = None,
    write: bool = True,
  ) -> PromptEntry:
    """Adds or replaces an entry (the next version, or `version` when restoring one), written through to `files`
    unless `write=False`. Raises PromptError (400; 507 when the library is full)."""
    check_id(prompt_id)
    with self._change_lock:
      with self._lock:
        version = version or self._versions[prompt_id] + 1
      entry = make_entry(prompt_id, method, arrays, self.limits, version, source)
      with self._lock:
        old = self._entries.get(prompt_id)
        grown = self._bytes + entry.nbytes - (old.nbytes if old else 0)
        if grown > self.max_bytes:
          raise PromptError(
            f"the library holds {self._bytes} of {self.max_bytes} bytes and this prompt needs {entry.nbytes}; "
            "delete prompts or restart with a larger --max_library_bytes.",
            status=507,
          )
      if write and self.files is not None:
        self.files.write(prompt_id, entry.method, entry.arrays, version)  # kept before it is served or answered
      with self._lock:
        self._versions[prompt_id] = max(self._versions[prompt_id], version)
        self._entries[prompt_id], self._bytes = entry, grown
    return entry

  def continue_versions(self, versions: Mapping[str, int]) -> None:
    """Starts each id's version count at least at `versions[id]` (deleted entries' last versions, from disk)."""
    with self._lock:
      for prompt_id, version in versions.items():
        self._versions[prompt_id] = max(self._versions[prompt_id], version)

  def delete(self, prompt_id: str) -> PromptEntry:
    """Removes an entry, and its files from `files` (requests holding it finish with it). Raises PromptError (404)."""
    with self._change_lock:
      entry = self.get(prompt_id)
      if self.files is not None:
        self.files.remove(prompt_id, entry.version)
      with self._lock:
        del self._entries[prompt_id]
        self._bytes -= entry.nbytes
    return entry


def device_bytes(tree: Any) -> int:
  """Bytes of a tree of arrays (a device row is padded to the server's tables: more than the entry's arrays)."""
  import jax

  return int(sum(leaf.nbytes for leaf in jax.tree.leaves(tree)))


class DeviceCache:
  """Device copies of entries (padded rows), keyed by (id, version), least recently used evicted beyond
  `max_bytes` (counted on the device copies)."""

  def __init__(self, max_bytes: int, to_device: Callable[[PromptEntry], Any]):
    self.max_bytes, self._to_device = max_bytes, to_device
    self._items: collections.OrderedDict[tuple[str, int], tuple[Any, int]] = collections.OrderedDict()
    self._bytes = 0
    self.hits = self.misses = self.evictions = 0
    self._lock = threading.Lock()

  @property
  def nbytes(self) -> int:
    return self._bytes

  def __len__(self) -> int:
    return len(self._items)

  def get(self, entry: PromptEntry) -> Any:
    key = (entry.prompt_id, entry.version)
    with self._lock:
      if key in self._items:
        self._items.move_to_end(key)
        self.hits += 1
        return self._items[key][0]
      self.misses += 1
    value = self._to_device(entry)
    size = device_bytes(value)
    with self._lock:
      self._items[key] = (value, size)
      self._bytes += size
      while self._bytes > self.max_bytes and len(self._items) > 1:
        _, (_, size) = self._items.popitem(last=False)
        self._bytes -= size
        self.evictions += 1
    return value
