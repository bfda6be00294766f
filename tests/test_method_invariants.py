"""The training invariants, for every tuning method (prompt, prefix, per-layer prompt, IA3, model tuning), on a
plain clone: a tiny T5 written by our own writer and a task on the shipped demo vocabulary (tests/method_runs.py).

- a real step changes the trainable tree only, and the backbone the model computes with is the one loaded;
- (test_method_resume.py: a run killed with SIGKILL and resumed ends where an uninterrupted run ends;)
- 8 simulated devices on a 4 x 2 (data x model) mesh give the losses and vectors of 1, and so do length-bucketed
  batches (test_length_buckets.py's BUCKET_BY_LENGTH; in the same 8-device process);
- the compiled prompt-tuning step computes no gradient of a frozen weight (its FLOPs against model tuning's).
"""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("seqio")
import method_runs  # noqa: E402

import prompt_tuning as pt  # noqa: E402
from prompt_tuning import optim, partitioning, train  # noqa: E402

SCRIPT = method_runs.TRAIN_SCRIPT
METHODS = method_runs.METHODS
# The 8-device comparison covers each way a trained tree is laid out on the mesh (partitioning.py's rules): vectors
# replicated along the embedding (prompt; per-layer prompts are the same leaves with a layer axis, IA3's key/value
# scales are replicated too), vectors split over the model axis (prefix's keys and values by heads and its MLP; IA3's
# MLP scales by mlp), and the backbone itself (model tuning). Every method's one-device training is checked by the
# tests above and below (`one_device` trains them all).
EIGHT_DEVICE_METHODS = ("prompt", "prefix", "model")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
  return method_runs.write_backbone(tmp_path_factory.mktemp("backbone"))


def _host_flat(tree) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in optim._flat(jax.device_get(tree)).items()}


@pytest.mark.parametrize("method", METHODS)
def test_a_step_changes_only_the_trainable_tree_and_the_backbone_is_the_loaded_one(backbone, tmp_path, method):
  run = train.build(method_runs.run_config(tmp_path / "run", backbone, method))
  run.checkpoints.close()
  roots = method_runs.trainable_roots(method)
  assert set(run.state.trainable) == roots
  before = _host_flat(optim.merge(run.state.trainable, run.frozen))
  batch = partitioning.shard_batch(method_runs.synthetic_batch(), run.mesh)
  state = run.state
  for _ in range(2):
    state, metrics = run.train_step(state, run.frozen, batch, jax.random.key(1))
  assert np.isfinite(float(metrics["loss"]))
  after = _host_flat(optim.merge(state.trainable, run.frozen))
  assert set(after) == set(before)
  changed = {k for k in after if not np.array_equal(before[k], after[k])}
  assert {k.split("/")[0] for k in changed} == roots, sorted(changed)[:5]
  trainable = set(optim._flat(state.trainable))
  # Every trained vector moved (model tuning: nearly every weight; a few may get no gradient in two steps).
  assert len(changed) >= (0.9 if method == "model" else 1.0) * len(trainable), sorted(trainable - changed)
  _, loaded = pt.load_pretrained(backbone)
  loaded = {f"t5/{k}": np.asarray(v) for k, v in optim._flat(loaded).items()}
  if method == "model":
    assert any(not np.array_equal(after[k], v) for k, v in loaded.items())
  else:
    for path, value in loaded.items():
      np.testing.assert_array_equal(after[path], value, err_msg=path)


