"""The prompt library: every tuned-vector export a request can name, versioned, with a device cache capped in bytes.

An entry is a *method name and named arrays* (`PromptEntry`), so each tuning
method's export slots in without changing the server:

- "prompt" (prompt tuning, Lester et al.): {"prompt": [P, D]};
- "prefix" (folded prefix tuning, Li & Liang): {"<site>/key", "<site>/value":
  [layers, P, heads, head_dim]} for any of the sites "encoder", "decoder",
  "cross";
- "ia3" (Liu et al. 2022): {"<stack>/<attention>/key_scale",
  "<stack>/<attention>/value_scale": [layers, heads * head_dim],
  "<stack>/mlp/scale": [layers, mlp_dim]} for the stacks "encoder" and
  "decoder" (attention "self_attention", and "cross_attention" in the
  decoder); any subset (a missing scale is ones);
- "per_layer_prompt" (deep prompt tuning): {"replace": [encoder layers, P, D]}
  or {"add": [encoder layers, P, D]}, the array's name being the mode it was
  trained in (`prompt_tuning.methods.per_layer_prompt`).

A method is a `Method`: its name, a `validate(arrays, limits)` that says what
is wrong with an upload, and a length (what the batcher pads to). Adding one
is adding a `Method` to `METHODS` and teaching `prompt_tuning.serve.engine`
where its arrays go.

Files read from the library folder (the entry's id is the file or folder
name without extension):

- `ID.npy`, `ID.safetensors` (one tensor, or `prompt`), a PEFT prompt-tuning
  adapter folder, a training step folder or a MODEL_DIR: a prompt
  (`prompt_tuning.checkpoints.prompt_files`);
- `ID.safetensors` whose metadata says {"method": M} and whose tensors are
  named as above: method M's entry (`save_entry` writes it);
- a folder holding one method export that training writes
  (MODEL_DIR/numpy_checkpoints/checkpoint_N: `prefix.safetensors`,
  `ia3.safetensors` or `per_layer_prompt.safetensors`).

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

from prompt_tuning.checkpoints.prompt_files import load_prompt_file

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ID_RULE = "1-128 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"
PREFIX_SITES = ("encoder", "decoder", "cross")
IA3_ATTENTIONS = {"encoder": ("self_attention",), "decoder": ("self_attention", "cross_attention")}
PER_LAYER_MODES = ("replace", "add")
EXPORTED_METHODS = ("prefix", "ia3", "per_layer_prompt")  # `<name>.safetensors` in a training export folder


class PromptError(ValueError):
  """An upload or a reference the server refuses; `status` is the HTTP status to answer with."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass(frozen=True)
class Limits:
  """What the backbone and the server's compiled shapes accept.

  Attributes:
    emb_dim: the backbone's embedding width D.
    num_heads, head_dim: the attention's heads and head width.
    layers: {site: layer count} of the backbone.
    max_prompt_length: longest prompt (the prompt table's width).
    max_prefix_length: longest prefix (the prefix table's width).
    encoder_layers, decoder_layers, mlp_dim: the backbone's depth and feed-forward width (IA3, per-layer prompts).
    methods: the methods this server serves (`EngineShapes.methods`).
  """

  emb_dim: int
  num_heads: int
  head_dim: int
  layers: Mapping[str, int]
  max_prompt_length: int
  max_prefix_length: int
  encoder_layers: int
  decoder_layers: int
  mlp_dim: int
  methods: tuple[str, ...] = ("prompt", "prefix", "ia3", "per_layer_prompt")


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
    """Vectors per row: prompt, prefix or per-layer prompt length; 0 for IA3 (it adds no positions)."""
    axis = {"prefix": 1, "prompt": 0, "per_layer_prompt": 1}.get(self.method)
    return 0 if axis is None else int(next(iter(self.arrays.values())).shape[axis])

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


