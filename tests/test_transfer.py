"""`prompt-tuning transfer` (SPoT, Vu et al. 2022): a run started from a library prompt, a file or a MODEL_DIR; the
ranking of a library by task-embedding similarity; sources of another width or backbone refused by name."""

import json

import numpy as np
import pytest

from prompt_tuning import transfer
from prompt_tuning.checkpoints.prompt_files import BACKBONE_KEYS, load_prompt_file, save_prompt_file
from prompt_tuning.demo_data import DEMO_LIBRARY_DIR
from prompt_tuning.serve.store import save_entry

# The shared run's settings for `transfer`, as the command line gives them; a learning rate of 0 (no weight decay)
# keeps the prompt where it started, so the first step's prompt is the source.
FROZEN_STEP = ("--gin.adafactor.learning_rate=0.0", "--gin.adafactor.weight_decay_rate=None", "--gin.TRAIN_STEPS=1")


def _step_prompt(model_dir, step=1):
  return load_prompt_file(model_dir / "numpy_checkpoints" / f"checkpoint_{step}")


def test_similarities_rank_hand_made_prompts():
  """Section 4.1's two metrics, and the per-token max, on prompts whose similarities are known."""
  target = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])  # average (0.5, 0.5, 0, 0)
  same = transfer.Source("same", None, "prompt", 3 * target[::-1], None)  # the target's tokens, scaled, permuted
  half = transfer.Source("half", None, "prompt", np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0]]), None)
  away = transfer.Source("away", None, "prompt", np.array([[0, 0, 1.0, 0], [0, 0, 0, 1.0]]), None)
  rows = transfer.rank(target, [away, half, same])
  assert [r["name"] for r in rows] == ["same", "half", "away"]
  by_name = {r["name"]: r for r in rows}
  assert by_name["same"]["average_tokens"] == pytest.approx(1.0)
  assert by_name["half"]["average_tokens"] == pytest.approx(0.5)  # cos((1,0,0,0)+(0,0,1,0), (1,1,0,0)) = 1/2
  assert by_name["away"]["average_tokens"] == pytest.approx(0.0)
  # All pairs: same has 2 of 4 pairs at 1; half 1 of 4; the per-token max finds each target token in `same`.
  assert by_name["same"]["per_token_average"] == pytest.approx(0.5)
  assert by_name["half"]["per_token_average"] == pytest.approx(0.25)
  assert by_name["same"]["per_token_max"] == pytest.approx(1.0)
  assert by_name["half"]["per_token_max"] == pytest.approx(0.5)
  # Another length compares too (a task embedding is the prompt, whatever its length); the ranking metric is chosen.
  longer = transfer.Source("longer", None, "prompt", np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 1.0, 0, 0]]), None)
  assert [r["name"] for r in transfer.rank(target, [half, longer], "per_token_max")] == ["longer", "half"]


@pytest.fixture(scope="module")
def library(trained_run, tmp_path_factory):
  """A library for the shared run's backbone (width 4): its own prompt negated and scaled (the worst match), the run's
  export of step 3 (the best), a prompt 8 wide, one that records another backbone, and a prefix entry."""
  folder = tmp_path_factory.mktemp("library")
  meta = json.loads((trained_run.model_dir / "checkpoints" / "4" / "meta" / "metadata").read_text())
  backbone = {key: str(meta[key]) for key in BACKBONE_KEYS}
  target = _step_prompt(trained_run.model_dir, 4)
  save_prompt_file(folder / "opposite.safetensors", -2 * target, backbone)
  save_entry(folder / "step3.safetensors", "prompt", {"prompt": _step_prompt(trained_run.model_dir, 3)}, backbone)
  save_entry(folder / "wide.safetensors", "prompt", {"prompt": np.ones((3, 8), np.float32)})
  other = {**backbone, "backbone_fingerprint": "0" * 32, "backbone_path": "/models/another_t5"}
  save_entry(folder / "elsewhere.safetensors", "prompt", {"prompt": target}, other)
  save_entry(folder / "a_prefix.safetensors", "prefix", {"encoder/key": np.ones((2, 2, 4), np.float32)})
  return folder


