"""A run killed with SIGKILL mid-training and resumed ends where an uninterrupted run ends, on a plain clone
(tests/method_runs.py), for prompt tuning and for prefix tuning.

Resuming is the same code for every method (the trainable tree, its optimizer state, the step and the data position
are one orbax checkpoint, written atomically); what differs per method is the tree. These two cover the two kinds
of tree: the trained vectors themselves (prompt; per-layer prompts and IA3 are the same kind), and a
reparameterization whose training state is not what it exports (prefix: the MLP is checkpointed, the folded keys
and values exported). Every method's checkpoint is restored and checked against its exports by
test_method_invariants.py::test_the_inference_build_serves_what_training_left; a model-tuning run killed with its
sweep and resumed by test_sweeps_runs.py goes on from its checkpoint. Apart from test_method_invariants.py
so that the two long files run on different test workers.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("seqio")
import method_runs  # noqa: E402

from prompt_tuning import train  # noqa: E402

SCRIPT = method_runs.TRAIN_SCRIPT


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
  return method_runs.write_backbone(tmp_path_factory.mktemp("backbone"))


def _kill_after_checkpoint(model_dir: Path, proc: subprocess.Popen, step: int) -> None:
  checkpoints = model_dir / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if checkpoints.is_dir() and any(p.name.isdigit() and int(p.name) >= step for p in checkpoints.iterdir()):
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed:\n" + proc.stderr.read().decode()[-2000:]
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()


# Prompt tuning is killed on the length-bucketed data path (batches of two shapes), prefix tuning on the plain one;
# prompt tuning killed on the plain path is test_storage_gcs.py's two-process run (kill -9, resumed, compared with an
# uninterrupted run), so a third case here would prove nothing new.
@pytest.mark.parametrize("method, bucket", [("prompt", True), ("prefix", False)])
def test_resume_after_kill_9_equals_an_uninterrupted_run(backbone, tmp_path, method, bucket):
  # The killed run is set for far more steps than it gets: it is killed once a checkpoint past the first exists
  # (before 16), and both the resumed and the uninterrupted run stop at 16 (a constant learning rate: the number
  # of steps planned changes nothing before it). With `bucket`: BUCKET_BY_LENGTH on a task of varied lengths, whose
  # batches come in two shapes (test_length_buckets.py).
  steps, settings = 16, dict(dropout_rate=0.1)
  if bucket:
    settings |= dict(bucket_by_length=True, mixture_or_task_name=method_runs.register_task(varied_lengths=True))
  cmd = [sys.executable, str(SCRIPT), str(tmp_path / "killed"), str(backbone), method, "1000"]
  proc = subprocess.Popen(
    cmd + ["--checkpoint_every", "4", "--dropout", "0.1"] + (["--bucket"] if bucket else []),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    env=method_runs.subprocess_env(),
  )
  _kill_after_checkpoint(tmp_path / "killed" / method, proc, 8)
  killed = method_runs.run_config(tmp_path / "killed" / method, backbone, method, **settings)
  done = sorted(int(p.name) for p in (tmp_path / "killed" / method / "checkpoints").iterdir() if p.name.isdigit())
  assert done and 8 <= done[-1] < steps, done
  train.train(killed, num_train_steps=steps, checkpoint_every=steps)
  uninterrupted = method_runs.run_config(tmp_path / "uninterrupted", backbone, method, **settings)
  train.train(uninterrupted, num_train_steps=steps, checkpoint_every=steps)
  resumed, expected = method_runs.final_trainable(killed), method_runs.final_trainable(uninterrupted)
  assert int(resumed["step"]) == steps and set(resumed) == set(expected)
  for path, value in expected.items():
    np.testing.assert_allclose(resumed[path], value, rtol=1e-5, atol=1e-6, err_msg=path)