def _validate_prompt(arrays: dict[str, np.ndarray], limits: Limits) -> None:
  if set(arrays) != {"prompt"}:
    raise PromptError(f"method 'prompt' takes one array named 'prompt' [P, {limits.emb_dim}]; got {sorted(arrays)}.")
  shape = arrays["prompt"].shape
  if len(shape) != 2 or shape[0] < 1:
    raise PromptError(f"'prompt' has shape {list(shape)}; a prompt is [P, D] (length, embedding width).")
  if shape[1] != limits.emb_dim:
    raise PromptError(
      f"'prompt' has width {shape[1]} but this backbone embeds tokens in {limits.emb_dim} dimensions; the prompt was "
      "trained for another model size."
    )
  if shape[0] > limits.max_prompt_length:
    raise PromptError(
      f"'prompt' has {shape[0]} vectors; this server takes at most {limits.max_prompt_length} "
      "(restart it with a larger --gin.EngineShapes.max_prompt_length)."
    )


def _validate_prefix(arrays: dict[str, np.ndarray], limits: Limits) -> None:
  expected = {f"{site}/{n}" for site in limits.layers for n in ("key", "value")}
  unknown = set(arrays) - expected
  if unknown or not arrays:
    raise PromptError(
      f"method 'prefix' takes arrays named <site>/key and <site>/value for sites {sorted(limits.layers)}; "
      f"got {sorted(arrays)}."
    )
  lengths = set()
  for site in {name.split("/")[0] for name in arrays}:
    if f"{site}/key" not in arrays or f"{site}/value" not in arrays:
      raise PromptError(f"prefix site {site!r} needs both '{site}/key' and '{site}/value'.")
    want = (limits.layers[site], limits.num_heads, limits.head_dim)
    for name in (f"{site}/key", f"{site}/value"):
      shape = arrays[name].shape
      if len(shape) != 4 or (shape[0], shape[2], shape[3]) != want:
        raise PromptError(
          f"{name!r} has shape {list(shape)}; this backbone needs [{want[0]}, P, {want[1]}, {want[2]}] "
          "(layers, prefix length, heads, head_dim)."
        )
      lengths.add(shape[1])
  if len(lengths) != 1:
    raise PromptError(f"the prefix sites have different lengths {sorted(lengths)}; use one prefix length.")
  length = lengths.pop()
  if not 1 <= length <= limits.max_prefix_length:
    raise PromptError(
      f"the prefix has {length} vectors; this server takes 1 to {limits.max_prefix_length} "
      "(restart it with a larger --gin.EngineShapes.max_prefix_length)."
    )


def _validate_ia3(arrays: dict[str, np.ndarray], limits: Limits) -> None:
  layers = {"encoder": limits.encoder_layers, "decoder": limits.decoder_layers}
  kv = limits.num_heads * limits.head_dim
  expected = {}
  for stack, attentions in IA3_ATTENTIONS.items():
    for attention in attentions:
      for name in ("key_scale", "value_scale"):
        expected[f"{stack}/{attention}/{name}"] = (layers[stack], kv)
    expected[f"{stack}/mlp/scale"] = (layers[stack], limits.mlp_dim)
  unknown = sorted(set(arrays) - set(expected))
  if unknown or not arrays:
    raise PromptError(f"method 'ia3' takes arrays named any of {sorted(expected)}; got {unknown or 'none'}.")
  for name, array in arrays.items():
    if array.shape != expected[name]:
      raise PromptError(
        f"{name!r} has shape {list(array.shape)}; this backbone needs {list(expected[name])} (layers, "
        f"{'mlp_dim' if name.endswith('mlp/scale') else 'heads x head_dim'})."
      )


def _validate_per_layer_prompt(arrays: dict[str, np.ndarray], limits: Limits) -> None:
  if len(arrays) != 1 or next(iter(arrays)) not in PER_LAYER_MODES:
    raise PromptError(
      f"method 'per_layer_prompt' takes one array named by its mode, 'replace' or 'add', [layers, P, "
      f"{limits.emb_dim}]; got {sorted(arrays)}."
    )
  ((name, array),) = arrays.items()
  shape = array.shape
  if len(shape) != 3 or shape[0] != limits.encoder_layers or shape[2] != limits.emb_dim or shape[1] < 1:
    raise PromptError(
      f"{name!r} has shape {list(shape)}; this backbone needs [{limits.encoder_layers}, P, {limits.emb_dim}] "
      "(encoder layers, prompt length, embedding width)."
    )
  if shape[1] > limits.max_prompt_length:
    raise PromptError(
      f"the per-layer prompt has {shape[1]} vectors; this server takes at most {limits.max_prompt_length} "
      "(restart it with a larger --gin.EngineShapes.max_prompt_length)."
    )


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  validate: Callable[[dict[str, np.ndarray], Limits], None]


