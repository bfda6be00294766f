"""Prompt files: reading and writing a trained prompt [P, D] outside a training checkpoint.

Formats read by `load_prompt_file`, chosen from the path:

- `*.npy`: a numpy array [P, D] (any float dtype is accepted and cast to
  float32); also a file without the extension holding .npy content, as the
  reference implementation writes them
  (`numpy_checkpoints/checkpoint_<step>/encoder.prompt.prompt.prompt`, float32
  or float64);
- `*.safetensors`: a file with one tensor, or with a tensor named `prompt`
  or `prompt_embeddings`;
- a folder with `adapter_config.json`: a Hugging Face PEFT prompt-tuning
  adapter (`prompt_tuning.checkpoints.peft`);
- a folder with `prompt.npy`: one step of a training run
  (MODEL_DIR/numpy_checkpoints/checkpoint_<step>/), or with the reference's
  one prompt variable (`encoder.prompt.prompt.prompt`,
  `decoder.prompt.prompt.prompt`);
- a folder with `numpy_checkpoints/checkpoint_<step>/` holding either: a
  training run's MODEL_DIR, ours or the reference's; its latest step is read.

Any of them may be on Cloud Storage (gs://bucket/run, a MODEL_DIR trained there): what is read is copied to a
local temporary folder first (numpy's and safetensors' readers read local files): the file, the folder's own
files (a PEFT adapter or a step folder), or of a MODEL_DIR only its newest numpy checkpoint step that holds a
prompt, never its training checkpoints.

`save_prompt_file` writes `.npy` or `.safetensors` (tensor `prompt`; its header records {"method": "prompt"} and
what the writer adds, such as the backbone the prompt was trained on: `BACKBONE_KEYS`, read by `recorded_backbone`).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from prompt_tuning import storage
from prompt_tuning.checkpoints.errors import CheckpointError
from prompt_tuning.checkpoints.peft import load_peft_adapter
from prompt_tuning.checkpoints.prompt_arrays import check_prompt_array, read_safetensors_file
from prompt_tuning.validation import resolve_inside

SAFETENSORS_KEYS = ("prompt", "prompt_embeddings")
_FORMATS = (
  "a .npy file (or .npy content without the extension, as the reference writes it), a .safetensors file, a PEFT "
  "adapter folder (adapter_config.json), a training step folder (prompt.npy, or the reference's "
  "encoder.prompt.prompt.prompt) or a MODEL_DIR (numpy_checkpoints/checkpoint_<step>/), ours or the reference's"
)
NPY_MAGIC = b"\x93NUMPY"
# What the reference's prompt checkpointer names a prompt variable: its parameter path, dotted.
_REFERENCE_PROMPT_NAME = re.compile(r"(encoder|decoder)(\.[\w]+)*\.prompt")


def _is_npy(path: Path) -> bool:
  with open(path, "rb") as f:
    return f.read(len(NPY_MAGIC)) == NPY_MAGIC


def _step_prompt(step_dir: Path) -> Path | None:
  """The prompt file of one numpy checkpoint step: ours (prompt.npy) or the reference's single prompt variable.

  Raises:
    ValueError: the folder holds several reference prompt variables (a multi-task or per-layer run).
  """
  if (step_dir / "prompt.npy").is_file():
    return step_dir / "prompt.npy"
  candidates = sorted(
    child for child in step_dir.iterdir() if child.is_file() and _REFERENCE_PROMPT_NAME.fullmatch(child.name)
  )
  if len(candidates) > 1:
    names = ", ".join(c.name for c in candidates)
    raise ValueError(f"{step_dir} holds several prompt variables ({names}); give PROMPT_FILE the one to read.")
  return candidates[0] if candidates and _is_npy(candidates[0]) else None


def _latest_numpy_checkpoint(model_dir: Path) -> Path | None:
  steps = []
  for child in (model_dir / "numpy_checkpoints").glob("checkpoint_*"):
    match = re.fullmatch(r"checkpoint_(\d+)", child.name)
    if match and child.is_dir():
      prompt = _step_prompt(child)
      if prompt is not None:
        steps.append((int(match.group(1)), prompt))
  return max(steps)[1] if steps else None


def _check_npy_size(path: Path) -> None:
  """Refuses a .npy file whose header asks for more bytes than the file holds, before anything is allocated (a
  128-byte file claiming a [10**9, 256] array would otherwise be a 954 GiB MemoryError naming no file).

  Headers numpy cannot parse are left to np.load, which says what is wrong with them.

  Raises:
    CheckpointError: naming the file, the shape it claims and the bytes it holds.
  """
  with open(path, "rb") as f:
    try:
      version = np.lib.format.read_magic(f)
      read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
      shape, _, dtype = read_header(f)
    except (ValueError, EOFError, OSError):
      return
    if dtype.hasobject:
      return  # pickled objects: np.load refuses them (allow_pickle=False)
    needed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    held = os.fstat(f.fileno()).st_size - f.tell()
  if needed > held:
    raise CheckpointError(
      f"{path} claims an array of shape {shape} ({dtype}, {needed:,} bytes) but holds {held:,} bytes after its "
      "header: it is truncated or crafted. Save or copy it again."
    )


def read_npy(path: Path) -> np.ndarray:
  """np.load without pickles, its errors turned into ours (naming the file, saying what to do).

  Raises:
    CheckpointError: a truncated or non-.npy file (its size checked against its header before anything is
      allocated), or one holding pickled objects.
  """
  _check_npy_magic(path)
  _check_npy_size(path)
  try:
    return np.load(path, allow_pickle=False)
  except ValueError as e:
    if "pickle" in str(e):
      raise CheckpointError(
        f"{path} holds pickled Python objects, which are never loaded here: save the prompt as a float array "
        "[P, D] with numpy.save."
      ) from None
    raise CheckpointError(f"{path} is not a readable .npy array ({e}); it is corrupt: save or copy it again.") from e
  except (EOFError, OSError) as e:
    raise CheckpointError(
      f"{path} is truncated or not a .npy file ({type(e).__name__}: {e}); save or copy it again."
    ) from e


NPY_MAGIC = b"\x93NUMPY"


def _check_npy_magic(path: Path) -> None:
  """Refuses a file that does not start as a .npy file does (numpy would take any other bytes for a pickle)."""
  try:
    with open(path, "rb") as f:
      head = f.read(9)
  except OSError as e:
    raise CheckpointError(f"{path} cannot be read ({e.strerror}); check the path and its permissions.") from None
  if head.startswith(NPY_MAGIC):
    return
  # safetensors: an 8-byte little-endian header length, then the JSON header.
  if len(head) == 9 and head[8:9] == b"{":
    what = "it is a safetensors file: rename it to end in .safetensors"
  else:
    what = "save the prompt with numpy.save, or copy it again"
  raise CheckpointError(f"{path} is truncated or not a .npy file (it does not start with numpy's magic bytes): {what}.")


def _read_safetensors(path: Path) -> np.ndarray:
  tensors = read_safetensors_file(path)
  if len(tensors) == 1:
    return next(iter(tensors.values()))
  for key in SAFETENSORS_KEYS:
    if key in tensors:
      return tensors[key]
  raise ValueError(
    f"{path} holds tensors {sorted(tensors)}; expected a single tensor or one named {' or '.join(SAFETENSORS_KEYS)}."
  )


def _read_folder(path: Path) -> np.ndarray:
  if (path / "adapter_config.json").is_file():
    return load_peft_adapter(path)
  step_prompt = _step_prompt(path)
  if step_prompt is not None:
    return read_npy(resolve_inside(path, step_prompt.name, f"the prompt folder {path}"))
  latest = _latest_numpy_checkpoint(path)
  if latest is not None:
    return read_npy(resolve_inside(path, str(latest.relative_to(path)), f"the MODEL_DIR {path}"))
  raise ValueError(f"the folder {path} holds no prompt; expected {_FORMATS}.")


def _read(path: Path) -> np.ndarray:
  if path.is_dir():
    return _read_folder(path)
  if path.suffix == ".npy":
    return read_npy(path)
  if path.suffix == ".safetensors":
    return _read_safetensors(path)
  if _is_npy(path):  # The reference's files: .npy content, no extension.
    return read_npy(path)
  raise ValueError(f"cannot read a prompt from {path} (unknown extension {path.suffix!r}); expected {_FORMATS}.")


def load_prompt_file(path: str | os.PathLike, embed_dim: int | None = None) -> np.ndarray:
  """Reads a prompt in any of the formats of the module docstring.

  Args:
    path: the file or folder.
    embed_dim: when given, the backbone's embedding width D the prompt must have.

  Returns:
    float32 [P, D].

  Raises:
    FileNotFoundError: nothing at `path`.
    ValueError: an unknown format, or a prompt that is not finite floats [P, embed_dim].
  """
  if storage.is_remote(path):
    return _load_remote(os.fspath(path), embed_dim)
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"no prompt at {path}; expected {_FORMATS}.")
  return check_prompt_array(_read(path), embed_dim, source=f"the prompt in {path}")


def _load_remote(url: str, embed_dim: int | None) -> np.ndarray:
  """`load_prompt_file` of a gs:// file or folder: read from a local copy of what is read (module docstring); an
  error names the gs:// path, not the copy's."""
  storage.check_scheme(url, "the prompt")
  remote = storage.path(url)
  if not remote.exists():
    raise FileNotFoundError(f"no prompt at {url}; expected {_FORMATS}.")
  with tempfile.TemporaryDirectory(prefix="prompt-") as staging:
    local = Path(staging) / (remote.name or "prompt")
    try:
      _copy_down(remote, local)
      return check_prompt_array(_read(local), embed_dim, source=f"the prompt in {url}")
    except ValueError as e:  # CheckpointError is one
      raise type(e)(str(e).replace(str(local), url.rstrip("/"))) from None


