"""The tuning-method interface: everything the rest of the system knows about a method is what `Method` declares.

Adding a method is one module in `prompt_tuning.methods` (a `Method` subclass, a frozen dataclass of its
settings, gin-configurable) and a gin file in gin/prompts/; if it needs a site the model does not have yet,
declare the site's leaves in `prompt_tuning.models.adapters.SITE_LEAVES` and read them in the layer that owns
the site. Training, eval, infer, export, the server's library and its batches then take the method without
edits. A method owns one subtree of the run's parameter tree, under its `name`
({"t5": backbone, "prompt": ..., "prefix": ..., "ia3": ...}).

What a configured method (an instance, with its settings) gives:

- `init(rng, backbone, config)`: its fresh float32 parameters;
- `logical_axes(shapes)`: a PartitionSpec of logical axis names per leaf (replicated, unfactored by default);
- `input_length`: positions it adds to the input (a prompt's P; 0 for methods that add none);
- `task_count`: the tasks a multi-task method tells apart (0: single-task), so the data path gives every batch
  its rows' (packed: segments') "task_ids";
- `adapters(params, config, task_ids=None)`: what it feeds the frozen T5, an adapters pytree keyed by site
  (`prompt_tuning.models.adapters`); `task_ids` (int [B], from the batch's "task_ids" when it has them; int
  [B, S] for packed rows: one per segment) lets a multi-task method give each row (segment) its own vectors;
  methods are merged, and two methods feeding one leaf is an error;
- `reads_inputs` / `check_backbone(config, fingerprint, path)`: a method whose vectors depend on each row's input
  (ATTEMPT) is given the embedding and the batch's tokens by `adapters(..., inputs=...)`; one that reads frozen
  vectors trained on a backbone (ATTEMPT's source prompts) refuses another backbone before a run starts, and
  `frozen_inputs()` identifies them in each training checkpoint (a resume with other ones is refused);
- `fold(params, config)`: its serving form (the prefix MLP folded away; the identity for the others), which
  `adapters` accepts as well;
- `export(params, config, folder, metadata=None)` / `load(folder, config)`: its portable files (`<name>.safetensors`
  with the metadata {"method": name} and the backbone it was trained on, and npy), read back as the folded tree.

What the method itself (its class, no settings needed: a server knows a method by its name) gives, for vectors
handed in by a user (an upload to the server, a library file):

- `leaves`: the (sub-site, leaf) pairs of the contract it may feed, e.g. (("input", "prompt"), ...): a server
  gives every row of a batch these leaves of every method it serves, padded to the identity;
- `unserved_reason()`: why a server never takes its vectors (None: it does; ATTEMPT's and the per-task tables'
  say why, and what to serve instead);
- `check(arrays, limits)`: what is wrong with named arrays a user hands in, raised as `PromptError`; the
  default checks the names and shapes against `leaves` (arrays named by their path, "decoder/mlp/scale");
- `entry(arrays)`: the adapters pytree of those (checked) arrays, one row, no batch axis; the default reads the
  names as paths;
- `read_export(tensors, metadata)`: the named arrays of its export file (`export_file`), the same names
  `check` takes: the library entry *is* the export; `read_file(path)`: arrays of other files it reads (the
  prompt's .npy, PEFT folders), None for files it does not.

A method whose trainable tree is laid out by site needs no more than this (import its module in
`prompt_tuning.methods.__init__` so that it is registered; tests/test_site_contract.py serves one like it):

    @gin.configurable(module="prompt_tuning.methods")
    @dataclasses.dataclass(frozen=True)
    class DecoderMLPScale(Method):
      name = "decoder_mlp_scale"            # its subtree, its files, its name in requests
      leaves = (("mlp", "scale"),)          # the contract's leaves it feeds (adapters.SITE_LEAVES)

      def init(self, rng, backbone, config):
        return {"decoder": {"mlp": {"scale": jnp.ones((config.num_decoder_layers, config.mlp_dim))}}}

      def adapters(self, params, config, task_ids=None):
        return params                       # laid out by site already

The trainable set of a run is derived from the methods in use (`trainable_pattern`); model tuning is the
pattern `.*` ("trainable = the backbone", with or without methods). Every subclass with a `name` is
registered (`registered`, `method_class`).
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import jax
import numpy as np
from jax.sharding import PartitionSpec

from prompt_tuning.checkpoints.param_tree import unflatten
from prompt_tuning.models import adapters as sites
from prompt_tuning.models.adapters import Adapters
from prompt_tuning.models.configs import T5Config

PyTree = Any

_REGISTRY: dict[str, type[Method]] = {}


class PromptError(ValueError):
  """Vectors a user handed in that cannot be used (an upload, a library file); `status` is the HTTP status to
  answer with."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass(frozen=True)
