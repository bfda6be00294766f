"""The tuning-method interface: what every method (prompt, prefix, per-layer prompt, IA3, ...) gives.

A method owns one subtree of the run's parameter tree, under its `name`
({"t5": backbone, "prompt": ..., "prefix": ..., "ia3": ...}), and says

- `init(rng, backbone, config)`: its fresh float32 parameters;
- `logical_axes(shapes)`: a PartitionSpec of logical axis names per leaf
  (replicated, unfactored axes by default);
- `adapters(params, config)`: what it feeds the frozen T5, an adapters pytree
  keyed by site (`prompt_tuning.models.adapters`); methods are merged, and two
  methods feeding one site is an error;
- `fold(params, config)`: its serving form (the prefix MLP folded away;
  the identity for the others), which `adapters` accepts as well;
- `export(params, config, folder)` / `load(folder, config)`: its portable
  files (npy and safetensors), read back as the folded tree.

Settings are the fields of each method's frozen dataclass, gin-configurable.
The trainable set of a run is derived from the methods in use
(`trainable_pattern`); model tuning is the pattern `.*` ("trainable = the
backbone", with or without methods).
"""

from __future__ import annotations

import abc
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec

from prompt_tuning.models.adapters import Adapters
from prompt_tuning.models.configs import T5Config

PyTree = Any


class Method(abc.ABC):
  """One tuning method; subclasses are frozen dataclasses holding its settings."""

  name: str  # the key of its subtree in the run's parameter tree

  @abc.abstractmethod
  def init(self, rng: jax.Array, backbone: PyTree, config: T5Config) -> PyTree:
    """Fresh float32 parameters of the method."""

  def logical_axes(self, shapes: PyTree) -> PyTree:
    """Logical axis names per leaf; default: replicated (no name on any axis)."""
    return jax.tree.map(lambda x: PartitionSpec(*([None] * len(x.shape))), shapes)

  @abc.abstractmethod
  def adapters(self, params: PyTree, config: T5Config) -> Adapters:
    """The method's adapters pytree (by site) from its trained or folded parameters."""

  def fold(self, params: PyTree, config: T5Config) -> PyTree:
    """The serving form of the parameters (default: unchanged)."""
    del config
    return params

  def export(self, params: PyTree, config: T5Config, folder: str | Path) -> list[Path]:
    """Writes the folded parameters into `folder` (see `write_tree`); returns the paths written."""
    return write_tree(self.fold(params, config), self.name, folder)

  def load(self, folder: str | Path, config: T5Config) -> PyTree:
    """Reads what `export` wrote (the folded tree)."""
    del config
    return read_tree(self.name, folder)


def _flat(tree: PyTree, prefix: str = "") -> dict[str, np.ndarray]:
  if not isinstance(tree, dict):
    return {prefix: np.asarray(jax.device_get(tree), np.float32)}
  out = {}
  for key, value in tree.items():
    out.update(_flat(value, f"{prefix}.{key}" if prefix else key))
  return out


def write_tree(tree: PyTree, name: str, folder: str | Path, metadata: dict[str, str] | None = None) -> list[Path]:
  """Writes a tree of arrays as `<name>.safetensors` (keys joined by '.') and `<name>.npy` files.

  A single array becomes `<name>.npy`; a tree becomes `<name>.<path>.npy` per leaf. `metadata` (strings) goes
  into the safetensors header (e.g. a setting a reader needs, such as the per-layer prompt's mode).
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
  save_file({key or name: array for key, array in flat.items()}, str(safetensors_path), metadata)
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
  tree: dict = {}
  for key, array in flat.items():
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = array
  return tree


def trainable_pattern(methods: tuple[Method, ...]) -> str:
  """The regex over parameter paths that selects the methods' subtrees: `^(prompt|prefix)(/|$)`."""
  if not methods:
    return r"^$(?!)"  # selects nothing: there is no vector to train
  return r"^(" + "|".join(re.escape(m.name) for m in methods) + r")(/|$)"


def check_unique(methods: tuple[Method, ...]) -> None:
  names = [m.name for m in methods]
  if len(set(names)) != len(names):
    raise ValueError(f"tuning methods {names} repeat a name; give each method once.")
