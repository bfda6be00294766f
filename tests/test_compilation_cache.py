"""JAX's persistent compilation cache: where it lives, and that a second run of a config compiles nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prompt_tuning import compilation_cache

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", ["off", "0", "none", "", "False"])
def test_the_cache_can_be_switched_off(value):
  assert compilation_cache.cache_dir({compilation_cache.ENV: value}) is None


def test_the_cache_folder_comes_from_the_environment_else_the_user_cache(tmp_path):
  assert compilation_cache.cache_dir({compilation_cache.ENV: str(tmp_path)}) == tmp_path
  assert compilation_cache.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "prompt_tuning" / "jax"
  assert compilation_cache.cache_dir({}) == Path.home() / ".cache" / "prompt_tuning" / "jax"


def _train(model_dir: Path, cache: Path) -> list[dict]:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **{compilation_cache.ENV: str(cache)})
  flags = [
    "--gin_file=demo/prompt.gin",
    f"--gin.MODEL_DIR='{model_dir}'",
    "--gin.TRAIN_STEPS=2",
    "--gin.BATCH_SIZE=4",
    "--gin.train.log_every=1",
  ]
  done = subprocess.run(
    [sys.executable, "-m", "prompt_tuning.cli", "train", *flags],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=ROOT,
    env=env,
  )
  assert done.returncode == 0, done.stderr[-4000:]
  return [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_second_run_of_the_same_config_reads_every_program_from_the_cache(tmp_path):
  cache = tmp_path / "cache"
  first = _train(tmp_path / "first", cache)
  entries = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
  assert any(name.startswith("jit_train_step") for name in entries), sorted(entries)
  second = _train(tmp_path / "second", cache)
  # Nothing was compiled anew: JAX writes an entry for every program it compiles (min compile time 0).
  assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == entries
  assert [m["train/loss"] for m in second] == [m["train/loss"] for m in first]