@pytest.fixture(scope="module")
def one_device(backbone, tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
  """Every method trained 3 steps on 1 device in this process, as tests/scripts/method_train.py trains them (a
  checkpoint and its exports at the end): (the runs' root folder, their final trainable leaves "<method>:<path>" and
  per-step losses "<method>:loss")."""
  assert jax.device_count() == 1, f"the one-device side needs 1 device, this process has {jax.device_count()}"
  root = tmp_path_factory.mktemp("one_device")
  return root, method_runs.train_methods(root, backbone, METHODS, 3)


def test_8_devices_data_and_model_parallel_give_the_losses_and_vectors_of_1(backbone, one_device, tmp_path):
  # The 8 simulated devices need their own process (XLA_FLAGS is read when JAX starts); 1 device is this one's.
  # The same process trains prompt tuning 4 steps on length-bucketed batches (BUCKET_BY_LENGTH on a task of varied
  # lengths: batches of two shapes), compared with the same run here.
  assert jax.device_count() == 1, f"the one-device side needs 1 device, this process has {jax.device_count()}"
  bucketed = method_runs.train_methods(tmp_path / "1_bucketed", backbone, ("prompt",), 4, bucket=True)
  out = tmp_path / "8.npz"
  cmd = [sys.executable, str(SCRIPT), str(tmp_path / "8"), str(backbone), ",".join(EIGHT_DEVICE_METHODS), "3"]
  cmd += ["--mesh", "4,2", "--bucketed_methods", "prompt", "--bucketed_steps", "4"]
  done = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True, env=method_runs.subprocess_env(8))
  assert done.returncode == 0, done.stderr[-4000:]
  eight = dict(np.load(out))
  one = {k: v for k, v in one_device[1].items() if k.split(":")[0] in EIGHT_DEVICE_METHODS}
  one |= {f"bucketed/{k}": v for k, v in bucketed.items()}
  assert set(one) == set(eight) and {k.split(":")[0] for k in one} == {*EIGHT_DEVICE_METHODS, "bucketed/prompt"}
  assert "bucketed/prompt:loss" in one
  for key, value in one.items():
    # Vectors: three steps of Adafactor at the paper's learning rate turn the model-parallel reductions' float32
    # rounding into up to ~7e-4 (measured on the prompt); the losses agree to 1e-4.
    tolerance = dict(rtol=1e-4, atol=1e-5) if key.endswith(":loss") else dict(rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(eight[key], value, err_msg=key, **tolerance)


def _compiled(backbone, tmp_path, method):
  run = train.build(method_runs.run_config(tmp_path / method, backbone, method))
  run.checkpoints.close()
  batch = partitioning.shard_batch(method_runs.synthetic_batch(), run.mesh)
  return run.train_step.lower(run.state, run.frozen, batch, jax.random.key(0)).compile()


def test_the_prompt_tuning_step_computes_no_frozen_weight_gradients(backbone, tmp_path):
  prompt, model = (_compiled(backbone, tmp_path, m) for m in ("prompt", "model"))
  flops = {name: c.cost_analysis()["flops"] for name, c in (("prompt", prompt), ("model", model))}
  params = pt.param_shapes(pt.get_config("t5_1_1_tiny", vocab_size=method_runs.VOCAB_SIZE))
  logits_kernel = params["decoder"]["logits_dense"]["kernel"].shape  # the largest frozen weight: [embed, vocab]
  # Its weight gradient alone is 2 x tokens x embed x vocab FLOPs; model tuning computes it, prompt tuning must not.
  tokens = 8 * 4
  weight_gradient = 2 * tokens * logits_kernel[0] * logits_kernel[1]
  assert flops["model"] - flops["prompt"] >= weight_gradient, flops
  temporaries = {name: c.memory_analysis().temp_size_in_bytes for name, c in (("prompt", prompt), ("model", model))}
  assert temporaries["prompt"] < temporaries["model"], temporaries


@pytest.mark.parametrize("method", METHODS)
def test_the_inference_build_serves_what_training_left(backbone, one_device, method):
  from prompt_tuning.run import build_inference

  cfg = method_runs.run_config(one_device[0] / method, backbone, method)  # 3 steps, a checkpoint at the end
  export = one_device[0] / method / "numpy_checkpoints" / "checkpoint_3"
  training = train.build(cfg)
  training.checkpoints.close()
  served = build_inference(cfg)
  assert served.step == 3
  if method == "model":  # the trained backbone lives in the training checkpoint only
    assert served.source == "the training checkpoint"
  else:
    assert served.source.startswith("the exports of step 3") and not hasattr(served, "state")
    assert set(served.trainable) == {method}
    assert (export / ("prompt.npy" if method == "prompt" else f"{method}.safetensors")).is_file()
  if method == "prefix":  # folded (Li & Liang, section 4.3): keys and values, no MLP
    assert set(served.trainable["prefix"]) == {"encoder", "decoder", "cross"}
  batch = partitioning.shard_batch(method_runs.synthetic_batch(seed=3), served.mesh)
  expected = jax.device_get(training.eval_step(training.trainable, training.frozen, batch))
  got = jax.device_get(served.eval_step(served.trainable, served.frozen, batch))
  np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)