def _copy_down(remote, local: Path) -> None:
  """Copies into `local` what `_read` reads of the gs:// file or folder `remote`."""
  if not remote.is_dir():
    storage.download(remote, local)
    return
  numpy_checkpoints = remote / "numpy_checkpoints"
  if not (remote / "adapter_config.json").is_file() and numpy_checkpoints.is_dir():
    steps = sorted(
      (int(match.group(1)), child)
      for child in numpy_checkpoints.iterdir()
      if (match := re.fullmatch(r"checkpoint_(\d+)", child.name))
    )
    for _, child in reversed(steps):  # the newest step with a prompt, as `_latest_numpy_checkpoint` picks it
      step = storage.download(child, local / "numpy_checkpoints" / child.name, recursive=False)
      if _step_prompt(step) is not None:
        return
  storage.download(remote, local, recursive=False)


def npy_bytes(prompt) -> bytes:
  """`prompt` [P, D] as the bytes of a float32 .npy file (checked as every prompt written is)."""
  import io

  buffer = io.BytesIO()
  np.save(buffer, check_prompt_array(np.asarray(prompt)))
  return buffer.getvalue()


def save_prompt_file(path: str | os.PathLike, prompt, metadata: dict[str, str] | None = None) -> Path:
  """Writes `prompt` [P, D] as float32 `.npy` or `.safetensors` (tensor "prompt"), by the path's extension, whole or
  not at all (a temporary file renamed into place: a reader never sees half a prompt).

  A `.safetensors` file records {"method": "prompt"} and `metadata` (strings, e.g. `BACKBONE_KEYS`) in its header, so
  it is a library entry of the server as it is; a `.npy` file records nothing.
  """
  from safetensors.numpy import save

  path = Path(path)
  prompt = check_prompt_array(np.asarray(prompt))
  if path.suffix not in (".npy", ".safetensors"):
    raise ValueError(f"cannot write a prompt to {path}: use a .npy or .safetensors path.")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  try:
    with open(tmp, "wb") as f:
      if path.suffix == ".npy":
        np.save(f, prompt)
      else:
        f.write(save({"prompt": prompt}, {"method": "prompt", **(metadata or {})}))
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return path