class Limits:
  """What a backbone and a server's compiled shapes accept, for checking vectors handed in.

  Attributes:
    config: the backbone's architecture.
    widths: the width of each padded axis (`adapters.PADDED_AXES`: "prompt", "prefix", "rank") the server
      compiled for; 0 where it takes none.
    methods: the names of the methods served.
    settings: for messages, the setting that sets each width (e.g. {"prompt": "--gin.EngineShapes.max_prompt_length"}).
  """

  config: T5Config
  widths: Mapping[str, int]
  methods: tuple[str, ...]
  settings: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def emb_dim(self) -> int:
    return self.config.emb_dim

  def width(self, axis: str) -> int:
    return int(self.widths.get(axis, 0))

  def setting(self, axis: str) -> str:
    return self.settings.get(axis, f"the server's width of the {axis} axis")

  def check_prompt_length(self, what: str, length: int) -> None:
    """Refuses `length` prompt vectors beyond the width the server (or infer) takes.

    Raises:
      PromptError: naming `what` ("'prompt'", "the per-layer prompt") and the setting to raise.
    """
    if length > self.width("prompt"):
      raise PromptError(
        f"{what} has {length} vectors; this server takes at most {self.width('prompt')} "
        f"(restart it with a larger {self.setting('prompt')})."
      )


