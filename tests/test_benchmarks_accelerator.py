"""benchmarks/accelerator.py: its dry run (every part, tiny configs, on the CPU) and the device peak table."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from prompt_tuning import plan

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def accelerator():
  sys.path.insert(0, str(BENCHMARKS))  # the script imports benchmarks/common.py as its neighbour
  spec = importlib.util.spec_from_file_location("accelerator_benchmark", BENCHMARKS / "accelerator.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  yield module
  del sys.modules[spec.name]
  sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize(
  "kind, name",
  [
    ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100-80"),
    ("NVIDIA A100-SXM4-40GB", "a100-40"),
    ("TPU v4", "v4"),
    ("TPU v5 lite", "v5e"),
    ("TPU v5", "v5p"),
    ("cpu", None),
  ],
)
def test_device_kinds_map_to_the_planners_devices(kind, name):
  assert plan.device_name(kind) == name


def test_peak_table_has_the_datasheet_figures():
  peaks = {name: tflops for name, (_, tflops) in plan.DEVICES.items()}
  assert (peaks["h100"], peaks["h200"], peaks["a100-80"], peaks["v4"], peaks["v5e"], peaks["v5p"]) == (
    989,
    989,
    312,
    275,
    197,
    459,
  )


def test_model_flops_convention():
  """4·N·tokens for a frozen backbone (forward 2 + backward through activations 2), 6·N·tokens for model tuning."""
  from prompt_tuning.models.configs import get_config

  config = get_config("t5_1_1_base")
  frozen = plan.analytic_flops(config, 8, 612, 16, False, "none")
  model = plan.analytic_flops(config, 8, 612, 16, True, "none")
  assert model / frozen == pytest.approx(1.5)


def test_refuses_a_cpu_without_dry_run(accelerator):
  with pytest.raises(SystemExit, match="--dry_run"):
    accelerator.main(["--out_dir", "/nonexistent"])


def test_dry_run_writes_every_table(accelerator, tmp_path):
  result = accelerator.main(["--dry_run", "--repeats", "1", "--out_dir", str(tmp_path)])
  assert json.loads((tmp_path / "accelerator.json").read_text())["dry_run"] is True
  table = (tmp_path / "accelerator.md").read_text()
  assert "DRY RUN" in table and "MFU" in table and "ours / HF" in table

  peak = result["device"]["peak_flops_per_device"]
  methods = {(r["size"], r["method"]) for r in result["mfu"]}
  assert methods == {(s, m) for s in accelerator.DRY_RUN.train_sizes for m in ("prompt tuning", "model tuning")}
  for row in result["mfu"]:
    assert row["mfu"][0] == pytest.approx(row["flops"] / row["seconds"][0] / peak)
    assert 0 < row["flops"] <= row["flops_crude"] and row["flops_xla"] > 0

  xxl = result["xxl"]
  assert not xxl["as_configured"]["fits"]  # the pretend device is too small, so the planner's suggestions ran
  usable = xxl["as_configured"]["device_usable_bytes"]
  assert accelerator.DRY_RUN_DEVICE not in plan.DEVICES  # the pretend device left the planner's table
  assert xxl["runs"], "the planner found no setting that fits"
  for run in xxl["runs"]:
    assert "error" not in run, run
    assert run["planned_bytes"] <= usable
    assert run["measured_bytes"] > 0 and math.isfinite(run["mfu"]) and run["mfu"] > 0

  (decode,) = result["decode"]
  assert decode["ours_tokens_per_s"][0] > 0 and decode["hf_tokens_per_s"][0] > 0 and decode["ratio"][0] > 0
