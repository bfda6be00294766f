"""`load_pretrained(..., shardings=...)`: each device's block read straight into a jax.Array, on 8 simulated devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import simulated_devices

from prompt_tuning.checkpoints import CheckpointError, load_pretrained, pretrained_config

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"  # conftest.REFERENCE_DIR

# Runs with 8 simulated CPU devices (XLA_FLAGS must be set before jax is imported, hence a subprocess): one process
# for the module, which loads each checkpoint named by its arguments (PATH SIZE MESH, repeated) and prints one JSON
# report per checkpoint.
SCRIPT = textwrap.dedent(
  """
  import json, sys
  import jax
  import numpy as np
  from prompt_tuning import partitioning
  from prompt_tuning.checkpoints import load_pretrained, param_tree, pretrained_config
  from prompt_tuning.checkpoints.param_tree import flatten
  from prompt_tuning.models import param_logical_axes

  def report_on(path, size, mesh_shape):
    mesh = partitioning.make_mesh(mesh_shape=mesh_shape)
    config = pretrained_config(path, size)  # Metadata only: the shardings come before any value is read.
    shardings = partitioning.shardings_for(param_logical_axes(config), mesh, partitioning.logical_rules())

    reads = []  # Every block index a reader is asked for (counted on the real LazyArray.block).
    block = param_tree.LazyArray.block
    param_tree.LazyArray.block = lambda self, index: reads.append((id(self), str(index))) or block(self, index)
    _, sharded = load_pretrained(path, config=size, shardings=shardings)
    param_tree.LazyArray.block = block
    _, full = load_pretrained(path, config=size)

    report = {"equal": [], "sharding": [], "distinct_reads": len(set(reads)) == len(reads), "split": []}
    for name, value in flatten(full).items():
      got = flatten(sharded)[name]
      report["equal"].append(bool(np.array_equal(np.asarray(got), value)))
      report["sharding"].append(got.sharding == flatten(shardings)[name])
      if got.sharding.spec and any(got.sharding.spec):
        report["split"].append(name)
    report["vocab_shard_rows"] = sharded["token_embedder"]["embedding"].addressable_shards[0].data.shape[0]
    return report

  args = sys.argv[1:]
  for path, size, mesh in zip(args[0::3], args[1::3], args[2::3]):
    print(json.dumps(report_on(path, size, tuple(int(n) for n in mesh.split(",")))))
  """
)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict]:
  """The 8-device process's report on each checkpoint, by name: "t5x" (the reference T5X checkpoint, where the
  reference artifacts are), "hf" (a Hugging Face folder written here) and "orbax" (an orbax T5X checkpoint written
  here), each loaded on a (4, 2) mesh."""
  import jax
  import orbax.checkpoint as ocp

  import prompt_tuning as pt
  from prompt_tuning.checkpoints import save_hf_pretrained

  folder = tmp_path_factory.mktemp("sharded")
  config = pt.get_config("t5_1_0_tiny")
  save_hf_pretrained(folder / "hf", config, jax.device_get(pt.init_params(config, jax.random.key(0))))
  params = jax.device_get(pt.init_params(config, jax.random.key(1)))
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(folder / "checkpoint_4", {"target": params, "state": {"step": 4}})
  jobs = {"hf": (folder / "hf", "t5_1_0_tiny"), "orbax": (folder / "checkpoint_4", "t5_1_0_tiny")}
  if REFERENCE.is_dir():  # where it is not, the test that reads this report is skipped
    jobs["t5x"] = (REFERENCE / "t5x_t5_1_1_tiny" / "checkpoint_3", "t5_1_1_tiny")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  env["XLA_FLAGS"] = simulated_devices.xla_flags(8)
  args = [str(a) for path, size in jobs.values() for a in (path, size, "4,2")]
  done = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)
  assert done.returncode == 0, done.stderr[-4000:]
  lines = done.stdout.strip().splitlines()[-len(jobs) :]
  return dict(zip(jobs, map(json.loads, lines)))


def test_sharded_restore_on_8_devices_equals_the_full_read(reference_dir, reports):
  """The reference T5X checkpoint on a (4, 2) mesh (its 2 heads allow 2-way model parallelism): same values, the
  requested shardings, each block read once."""
  report = reports["t5x"]
  assert all(report["equal"]) and all(report["sharding"])
  assert "token_embedder/embedding" in report["split"]  # Model-parallel over the vocabulary ...
  assert report["vocab_shard_rows"] == 32128 // 2  # ... so each device holds half of the rows.
  assert report["distinct_reads"]  # A block replicated on the 4 data-parallel devices is read once.


def test_sharded_restore_of_a_hugging_face_folder(reports):
  """Formats without block reads (safetensors here) read one array at a time and cut its blocks."""
  report = reports["hf"]
  assert all(report["equal"]) and all(report["sharding"]) and report["distinct_reads"]


def test_sharded_restore_of_an_orbax_checkpoint(reports):
  """Orbax T5X checkpoints restore straight onto the shardings (orbax reads each process's shards)."""
  report = reports["orbax"]
  assert all(report["equal"]) and all(report["sharding"])
  assert "token_embedder/embedding" in report["split"] and report["vocab_shard_rows"] == 128 // 2


def test_pretrained_config_reads_no_values_and_matches_the_load(reference_dir, tmp_path):
  import shutil

  step_dir = tmp_path / "checkpoint_3"
  shutil.copytree(reference_dir / "t5x_t5_1_1_tiny" / "checkpoint_3", step_dir)
  inferred, _ = load_pretrained(step_dir)
  for folder in step_dir.glob("target.*"):  # Every array's values gone: only the metadata is left to read.
    os.chmod(folder, 0o755)
    for chunk in folder.iterdir():
      if chunk.name != ".zarray":
        chunk.unlink()
  assert pretrained_config(step_dir) == inferred
  with pytest.raises(CheckpointError, match="missing"):
    load_pretrained(step_dir)


def test_shardings_that_do_not_match_the_model_are_refused(reference_dir):
  import jax

  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with pytest.raises(
    CheckpointError,
    match=r"missing: .*decoder/decoder_norm/scale.*unexpected: \['encoder'\].*partitioning.shardings_for",
  ):
    load_pretrained(
      reference_dir / "t5x_t5_1_1_tiny" / "checkpoint_3", config="t5_1_1_tiny", shardings={"encoder": sharding}
    )