def test_rank_orders_the_library_and_refuses_by_name(trained_run, library, tmp_path, _cli):
  model_dir = tmp_path / "run"
  shipped = DEMO_LIBRARY_DIR  # the demo model's prompt (another width) and prefix
  out = _cli(
    "transfer",
    "rank",
    *trained_run.flags,
    f"--gin.MODEL_DIR='{model_dir}'",
    "--library",
    library,
    "--library",
    shipped,
    "--target",
    trained_run.model_dir,
    check=False,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  ranked = [line.split()[1] for line in lines if line.strip()[:1].isdigit()]
  assert ranked == ["step3", "opposite"]
  refused = {line.split()[1].rstrip(":"): line for line in lines if line.startswith("refused ")}
  assert set(refused) == {"wide", "elsewhere", "a_prefix", "animal_or_plant", "animal_or_plant_prefix"}
  assert "width 8" in refused["wide"] and "4 dimensions" in refused["wide"]
  assert "/models/another_t5" in refused["elsewhere"] and "another backbone" in refused["elsewhere"]
  saved = json.loads((model_dir / transfer.RANK_FOLDER / "ranking.json").read_text())
  assert [r["name"] for r in saved["ranking"]] == ["step3", "opposite"]
  assert saved["ranking"][1]["average_tokens"] == pytest.approx(-1.0, abs=1e-5)
  # `transfer SOURCE` refuses the same sources, by name, before anything trains.
  for name, words in (("wide", "width 8"), ("elsewhere", "another backbone"), ("a_prefix", "not a prompt")):
    out = _cli(
      "transfer", name, *trained_run.flags, f"--gin.MODEL_DIR='{tmp_path / name}'", "--library", library, check=False
    )
    assert out.returncode == 1 and name in out.stderr and words in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / name / "checkpoints").exists()
  # A path as SOURCE reads no library: a --library beside it is refused, not ignored.
  model_dir = f"--gin.MODEL_DIR='{tmp_path / 'path_and_library'}'"
  out = _cli(
    "transfer", library / "step3.safetensors", *trained_run.flags, model_dir, "--library", library, check=False
  )
  assert out.returncode == 1 and "is not read" in out.stderr, out.stderr[-2000:]


def test_transfer_starts_from_a_file_and_a_model_dir(trained_run, library, tmp_path, _cli):
  """(A library id: test_rank_tunes_the_target_briefly_then_starts_from_the_best starts from one.)"""
  sources = {
    str(library / "step3.safetensors"): _step_prompt(trained_run.model_dir, 3),  # a file
    str(trained_run.model_dir): _step_prompt(trained_run.model_dir, 4),  # a MODEL_DIR: its newest prompt
  }
  for i, (source, expected) in enumerate(sources.items()):
    model_dir = tmp_path / f"run{i}"
    _cli("transfer", source, *trained_run.flags, *FROZEN_STEP, f"--gin.MODEL_DIR='{model_dir}'")
    np.testing.assert_array_equal(_step_prompt(model_dir), expected, err_msg=source)


def test_rank_tunes_the_target_briefly_then_starts_from_the_best(trained_run, library, tmp_path, _cli):
  model_dir = tmp_path / "run"
  _cli(
    "transfer",
    "rank",
    *trained_run.flags,
    *FROZEN_STEP,
    "--gin.tune_target.steps=2",
    f"--gin.MODEL_DIR='{model_dir}'",
    "--library",
    library,
    "--start",
    "best",
  )
  target = model_dir / transfer.RANK_FOLDER / "target"
  assert sorted(p.name for p in (target / "numpy_checkpoints").iterdir()) == ["checkpoint_2"]
  ranking = json.loads((model_dir / transfer.RANK_FOLDER / "ranking.json").read_text())["ranking"]
  best = load_prompt_file(library / f"{ranking[0]['name']}.safetensors")
  np.testing.assert_array_equal(_step_prompt(model_dir), best)


