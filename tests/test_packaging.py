"""The wheel carries everything a non-editable install needs: every asset, gin file and config the demo and
`prompt-tuning tasks list` use, found by the installed package (not the source tree)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
  """Builds the wheel from a copy of the tracked files (the build writes build/ and *.egg-info beside setup.py)."""
  source = tmp_path_factory.mktemp("source")
  tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
  for name in filter(None, tracked.decode().split("\0")):
    if (ROOT / name).is_file():
      (source / name).parent.mkdir(parents=True, exist_ok=True)
      (source / name).write_bytes((ROOT / name).read_bytes())
  out = tmp_path_factory.mktemp("wheel")
  command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."]
  subprocess.run(command, cwd=source, check=True, capture_output=True)
  return next(out.glob("prompt_tuning-*.whl"))


def test_wheel_carries_every_asset_gin_file_and_config(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  expected = {str(p.relative_to(ROOT)) for p in (ROOT / "prompt_tuning" / "assets").rglob("*") if p.is_file()}
  for folder in ("gin", "configs"):
    expected |= {
      f"prompt_tuning/gin_files/{folder}/{p.relative_to(ROOT / folder)}" for p in (ROOT / folder).rglob("*.gin")
    }
  assert "prompt_tuning/assets/wordnet_categories/train.jsonl" in expected
  assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"


def test_installed_wheel_finds_demo_configs_assets_and_tasks(wheel, tmp_path):
  site = tmp_path / "site"
  zipfile.ZipFile(wheel).extractall(site)
  script = """
import sys
from pathlib import Path
import prompt_tuning
from prompt_tuning import cli, demo_data, gin_config
site = Path(sys.argv[1]).resolve()
assert Path(prompt_tuning.__file__).resolve().is_relative_to(site), prompt_tuning.__file__
paths = gin_config.gin_search_paths()
assert paths and all(p.resolve().is_relative_to(site) for p in paths), paths
for config in ("demo/prompt.gin", "demo/prefix.gin", "demo/model.gin", "prompt_xxl.gin"):
  assert any((p / config).is_file() for p in paths), config
assert Path(demo_data.demo_model_path(), "model.safetensors").is_file()
assert gin_config.configure_gin(["demo/prompt.gin"], ["MODEL_DIR = '/tmp/unused'"], [], check_unread=True)
print(demo_data.register_wordnet_category_task(), demo_data.register_wordnet_task())
sys.exit(cli.main(["tasks", "list", "wordnet"]))
"""
  result = subprocess.run(
    [sys.executable, "-c", script, str(site)],
    cwd=tmp_path,
    env={"PYTHONPATH": str(site), "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "wordnet_animal_or_plant" in result.stdout and "wordnet_hypernymy" in result.stdout