METHODS = {
  m.name: m
  for m in (
    Method("prompt", _validate_prompt),
    Method("prefix", _validate_prefix),
    Method("ia3", _validate_ia3),
    Method("per_layer_prompt", _validate_per_layer_prompt),
  )
}


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
  if method not in METHODS:
    raise PromptError(f"unknown method {method!r}; this server takes {sorted(METHODS)}.")
  if method not in limits.methods:
    table = " and --gin.EngineShapes.max_prefix_length=N" if method == "prefix" else ""
    raise PromptError(
      f"method {method!r} is not served here: this server was started with EngineShapes.methods={limits.methods}; "
      f"restart it with {method!r} in --gin.EngineShapes.methods{table}."
    )
  checked = {str(name): _finite_floats(str(name), np.asarray(a)) for name, a in arrays.items()}
  METHODS[method].validate(checked, limits)
  for a in checked.values():
    a.setflags(write=False)
  return PromptEntry(prompt_id, method, checked, version, source)


def _read_export(folder: Path) -> tuple[str, dict[str, np.ndarray]] | None:
  """(method, arrays) of a training export folder holding one method's `<name>.safetensors`; None if it holds none."""
  from safetensors import safe_open

  found = [name for name in EXPORTED_METHODS if (folder / f"{name}.safetensors").is_file()]
  if not found:
    return None
  if len(found) > 1:
    raise PromptError(f"{folder} holds the exports of {found}; a library entry is one method: copy one out.")
  method = found[0]
  with safe_open(str(folder / f"{method}.safetensors"), "np") as f:
    metadata = f.metadata() or {}
    arrays = {name.replace(".", "/"): f.get_tensor(name) for name in f.keys()}
  if method == "per_layer_prompt":
    mode = metadata.get("mode")
    if mode not in PER_LAYER_MODES:
      raise PromptError(
        f"{folder}/per_layer_prompt.safetensors does not record its mode (exports before the server read it); "
        "upload it with PUT {'method': 'per_layer_prompt', 'arrays': {'replace' or 'add': [...]}}."
      )
    arrays = {mode: arrays["prompts"]}
  return method, arrays


def read_entry_file(path: Path) -> tuple[str, dict[str, np.ndarray]]:
  """(method, arrays) of one library file or folder (formats in the module docstring)."""
  if path.is_dir():
    exported = _read_export(path)
    if exported is not None:
      return exported
  if path.suffix == ".safetensors":
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
      metadata = f.metadata() or {}
      if metadata.get("method", "prompt") != "prompt":
        return metadata["method"], {name: f.get_tensor(name) for name in f.keys()}
  return "prompt", {"prompt": load_prompt_file(path)}


def save_entry(path: str | Path, method: str, arrays: Mapping[str, Any]) -> Path:
  """Writes (method, arrays) as `path` (.safetensors with the method in its metadata), readable by the library."""
  from safetensors.numpy import save_file

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  save_file({n: np.ascontiguousarray(a, np.float32) for n, a in arrays.items()}, str(path), {"method": method})
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

  def delete(self, prompt_id: str) -> PromptEntry:
    """Removes an entry, and its files from `files` (requests holding it finish with it). Raises PromptError (404)."""
    with self._change_lock:
      entry = self.get(prompt_id)
      if self.files is not None:
        self.files.remove(prompt_id)
      with self._lock:
        del self._entries[prompt_id]
        self._bytes -= entry.nbytes
    return entry

  def load_folder(self, folder: str | Path) -> list[str]:
    """Adds every entry of a library folder with its recorded version; returns the ids. Raises PromptError naming
    the bad file."""
    from prompt_tuning.serve import library_files

    files = self.files if self.files is not None and Path(folder) == self.files.folder else None
    return library_files.restore(self, files or library_files.LibraryFolder(folder, writable=False))


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