def _model_dir_with_prompt(folder, prompt):
  step = folder / "numpy_checkpoints" / "checkpoint_2"
  step.mkdir(parents=True)
  np.save(step / "prompt.npy", np.asarray(prompt, np.float32))


def test_ranked_source_starts_a_sweep_run_from_the_best_or_worst_task(tmp_path):
  """The sweeps' SPoT initializer ranks the runs beside MODEL_DIR against the target task's run."""
  import jax

  runs = tmp_path / "runs"
  target = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]], np.float32)
  prompts = {"target": target, "near": target + 0.1, "far": -target, "wide": np.ones((3, 8), np.float32)}
  for name, prompt in prompts.items():
    _model_dir_with_prompt(runs / name, prompt)
  sources = {task: task for task in prompts}
  embedding = np.zeros((10, 4), np.float32)
  for pick, chosen in (("best", "near"), ("worst", "far")):
    model_dir = runs / f"spot_{pick}"
    init = transfer.ranked_source(model_dir=str(model_dir), task="target", sources=sources, pick=pick)
    np.testing.assert_array_equal(init(jax.random.key(0), embedding, 3), prompts[chosen])
    ranking = json.loads((model_dir / transfer.RANK_FOLDER / "ranking.json").read_text())
    assert [r["name"] for r in ranking["ranking"]] == ["near", "far"] and ranking["chosen"] == chosen
    assert "width 8" in ranking["refused"]["wide"]
  init = transfer.ranked_source(model_dir=str(runs / "x"), task="target", sources={**sources, "late": "late"})
  with pytest.raises(transfer.TransferError, match="late.*has no trained prompt"):
    init(jax.random.key(0), embedding, 3)


def test_the_shipped_spot_sweep_plans(tmp_path, capsys):
  """configs/sweeps/demo_spot.gin: 36 runs parse; the SPoT runs name the source runs they wait for."""
  from prompt_tuning import cli

  assert cli.main(["sweep", "plan", "sweeps/demo_spot.gin", f"--sweep_dir={tmp_path}"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[-1] == "36 runs, 7,200 training steps in all"
  runs = [line.split()[-1] for line in lines[1:-1] if line.split()[-1].startswith("task=")]
  assert len(runs) == 36 and runs[0] == "task=animal_or_plant,init=single,seed=0"
  counted = {line.split()[-1]: line.split()[:3] for line in lines[1:-1] if line.split()[-1].startswith("task=")}
  assert counted["task=gloss_to_word,init=single,seed=2"] == ["200", "5,120", "10,102,272"]
  waits = [line for line in lines if "not counted" in line]
  assert len(waits) == 24 and all("init=single,seed=0" in line and "has no trained prompt" in line for line in waits)


def test_the_shipped_mpt_arm_plans(tmp_path, capsys):
  """configs/sweeps/demo_spot_mpt.gin: MPT over the demo mixture, both factor inits x 3 seeds of 800 steps (4 tasks x
  200 steps' worth of examples each); its trainable tree is the shared prompt and one rank-1 factor per task."""
  from prompt_tuning import cli

  assert cli.main(["sweep", "plan", "sweeps/demo_spot_mpt.gin", f"--sweep_dir={tmp_path}"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[-1] == "6 runs, 4,800 training steps in all"
  names = [f"factor_init={init},seed={k}" for init in ("ones", "normal") for k in range(3)]
  assert [line.split() for line in lines[1:-1]] == [["800", "6,224", "10,103,376", name] for name in names]
  assert 6224 == 20 * 256 + 4 * (20 + 256)  # P x D shared, and per task u [P, 1] and v [1, D]
