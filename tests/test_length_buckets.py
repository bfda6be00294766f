"""Length-bucketed training batches (BUCKET_BY_LENGTH, `prompt_tuning.inputs.length_bucketed`): every batch pads to
the power-of-two bucket of its longest example and holds what it held at the full length; the order is
deterministic and a resumed stream skips exactly; the step compiles once per bucket and gives the loss and
gradients of the full length; refused with PACK and with several processes. (A run killed with SIGKILL and resumed
with buckets: test_method_resume.py; 8 simulated devices give what 1 gives with buckets: test_method_invariants.py's
8-device comparison, whose process trains a bucketed run too.)
"""

import functools
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("seqio")
import method_runs  # noqa: E402
import tensorflow as tf  # noqa: E402

from prompt_tuning import inputs, optim, partitioning, train, trainer, validation  # noqa: E402
from prompt_tuning.checkpoints import training as training_checkpoints  # noqa: E402

LENGTHS = {"inputs": 16, "targets": 4}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
  return method_runs.write_backbone(tmp_path_factory.mktemp("backbone"))


def _converted_rows(count: int, full: int = 32, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Unpacked seqio-converted rows (padded to `full` inputs, 4 targets) of random real lengths 1..full; each row's
  targets hold its index, to find it again."""
  rng = np.random.default_rng(seed)
  rows = []
  for index in range(count):
    used = int(rng.integers(1, full + 1))
    encoder = np.zeros(full, np.int32)
    encoder[:used] = rng.integers(2, 100, used)
    targets = np.array([index + 2, 7, 1, 0], np.int32)
    rows.append(
      {
        "encoder_input_tokens": encoder,
        "decoder_input_tokens": np.array([0, index + 2, 7, 1], np.int32),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.int32),
      }
    )
  return rows


def test_a_batch_pads_to_the_bucket_of_its_longest_example_and_keeps_every_row_whole():
  rows = _converted_rows(200)
  ds = tf.data.Dataset.from_tensor_slices({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  batches = list(inputs.length_bucketed(ds, 4).as_numpy_iterator())
  assert inputs.bucket_lengths(32) == [8, 16, 32]
  shapes = {b["encoder_input_tokens"].shape for b in batches}
  assert shapes == {(4, 8), (4, 16), (4, 32)}
  seen = []
  for batch in batches:
    length = batch["encoder_input_tokens"].shape[1]
    assert length == inputs.bucket_length(inputs.used_length(batch["encoder_input_tokens"]), 32)
    for name in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"):
      assert batch[name].shape == (4, 4), name  # the other side keeps its full length
    for row in range(4):
      original = rows[int(batch["decoder_target_tokens"][row, 0]) - 2]
      seen.append(int(batch["decoder_target_tokens"][row, 0]) - 2)
      padded = np.pad(batch["encoder_input_tokens"][row], (0, 32 - length))
      np.testing.assert_array_equal(padded, original["encoder_input_tokens"])
      np.testing.assert_array_equal(batch["decoder_target_tokens"][row], original["decoder_target_tokens"])
  # Every example once, but those left in a bucket that never filled (fewer than 4 per bucket, 3 buckets).
  assert len(seen) == len(set(seen)) and len(seen) > 200 - 3 * 4


def _stream(start_batch: int = 0, count: int = 10):
  task = method_runs.register_task(varied_lengths=True)
  batches = inputs.train_batches(task, LENGTHS, 8, seed=3, start_batch=start_batch, bucket_by_length=True)
  return [next(batches) for _ in range(count)]


def test_the_order_is_deterministic_and_a_resumed_stream_skips_exactly():
  first, again, resumed = _stream(), _stream(), _stream(start_batch=4, count=6)
  assert len({b["encoder_input_tokens"].shape for b in first}) == 2  # the task's lengths fill buckets 8 and 16
  for a, b in zip(first, again):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  for a, b in zip(first[4:], resumed):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])


@pytest.fixture(scope="module")
def prompt_run(backbone, tmp_path_factory):
  task = method_runs.register_task(varied_lengths=True)
  cfg = method_runs.run_config(
    tmp_path_factory.mktemp("run"), backbone, "prompt", mixture_or_task_name=task, bucket_by_length=True
  )
  run = train.build(cfg)
  run.checkpoints.close()
  return run


def test_a_bucketed_batch_gives_the_loss_and_gradients_of_the_full_length(prompt_run):
  run = prompt_run
  batch = next(b for b in _stream() if b["encoder_input_tokens"].shape[1] == 8)
  full = {k: np.pad(v, ((0, 0), (0, 16 - v.shape[1]))) if k.startswith("encoder") else v for k, v in batch.items()}
  loss = jax.jit(
    jax.value_and_grad(
      functools.partial(trainer.summed_loss, forward=run.tuned.forward, z_loss=1e-4, enable_dropout=False),
      has_aux=True,
    )
  )
  rng = jax.random.key(0)
  (short_total, _), short_grads = loss(run.state.trainable, run.frozen, batch, rng)
  (full_total, _), full_grads = loss(run.state.trainable, run.frozen, full, rng)
  np.testing.assert_allclose(short_total, full_total, rtol=1e-5)
  for path, grad in optim._flat(full_grads).items():
    np.testing.assert_allclose(optim._flat(short_grads)[path], grad, rtol=1e-4, atol=1e-7, err_msg=path)


def test_the_train_step_compiles_once_per_bucket(prompt_run):
  run = prompt_run
  state, rng = run.state, jax.random.key(0)
  before = run.train_step._cache_size()
  stream = _stream(count=12)
  for batch in stream:
    state, _ = run.train_step(state, run.frozen, partitioning.shard_batch(batch, run.mesh), rng)
  assert run.train_step._cache_size() - before == len({b["encoder_input_tokens"].shape for b in stream}) == 2


def test_two_buckets_per_doubling_pad_less_and_keep_every_row_whole():
  rows = _converted_rows(400, full=64, seed=1)
  ds = tf.data.Dataset.from_tensor_slices({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  grid = inputs.bucket_lengths(64, per_doubling=2)
  assert grid == [8, 16, 24, 32, 48, 64]
  finer = list(inputs.length_bucketed(ds, 4, per_doubling=2).as_numpy_iterator())
  coarser = list(inputs.length_bucketed(ds, 4).as_numpy_iterator())
  assert {b["encoder_input_tokens"].shape[1] for b in finer} == set(grid)
  for batch in finer:
    length = batch["encoder_input_tokens"].shape[1]
    assert length == min(n for n in grid if n >= inputs.used_length(batch["encoder_input_tokens"]))
    for row in range(4):
      original = rows[int(batch["decoder_target_tokens"][row, 0]) - 2]
      padded = np.pad(batch["encoder_input_tokens"][row], (0, 64 - length))
      np.testing.assert_array_equal(padded, original["encoder_input_tokens"])

  def used(batches):  # the share of the computed encoder positions that hold a token
    return sum((b["encoder_input_tokens"] != 0).sum() for b in batches) / sum(
      b["encoder_input_tokens"].size for b in batches
    )

  assert used(finer) > used(coarser) + 0.05


def test_refused_with_pack_with_several_processes_and_on_resume_with_another_setting(backbone, tmp_path):
  with pytest.raises(validation.SettingError, match="BUCKET_BY_LENGTH.*PACK"):
    method_runs.run_config(tmp_path, backbone, "prompt", bucket_by_length=True, pack=True)
  with pytest.raises(validation.SettingError, match="3 processes"):
    validation.check_length_buckets(True, 3)
  validation.check_length_buckets(True, 1)
  saved = training_checkpoints.data_settings(method_runs.run_config(tmp_path, backbone, "prompt"))
  resumed = training_checkpoints.data_settings(
    method_runs.run_config(tmp_path, backbone, "prompt", bucket_by_length=True)
  )
  with pytest.raises(training_checkpoints.CheckpointError, match="BUCKET_BY_LENGTH"):
    training_checkpoints.check_data_settings(saved, resumed, tmp_path)
  finer = training_checkpoints.data_settings(
    method_runs.run_config(tmp_path, backbone, "prompt", bucket_by_length=True, buckets_per_doubling=2)
  )
  with pytest.raises(training_checkpoints.CheckpointError, match="BUCKETS_PER_DOUBLING = 1"):
    training_checkpoints.check_data_settings(resumed, finer, tmp_path)


def test_buckets_per_doubling_is_refused_without_buckets_and_past_4(backbone, tmp_path):
  with pytest.raises(validation.SettingError, match="read only with BUCKET_BY_LENGTH = True"):
    method_runs.run_config(tmp_path, backbone, "prompt", buckets_per_doubling=2)
  with pytest.raises(validation.SettingError, match="use 1 \\(powers of two\\), 2, 3 or 4"):
    method_runs.run_config(tmp_path, backbone, "prompt", bucket_by_length=True, buckets_per_doubling=8)
  with pytest.raises(validation.SettingError, match="BUCKETS_PER_DOUBLING"):
    method_runs.run_config(tmp_path, backbone, "prompt", bucket_by_length=True, buckets_per_doubling=0)