# What a prompt records of the backbone it was trained on: the training checkpoint's meta (a MODEL_DIR) and the
# header of a method's export file hold these keys (`prompt_tuning.checkpoints.training.backbone_fingerprint` and its
# version, and INITIAL_CHECKPOINT_PATH to name it).
BACKBONE_KEYS = ("backbone_fingerprint", "backbone_fingerprint_version", "backbone_path")


def recorded_backbone(path: str | os.PathLike) -> dict[str, str] | None:
  """{BACKBONE_KEYS: str} that a prompt file or folder records, or None where it records none that can be compared.

  A MODEL_DIR records them in its newest training checkpoint's meta, and a step folder
  (MODEL_DIR/numpy_checkpoints/checkpoint_<step>) in its run's; a `.safetensors` export in its header. Files written
  before the backbone was recorded, .npy files and PEFT folders record none; nor, for comparing, do records of
  another fingerprint version than this one's (`training.FINGERPRINT_VERSION`: the same backbone fingerprints
  differently under another version). `path` may be on gs:// (a remote .safetensors file is copied down to read).
  """
  from prompt_tuning.checkpoints.training import FINGERPRINT_VERSION, newest_meta

  path = storage.path(path)
  meta: dict | None = None
  if path.is_dir():
    step_folder = re.fullmatch(r"checkpoint_(\d+)", path.name) and path.parent.name == "numpy_checkpoints"
    meta = newest_meta(path.parent.parent if step_folder else path)
  elif path.suffix == ".safetensors":
    meta = _safetensors_metadata(path)
  if not meta or not meta.get("backbone_fingerprint"):
    return None
  if str(meta.get("backbone_fingerprint_version")) != str(FINGERPRINT_VERSION):
    return None
  return {key: str(meta.get(key) or "") for key in BACKBONE_KEYS}


def _safetensors_metadata(path) -> dict:
  """The header metadata of a .safetensors file, local or on gs:// (copied down first)."""
  from safetensors import safe_open

  if not storage.is_remote(path):
    with safe_open(str(path), "np") as f:
      return dict(f.metadata() or {})
  with tempfile.TemporaryDirectory(prefix="prompt-") as staging:
    return _safetensors_metadata(storage.download(path, Path(staging) / path.name))
