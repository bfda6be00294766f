"""Device mesh and logical-axis partitioning.

Every parameter carries logical axis names (`vocab`, `embed`, `mlp`, `heads`,
`joined_kv`, `prompt`, ...). Rules map them onto a ('data', 'model') mesh; a gin
file can replace the rules. Shardings are computed from `jax.eval_shape`, so
nothing is allocated before its place is known, and arrays are created in place
with `jax.jit(..., out_shardings=...)`.

The same code runs on one CPU, on 8 simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), on several processes
(`jax.distributed`) and on TPU/GPU pods.
"""

from __future__ import annotations

from collections.abc import Sequence

import gin
import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

# Random bits (dropout masks) computed per element from the key and the element's global index, so a mask does not
# depend on how its array is sharded: 1 device and 8 draw the same masks. JAX's default since 0.5; pinned here
# because equal results across meshes rely on it. What still differs between meshes is the order of floating-point
# reductions (~1e-7 relative per step); with dropout the tiny-model runs amplify it, as they amplify any 1e-6
# change of the initial prompt (tests/test_faults.py, the report of issue #13).
jax.config.update("jax_threefry_partitionable", True)

Rules = Sequence[tuple[str, str | None]]

DATA, MODEL = "data", "model"

# T5X's standard rules (1D parameter partitioning, model parallelism over
# heads / mlp / vocab). Prompt axes are replicated: prompts are tiny and every
# device needs all of them.
STANDARD_RULES: tuple[tuple[str, str | None], ...] = (
  ("batch", DATA),
  ("vocab", MODEL),
  ("embed", None),
  ("mlp", MODEL),
  ("heads", MODEL),
  ("kv", None),
  ("joined_kv", MODEL),
  ("relpos_buckets", None),
  ("layers", None),
  ("length", None),
  ("prompt", None),
  ("prompt_embed", None),
  ("prefix_mlp", None),
  ("act_batch", DATA),
  ("act_length", None),
  ("act_embed", None),
  ("act_mlp", MODEL),
  ("act_heads", MODEL),
  ("act_kv", None),
)


def make_mesh(num_partitions: int = 1, mesh_shape: Sequence[int] | None = None, devices=None) -> Mesh:
  """A ('data', 'model') mesh over all devices (of all processes).

  Args:
    num_partitions: devices along 'model' (model parallelism); the rest go to
      'data'. Ignored when `mesh_shape` is given.
    mesh_shape: explicit (data, model) sizes.
    devices: the devices to use (default: all).

  Raises:
    ValueError: when the device count does not fit the requested shape.
  """
  devices = jax.devices() if devices is None else list(devices)
  count = len(devices)
  if mesh_shape is None:
    if num_partitions < 1 or count % num_partitions:
      raise ValueError(
        f"num_partitions={num_partitions} does not divide the {count} devices; choose a divisor of {count}."
      )
    mesh_shape = (count // num_partitions, num_partitions)
  mesh_shape = tuple(int(x) for x in mesh_shape)
  if len(mesh_shape) != 2 or int(np.prod(mesh_shape)) != count:
    raise ValueError(f"mesh_shape {mesh_shape} must be (data, model) with data * model = {count} devices.")
  # Auto axes: Explicit axes (make_mesh's default) break nn.with_logical_constraint.
  return jax.make_mesh(mesh_shape, (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


@gin.configurable
def logical_rules(rules: Rules | None = None, extra_rules: Rules = ()) -> tuple[tuple[str, str | None], ...]:
  """The logical-axis rules in force: `rules` (default STANDARD_RULES), `extra_rules` first."""
  return tuple(extra_rules) + tuple(STANDARD_RULES if rules is None else rules)


def shardings_for(logical_axes, mesh: Mesh, rules: Rules):
  """NamedShardings for a tree of logical PartitionSpecs (from nn.get_partition_spec)."""
  return nn.logical_to_mesh_sharding(logical_axes, mesh, list(rules))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Examples split over 'data', everything else whole."""
  return NamedSharding(mesh, PartitionSpec(DATA))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from this process's slice of the batch.

  With one process the slice is the batch; with several, each process passes
  the rows it read (seqio shards by process index) and the global batch is
  their concatenation in process order.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Rows this process reads for a global batch."""
  processes = jax.process_count()
  data_size = mesh.shape[DATA]
  if global_batch_size % data_size:
    raise ValueError(
      f"batch size {global_batch_size} is not divisible by the {data_size} data-parallel devices; "
      f"use a multiple of {data_size}."
    )
  return global_batch_size // processes


def with_sharding(tree, shardings):
  """Places host arrays onto their shardings (for restoring or loading)."""
  return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)
