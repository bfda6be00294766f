"""Peak host memory of loading a backbone whole and then placing it, vs. reading only each device's blocks.

    python benchmarks/sharded_restore_memory.py [--size t5_1_1_base] [--repeats 3] [--devices 8]

Writes a T5X (legacy: msgpack + tensorstore zarr) checkpoint of `--size` with
random float32 weights into a temporary folder (deleted at the end), then, in
fresh processes with `--devices` simulated CPU devices and a (data, model)
mesh (`--mesh`, default 2,4: t5_1_1_base's 12 heads allow 4-way model
parallelism, not 8; T5X's standard rules), measures the peak resident set
size (`ru_maxrss`) of:

- `baseline`: imports, mesh and shardings, no load;
- `full`: `load_pretrained(path)` (every array into host memory), then
  `jax.device_put` onto the shardings (what `train.build` does today);
- `sharded`: `load_pretrained(path, shardings=...)` (tensorstore reads each
  device's block only, straight into the devices' buffers).

Simulated CPU devices keep their buffers in the same process, so `sharded`
still holds what the devices hold (here the model twice: 4-way split, 2
data-parallel replicas); on real accelerators that part leaves host memory,
and with several hosts each reads only its devices' blocks.
Prints one JSON line per measurement and a summary (median, min-max, MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHUNK_EDGE = 256  # Zarr chunks of at most 256 along every axis (T5X chunks by the partitions it was saved with).


def write_checkpoint(size: str, step_dir: Path) -> int:
  """A legacy T5X checkpoint of random float32 weights; returns its parameter count."""
  import numpy as np
  import tensorstore as ts
  from flax import serialization

  from prompt_tuning.checkpoints.param_tree import flatten, unflatten
  from prompt_tuning.models import param_shapes
  from prompt_tuning.models.configs import get_config

  step_dir.mkdir(parents=True)
  rng = np.random.default_rng(0)
  target, count = {}, 0
  for path, shape in flatten(param_shapes(get_config(size))).items():
    value = rng.standard_normal(shape.shape, dtype=np.float32)  # One array at a time in memory.
    count += value.size
    name = "target." + path.replace("/", ".")
    chunks = [min(n, CHUNK_EDGE) for n in value.shape]
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(step_dir / name)}}
    store = ts.open(
      spec, create=True, dtype=ts.float32, shape=value.shape, chunk_layout=ts.ChunkLayout(read_chunk_shape=chunks)
    ).result()
    store.write(value).result()
    target[path] = {
      "driver": "zarr",
      "kvstore": {"driver": "file", "path": name},
      "metadata": {"shape": list(shape.shape)},
    }
  tree = {"optimizer": {"target": unflatten(target), "state": {"step": np.int32(1)}}}
  (step_dir / "checkpoint").write_bytes(serialization.msgpack_serialize(tree))
  return count


def measure(mode: str, size: str, step_dir: str, mesh_shape: tuple[int, int]) -> dict:
  """Runs in the child process: one load in `mode`, then reports peak RSS."""
  import jax

  from prompt_tuning import partitioning
  from prompt_tuning.checkpoints import load_pretrained
  from prompt_tuning.models import param_logical_axes
  from prompt_tuning.models.configs import get_config

  config = get_config(size)
  mesh = partitioning.make_mesh(mesh_shape=mesh_shape)
  shardings = partitioning.shardings_for(param_logical_axes(config), mesh, partitioning.logical_rules())
  if mode == "full":
    _, host = load_pretrained(step_dir, config=size)
    params = partitioning.with_sharding(host, shardings)
    del host
  elif mode == "sharded":
    _, params = load_pretrained(step_dir, config=size, shardings=shardings)
  else:
    params = {}
  jax.block_until_ready(params)
  leaves = jax.tree.leaves(params)
  local_bytes = sum(shard.data.nbytes for leaf in leaves for shard in leaf.addressable_shards)
  peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux.
  return {"mode": mode, "peak_rss_mib": peak_kib / 1024, "device_bytes_mib": local_bytes / 2**20}


def _child(mode: str, size: str, step_dir: Path, devices: int, mesh: str) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  cmd = [sys.executable, __file__, "--measure", mode, "--size", size, "--checkpoint", str(step_dir), "--mesh", mesh]
  done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
  if done.returncode:
    raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="t5_1_1_base")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--mesh", default="2,4", help="data,model")
  parser.add_argument("--measure", choices=("baseline", "full", "sharded"), help=argparse.SUPPRESS)
  parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.measure:
    mesh_shape = tuple(int(n) for n in args.mesh.split(","))
    print(json.dumps(measure(args.measure, args.size, args.checkpoint, mesh_shape)))
    return
  folder = Path(tempfile.mkdtemp(prefix="sharded_restore_", dir=ROOT / "benchmarks"))
  try:
    count = write_checkpoint(args.size, folder / "checkpoint_1")
    print(json.dumps({"size": args.size, "parameters": count, "float32_mib": count * 4 / 2**20}), flush=True)
    results: dict[str, list[float]] = {}
    for _ in range(args.repeats):
      for mode in ("baseline", "full", "sharded"):
        result = _child(mode, args.size, folder / "checkpoint_1", args.devices, args.mesh)
        print(json.dumps(result), flush=True)
        results.setdefault(mode, []).append(result["peak_rss_mib"])
    for mode, values in results.items():
      print(
        f"{mode:9s} peak RSS median {statistics.median(values):8.0f} MiB (min {min(values):.0f}, max {max(values):.0f})"
      )
  finally:
    shutil.rmtree(folder)


if __name__ == "__main__":
  main()
