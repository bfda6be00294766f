"""Every gin file parses; every ready-to-run config builds its model and partition plan abstractly."""

import json
import subprocess
import sys
from pathlib import Path

import gin
import pytest

from prompt_tuning import gin_config

ROOT = Path(__file__).resolve().parents[1]
GIN_FILES = sorted(p.relative_to(ROOT / "gin") for p in (ROOT / "gin").rglob("*.gin"))
CONFIG_FILES = sorted(p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*.gin"))


@pytest.fixture(autouse=True)
def fresh_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("name", [str(p) for p in GIN_FILES + CONFIG_FILES])
def test_gin_file_parses_and_opens_with_its_contract(name):
  path = ROOT / "gin" / name if (ROOT / "gin" / name).is_file() else ROOT / "configs" / name
  lines = path.read_text().splitlines()
  header = lines[: next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))]  # the contract
  assert header[0].startswith("# Provides:"), f"{name} must open with its contract"
  assert any(line.startswith("# Requires:") for line in header), name
  gin_config.configure_gin([name], [], [])


def test_unknown_gin_file_is_one_clear_error():
  with pytest.raises(FileNotFoundError, match="gin file 'prompt_xxxl.gin' not found"):
    gin_config.configure_gin(["prompt_xxxl.gin"], [], [])


def test_gin_flags_become_bindings():
  bindings, rest = gin_config.split_gin_flags(
    ["--gin.MODEL_DIR='/tmp/x'", "--gin_file=a.gin", "--gin.train.num_train_steps", "5"]
  )
  assert bindings == ["MODEL_DIR = '/tmp/x'", "train.num_train_steps = 5"] and rest == ["--gin_file=a.gin"]


def test_configs_build_abstractly_on_8_devices(reference_dir):
  out = subprocess.run(
    [sys.executable, str(ROOT / "tests" / "scripts" / "plan_configs.py"), str(reference_dir / "t5_spm_32000.model")],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  plans = {p["config"]: p for p in map(json.loads, out.stdout.strip().splitlines())}
  assert set(plans) == {p.name for p in (ROOT / "configs").glob("*.gin")}
  xxl = plans["prompt_xxl.gin"]
  assert xxl["model_size"] == "t5_1_1_lm100k_xxl"
  assert xxl["total"] == 11_135_332_352 + 100 * 4096 and xxl["trainable"] == 100 * 4096
  assert xxl["prompt"] == [100, 4096] and xxl["prompt_spec"] == [None, None]  # replicated
  assert xxl["mesh"] == {"data": 1, "model": 8} and xxl["mlp_spec"] == ["model", None]
  assert plans["prompt_small.gin"]["mesh"] == {"data": 8, "model": 1}
  for size in ("small", "base", "large", "xl", "xxl"):
    prefix = plans[f"prefix_{size}.gin"]
    assert prefix["prefix"] and prefix["prompt"] is None and 0 < prefix["trainable"] < prefix["total"]