class Method(abc.ABC):
  """One tuning method; subclasses are frozen dataclasses holding its settings (see the module docstring)."""

  name: ClassVar[str]  # the key of its subtree in the run's parameter tree, and its name in files and requests
  leaves: ClassVar[tuple[tuple[str, str], ...]] = ()  # (sub-site, leaf) pairs of `adapters.SITE_LEAVES` it feeds
  # Whether its vectors depend on each row's input (ATTEMPT): `adapters` is then also given
  # `inputs=(embedding [V, D], encoder_input_tokens int [B, T])`, the frozen token embedding and the batch's tokens.
  reads_inputs: ClassVar[bool] = False

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    name = cls.__dict__.get("name")
    if isinstance(name, str):
      known = _REGISTRY.get(name)
      if known is not None and not issubclass(cls, known):
        raise ValueError(f"two tuning methods are named {name!r} ({known.__qualname__}, {cls.__qualname__}).")
      _REGISTRY[name] = cls
      sites.paths(cls.leaves)  # every leaf it names is declared

  # -- a configured method ------------------------------------------------------------------------------------

  @abc.abstractmethod
  def init(self, rng: jax.Array, backbone: PyTree, config: T5Config) -> PyTree:
    """Fresh float32 parameters of the method."""

  def logical_axes(self, shapes: PyTree) -> PyTree:
    """Logical axis names per leaf; default: replicated (no name on any axis)."""
    return jax.tree.map(lambda x: PartitionSpec(*([None] * len(x.shape))), shapes)

  @property
  def input_length(self) -> int:
    """Positions the method adds to the input (a prompt's length); 0: none."""
    return 0

  @property
  def task_count(self) -> int:
    """Tasks a multi-task method tells apart: each row's (packed: each segment's) `task_ids` are 0 .. count - 1,
    read from the data (`prompt_tuning.inputs`); 0 (the default): a single-task method, fed no task ids."""
    return 0

  @abc.abstractmethod
  def adapters(self, params: PyTree, config: T5Config, task_ids: jax.Array | None = None) -> Adapters:
    """The method's adapters pytree (by site) from its trained or folded parameters.

    Args:
      params: its subtree (trained or folded).
      config: the backbone's architecture.
      task_ids: int [B], each row's task (multi-task methods); None: no task ids (single-task methods ignore
        them).
    """

  def check_backbone(self, config: T5Config, fingerprint: Callable[[], str], path: str | None) -> None:
    """Refuses a backbone that frozen vectors the method reads (ATTEMPT's source prompts) were not trained on; the
    run builder calls it before training or inference. `fingerprint()` computes the backbone's
    (`checkpoints.training.backbone_fingerprint`); `path` is INITIAL_CHECKPOINT_PATH. The default reads none."""
    del config, fingerprint, path

  def frozen_inputs(self) -> str | None:
    """What identifies frozen vectors the method reads besides its trained tree (ATTEMPT's sources: names and a
    digest of their values), recorded in every training checkpoint so that a run resumes only with the same ones;
    None (the default): it reads none."""
    return None

  def fold(self, params: PyTree, config: T5Config) -> PyTree:
    """The serving form of the parameters (default: unchanged)."""
    del config
    return params

  def export(
    self, params: PyTree, config: T5Config, folder: str | Path, metadata: dict[str, str] | None = None
  ) -> list[Path]:
    """Writes the folded parameters into `folder` (see `write_tree`); returns the paths written. `metadata`
    (strings: train gives the backbone, `prompt_files.BACKBONE_KEYS`) is recorded in the export file's header."""
    return write_tree(self.fold(params, config), self.name, folder, metadata)

  def load(self, folder: str | Path, config: T5Config) -> PyTree:
    """Reads what `export` wrote (the folded tree)."""
    del config
    return read_tree(self.name, folder)

  # -- the method itself: vectors handed in by a user -----------------------------------------------------------

  @classmethod
  def export_file(cls) -> str | None:
    """The file of an export folder that holds the method's vectors (None: it has none the library reads)."""
    return f"{cls.name}.safetensors"

  @classmethod
  def unserved_reason(cls) -> str | None:
    """Why a server never takes this method's vectors, said to a user who uploads them (and to EngineShapes.methods
    naming it); None (the default): a server serves them."""
    return None

  @classmethod
  def check(cls, arrays: Mapping[str, np.ndarray], limits: Limits) -> None:
    """Refuses named float32 arrays that are not this method's vectors for this backbone and server.

    The default takes arrays named by their site path ("encoder/mlp/scale") for any of `leaves`, each of the
    leaf's shape, a padded axis 1 to its width long and one length per padded axis.

    Raises:
      PromptError: saying which array is wrong and what was expected.
    """
    config = limits.config
    expected = {"/".join(p): p for p in sites.paths(cls.leaves, config)}
    unknown = sorted(set(arrays) - set(expected))
    if unknown or not arrays:
      raise PromptError(f"method {cls.name!r} takes arrays named any of {sorted(expected)}; got {unknown or 'none'}.")
    lengths: dict[str, set[int]] = {}
    for name, array in arrays.items():
      path = expected[name]
      leaf, full = sites.leaf_of(path), sites.shape_of(path, config, limits.widths)
      shape, axis = tuple(array.shape), leaf.padded_axis
      wanted = [a if i == axis else n for i, (a, n) in enumerate(zip(leaf.axes, full))]
      fits = len(shape) == len(full) and all(i == axis or n == m for i, (n, m) in enumerate(zip(shape, full)))
      if not fits:
        raise PromptError(f"{name!r} has shape {list(shape)}; this backbone needs {wanted} ({', '.join(leaf.axes)}).")
      if axis is not None:
        lengths.setdefault(leaf.axes[axis], set()).add(shape[axis])
    for axis, found in lengths.items():
      if len(found) != 1:
        raise PromptError(f"the arrays of method {cls.name!r} have {axis} lengths {sorted(found)}; use one.")
      (length,) = found
      if not 1 <= length <= limits.width(axis):
        raise PromptError(
          f"the {axis} axis of method {cls.name!r} is {length} long; this server takes 1 to "
          f"{limits.width(axis)} (restart it with a larger {limits.setting(axis)})."
        )

  @classmethod
  def entry(cls, arrays: Mapping[str, np.ndarray]) -> Adapters:
    """The adapters pytree of checked arrays (one row, no batch axis); the default reads names as site paths."""
    return unflatten(arrays)

  @classmethod
  def read_export(cls, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The named arrays `check` takes, from the tensors and metadata of its export file (or a library entry
    `prompt_tuning.serve.store.save_entry` wrote); the default joins the export's '.' paths with '/'."""
    del metadata
    return {name.replace(".", "/"): array for name, array in tensors.items()}

  @classmethod
  def read_file(cls, path: Path) -> dict[str, np.ndarray] | None:
    """The named arrays of a library file or folder in a format of its own; None (the default): not one."""
    del path
    return None


def registered() -> dict[str, type[Method]]:
  """Every method by name (the built-in ones once `prompt_tuning.methods` is imported)."""
  return dict(_REGISTRY)


def method_class(name: str) -> type[Method]:
  """The method named `name`. Raises PromptError naming the known ones."""
  if name not in _REGISTRY:
    raise PromptError(f"unknown method {name!r}; this server takes {sorted(_REGISTRY)}.")
  return _REGISTRY[name]


def _flat(tree: PyTree, prefix: str = "") -> dict[str, np.ndarray]:
  if not isinstance(tree, dict):
    return {prefix: np.asarray(jax.device_get(tree), np.float32)}
  out = {}
  for key, value in tree.items():
    out.update(_flat(value, f"{prefix}.{key}" if prefix else key))
  return out


def write_tree(tree: PyTree, name: str, folder: str | Path, metadata: dict[str, str] | None = None) -> list[Path]:
  """Writes a tree of arrays as `<name>.safetensors` (keys joined by '.') and `<name>.npy` files.

  A single array becomes `<name>.npy`; a tree becomes `<name>.<path>.npy` per leaf. The safetensors header
  records {"method": name} and `metadata` (strings: a setting a reader needs, such as the per-layer prompt's
  mode), so the file alone is a library entry of the server.
  """
  from safetensors.numpy import save_file

  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  flat = _flat(tree)
  written = []
  for key, array in flat.items():
    path = folder / (f"{name}.npy" if key == "" else f"{name}.{key}.npy")
    np.save(path, array)
    written.append(path)
  safetensors_path = folder / f"{name}.safetensors"
  save_file(
    {key or name: array for key, array in flat.items()}, str(safetensors_path), {"method": name, **(metadata or {})}
  )
  return written + [safetensors_path]


def read_tree(name: str, folder: str | Path) -> PyTree:
  """Reads `<name>.safetensors` written by `write_tree` back into a nested tree.

  Raises:
    FileNotFoundError: no such export in `folder`, saying which file was expected.
  """
  from safetensors.numpy import load_file

  path = Path(folder) / f"{name}.safetensors"
  if not path.is_file():
    raise FileNotFoundError(f"no {name} export at {path}; write one with the method's export() (train does).")
  flat = load_file(str(path))
  if set(flat) == {name}:
    return flat[name]
  return unflatten({key.replace(".", "/"): array for key, array in flat.items()})


def trainable_pattern(methods: tuple[Method, ...]) -> str:
  """The regex over parameter paths that selects the methods' subtrees: `^(prompt|prefix)(/|$)`."""
  if not methods:
    return r"^$(?!)"  # selects nothing: there is no vector to train
  return r"^(" + "|".join(re.escape(m.name) for m in methods) + r")(/|$)"


def check_unique(methods: tuple[Method, ...]) -> None:
  names = [m.name for m in methods]
  if len(set(names)) != len(names):
    raise ValueError(f"tuning methods {names} repeat a name; give each method once.")
