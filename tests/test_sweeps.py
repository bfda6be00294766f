"""Sweep files: expansion to runs (grids, zipped axes, drops), planning, command lines, and the errors users see."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_files import TINY_RUNS, write_sweep  # noqa: E402

from prompt_tuning import cli  # noqa: E402
from prompt_tuning.sweeps import executors, planning, records, spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_demo_sweep_expands_to_the_figure_grids_sharing_points():
  demo = spec.load_sweep("sweeps/demo_scale.gin")
  points = spec.expand(demo)
  # figure1 3 sizes x 2 methods x 2 seeds = 12; at seed 0, figure3a adds 3 sizes x 3 lengths = 9, figure3b 3 x 2
  # inits = 6. Figure 3c's objective axis is in no grid here (demo_family's): every run is at its default, span.
  assert len(points) == 27
  assert {p.labels.get("objective") for p in points} == {"span", None}
  assert demo.axes["size"].labels == ["0.9M", "3.6M", "10M"] and demo.axes["size"].default == "10M"
  by_name = {p.name: p for p in points}
  shared = by_name["size=10M,method=prompt,prompt_length=20,init=class_labels,objective=span,seed=0"]
  assert shared.grids == ("figure1", "figure3a", "figure3b")
  assert shared.gin_files == ("demo/prompt.gin",)
  assert shared.bindings == ("TRAIN_STEPS = 200", "EVAL_EVERY = 100", "PROMPT_LENGTH = 20", "RunConfig.seed = 0")
  # Model tuning has no prompt: the prompt axes are dropped from its runs (and its name).
  model = by_name["size=10M,method=model,seed=1"]
  assert model.gin_files == ("demo/model.gin",) and model.bindings[-1] == "RunConfig.seed = 1"
  assert not any("PROMPT_LENGTH" in b for b in model.bindings)
  # One position cannot hold two class labels: length 1 starts from the sampled vocabulary.
  one = by_name["size=10M,method=prompt,prompt_length=1,objective=span,seed=0"]
  assert one.gin_files == ("demo/prompt.gin", "prompts/sampled_vocab.gin")
  assert by_name["size=10M,method=prompt,prompt_length=20,init=random_uniform,objective=span,seed=0"].gin_files[-1] == (
    "prompts/random.gin"
  )
  # A smaller member: its SIZE and checkpoint as bindings, after every gin file.
  small = by_name["size=0.9M,method=prompt,prompt_length=20,init=sampled_vocab,objective=span,seed=0"]
  assert small.gin_files == ("demo/prompt.gin", "prompts/sampled_vocab.gin")
  assert small.bindings[2:] == (
    "SIZE = 'demo_1m'",
    "prompt_tuning.demo_data.demo_model_path.size = 'demo_1m'",
    "PROMPT_LENGTH = 20",
    "RunConfig.seed = 0",
  )


def test_the_three_seed_demo_family_sweep_includes_the_demo_sweep():
  demo, family = spec.load_sweep("sweeps/demo_scale.gin"), spec.load_sweep("sweeps/demo_family.gin")
  assert family.name == "demo_family" and family.axes["seed"].labels == ["0", "1", "2"]
  assert {k: v for k, v in family.axes.items() if k != "seed"} == {k: v for k, v in demo.axes.items() if k != "seed"}
  points = spec.expand(family)
  # 18 + 27 + 18 + 27: every grid of the demo sweep, each over 3 seeds.
  assert len(points) == 90
  assert all("seed" in members for members in family.grids.values())
  assert {p.labels["seed"] for p in points if "figure3c" in p.grids} == {"0", "1", "2"}
  # The demo sweep's runs are the family's, named and configured alike: in one --sweep_dir they run once.
  by_name = {p.name: p for p in points}
  for p in spec.expand(demo):
    assert (by_name[p.name].gin_files, by_name[p.name].bindings) == (p.gin_files, p.bindings), p.name
  # LM-adapted with the full vocabulary, on a smaller member: the objective's bindings after the size's.
  small = by_name["size=0.9M,method=prompt,prompt_length=20,init=class_labels,objective=lm_full_vocab,seed=2"]
  assert small.gin_files == ("demo/prompt.gin",)
  assert small.bindings[2:] == (
    "SIZE = 'demo_1m'",
    "prompt_tuning.demo_data.demo_model_path.size = 'demo_1m'",
    "PROMPT_LENGTH = 20",
    "prompt_tuning.demo_data.demo_model_path.lm_adapted = True",
    "RunConfig.class_label_softmax = False",
    "RunConfig.seed = 2",
  )


def test_the_three_seed_demo_sweep_adds_a_seed_to_figure1_only():
  demo, seeds = spec.load_sweep("sweeps/demo_scale.gin"), spec.load_sweep("sweeps/demo_3_seeds.gin")
  points = {p.name: p for p in spec.expand(seeds)}
  added = set(points) - {p.name for p in spec.expand(demo)}
  # 3 sizes x 2 methods at seed 2; the ablations (no seed axis in their grids) stay on seed 0.
  assert len(points) == 33 and len(added) == 6
  assert all(points[name].grids == ("figure1",) and name.endswith(",seed=2") for name in added)
  assert {p.labels.get("seed") for p in points.values() if "figure3a" in p.grids} == {"0"}


def test_figure3c_is_score_vs_size_a_line_per_objective_from_the_prompt_runs(tmp_path):
  from prompt_tuning.sweeps import report

  sweep = {
    "name": "s",
    "metric": "eval/sequence_accuracy",
    "seed_axis": "seed",
    "axes": {
      "size": {"labels": ["1M", "10M"], "default": "10M"},
      "method": {"labels": ["prompt", "model"], "default": "prompt"},
      "objective": {"labels": ["span", "lm"], "default": "span"},
      "seed": {"labels": ["0", "1"], "default": "0"},
    },
  }
  totals = {"1M": 934_592, "10M": 10_097_152}
  scores = {("1M", "span"): (0.5, 0.6), ("1M", "lm"): (0.7, 0.9), ("10M", "span"): (0.6, 0.6), ("10M", "lm"): (1, 1)}
  results = [
    report.RunResult(f"{size}-{objective}-{seed}", labels, "done", final, final, 10, 1.0, 20, totals[size])
    for (size, objective), finals in scores.items()
    for seed, final in enumerate(finals)
    for labels in [{"size": size, "method": "prompt", "objective": objective, "seed": str(seed)}]
  ]
  # Model tuning has no objective label (the axis is dropped from its runs): not on this figure.
  results.append(report.RunResult("m", {"size": "1M", "method": "model", "seed": "0"}, "done", 0.0, 0.0, 10, 1, 1, 1))
  lines = report.figure_points(results, "size", "objective", sweep)
  assert [(x, round(mean, 3)) for x, mean, _ in lines["span"]] == [("1M", 0.55), ("10M", 0.6)]
  assert [(x, round(mean, 3)) for x, mean, _ in lines["lm"]] == [("1M", 0.8), ("10M", 1.0)]
  assert report.FIGURES["fig3c_objective"] == ("size", "objective")
  assert report.draw_figure(tmp_path / "fig3c.png", "size", "objective", results, sweep)
  assert (tmp_path / "fig3c.png").read_bytes()[:4] == b"\x89PNG"


def test_lester_sweep_is_the_papers_grid():
  lester = spec.load_sweep("sweeps/lester_figure1.gin")
  points = spec.expand(lester)
  # figure1 5x2x8x5 = 400, figure3a adds 4 lengths x 200, figure3b adds 2 initializers x 200.
  assert len(points) == 1600
  assert list(lester.axes["size"].labels) == ["small", "base", "large", "xl", "xxl"]
  assert lester.axes["prompt_length"].labels == ["1", "5", "20", "100", "150"]
  assert lester.figure_mean_over == ("task",)
  xxl = next(p for p in points if p.labels.get("size") == "xxl" and p.labels["method"] == "model")
  assert "partitioning/model_parallel.gin" in xxl.gin_files
  assert "TRAINABLE_PATTERN = '.*'" in xxl.bindings


def _sweep_file(tmp_path, body: str) -> Path:
  path = tmp_path / "s.gin"
  path.write_text("import prompt_tuning.sweeps.spec\nsweep.name = 's'\n" + body)
  return path


def test_zipped_axes_walk_together_and_the_product_is_the_default(tmp_path):
  body = """
sweep.axes = {'size': @size/axis(), 'lr': @lr/axis(), 'seed': @seed/axis()}
size/axis.values = {'small': ['models/sizes/small.gin'], 'base': ['models/sizes/base.gin']}
lr/axis.binding = 'adafactor.learning_rate'
lr/axis.values = [0.3, 0.1]
seed/axis.binding = 'RunConfig.seed'
seed/axis.values = [0, 1]
"""
  product = spec.expand(spec.load_sweep(_sweep_file(tmp_path, body)))
  assert len(product) == 8
  zipped = spec.expand(spec.load_sweep(_sweep_file(tmp_path, body + "sweep.grids = {'g': [('size', 'lr'), 'seed']}\n")))
  assert [p.name for p in zipped] == [
    "size=small,lr=0.3,seed=0",
    "size=small,lr=0.3,seed=1",
    "size=base,lr=0.1,seed=0",
    "size=base,lr=0.1,seed=1",
  ]
  assert zipped[2].gin_files == ("models/sizes/base.gin",)
  assert zipped[2].bindings == ("adafactor.learning_rate = 0.1", "RunConfig.seed = 0")


@pytest.mark.parametrize(
  "body, message",
  [
    ("sweep.axes = {'a': @a/axis()}\na/axis.values = [1, 2]\n", "need `a/axis.binding = 'GIN_NAME'`"),
    ("sweep.axes = {'a': @a/axis()}\na/axis.values = {'x': ['oops']}\n", "neither a gin file"),
    (
      "sweep.axes = {'a': @a/axis()}\na/axis.values = {'x': []}\nsweep.grids = {'g': ['b']}\n",
      "grid 'g' names ['b'], which are not axes",
    ),
    (
      "sweep.axes = {'a': @a/axis(), 'b': @b/axis()}\na/axis.binding = 'A'\na/axis.values = [1, 2]\n"
      "b/axis.binding = 'B'\nb/axis.values = [1]\nsweep.grids = {'g': [('a', 'b')]}\n",
      "zips axes of different lengths",
    ),
    ("sweep.axes = {'a': @a/axis()}\na/axis.binding = 'A'\na/axis.values = [1]\na/axis.default = 2\n", "default 2"),
    (
      "sweep.axes = {'a': @a/axis()}\na/axis.values = {'x': []}\na/axis.drops = {'x': ['z']}\n",
      "drops ['z']: not other axes",
    ),
    ("sweep.axes = {'a': @a/axis()}\na/axis.values = {'x': []}\nsweep.metric_goal = 'up'\n", "'max' or 'min'"),
  ],
)
def test_a_bad_sweep_file_gets_one_clear_error(tmp_path, body, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[").replace("]", r"\]")):
    spec.load_sweep(_sweep_file(tmp_path, body))


def test_plan_sizes_every_run_and_names_the_one_whose_config_is_wrong(reference_dir, tmp_path, capsys):
  sweep_file = write_sweep(tmp_path, "tiny_plan", steps=6)
  assert cli.main(["sweep", "plan", str(sweep_file), f"--sweep_dir={tmp_path / 'out'}", "--gin.TRAIN_STEPS=5"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[-1] == "4 runs, 20 training steps in all"
  # prompt_length 3 x embed 4 trainable of the 257,856 tiny weights; model tuning: all of them.
  assert lines[1].split() == ["5", "12", "257,868", TINY_RUNS[0]]
  assert lines[2].split() == ["5", "257,856", "257,856", TINY_RUNS[1]]
  assert not (tmp_path / "out").exists()  # plan starts nothing and writes nothing

  bad = write_sweep(tmp_path, "tiny_bad", steps=6, extra_bindings=["RunConfig.no_such = 1"])
  assert cli.main(["sweep", "plan", str(bad)]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ValueError: run size=tiny,method=prompt,prompt_length=3,seed=0: its gin config")
  assert "no_such" in err and len(err.strip().splitlines()) == 1


def test_run_records_its_exact_command_line(reference_dir, tmp_path):
  sweep_file = write_sweep(tmp_path, "tiny_cmd", steps=6)
  loaded = spec.load_sweep(sweep_file)
  point = spec.expand(loaded)[1]
  planned = planning.plan_run(point, tmp_path / "out", planning.search_paths(loaded))
  folder = records.write_run(tmp_path / "out", planned.record)
  assert folder == tmp_path / "out" / "runs" / "size=tiny,method=model,seed=0"
  command = planned.record.command
  assert command[:6] == [
    sys.executable,
    "-m",
    "prompt_tuning.cli",
    "train",
    "--gin_file=test/prompt_tiny.gin",
    "--gin_file=tasks/local_files.gin",
  ]
  assert "--gin.TRAINABLE_PATTERN='.*'" in command and "--gin.RunConfig.seed=0" in command
  assert command[-1] == f"--gin.MODEL_DIR='{folder}'"
  assert planned.record.steps == 6 and planned.record.labels == {"size": "tiny", "method": "model", "seed": "0"}
  script = (folder / "command.sh").read_text()
  assert "--gin.TRAINABLE_PATTERN='\"'\"'.*'\"'\"'" in script  # shell-quoted, runnable as it is


@pytest.mark.parametrize(
  "argv, message",
  [
    (["status", "x", "--parallel", "2"], "--parallel is an option of `sweep run`"),
    (["run", "x", "--ray_address", "h:1"], "--ray_address is read by --executor ray only"),
    (["run", "x", "--executor", "ray", "--parallel", "2"], "--parallel is read by --executor local only"),
    (["report", "x", "--gin.TRAIN_STEPS=3"], "overrides are for `sweep plan` and `sweep run`"),
  ],
)
def test_options_nothing_would_read_are_refused(argv, message, capsys):
  assert cli.main(["sweep", *argv]) == 1
  assert message in capsys.readouterr().err


def test_core_groups_split_the_allowed_cores():
  assert executors.core_groups(2, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
  assert executors.core_groups(1, [5, 7]) == [[5, 7]]
  with pytest.raises(ValueError, match="lets the sweep use 2 cores"):
    executors.core_groups(3, [0, 1])


def test_status_of_a_folder_that_is_not_a_sweep(tmp_path, capsys):
  assert cli.main(["sweep", "status", str(tmp_path)]) == 1
  assert "is not a sweep folder" in capsys.readouterr().err


def test_status_starts_without_tensorflow(tmp_path):
  """`sweep status` reads records only: a fresh process answers it without importing TensorFlow (the other sweep
  commands import it, quietly, to plan or run)."""
  code = (
    "import sys\n"
    "from prompt_tuning import cli\n"
    f"code = cli.main(['sweep', 'status', {str(tmp_path)!r}])\n"
    "print('tensorflow imported:', 'tensorflow' in sys.modules, 'status:', code)\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert "tensorflow imported: False status: 1" in out.stdout, out.stdout + out.stderr[-2000:]
  assert "is not a sweep folder" in out.stderr


def test_a_sweep_folder_url_other_than_gs_is_refused(capsys):
  # Path("s3://b/s") would be the local folder "s3:/b/s"; gs:// is written through prompt_tuning.storage.
  assert cli.main(["sweep", "run", "x.gin", "--sweep_dir=s3://bucket/sweep"]) == 2
  assert "--sweep_dir s3://bucket/sweep is a URL this project does not write to" in capsys.readouterr().err
  assert cli.main(["sweep", "status", "s3://bucket/sweep"]) == 1
  assert "the sweep folder s3://bucket/sweep is a URL this project does not write to" in capsys.readouterr().err


def test_every_run_of_the_demo_sweep_parses_and_is_sized(capsys):
  assert cli.main(["sweep", "plan", "sweeps/demo_scale.gin"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[-1] == "27 runs, 5,400 training steps in all"
  counted = {line.split()[-1]: line.split()[:3] for line in lines[1:-1] if "=" in line.split()[-1]}
  prompt = "method=prompt,prompt_length=20,init=class_labels,objective=span,seed=0"
  assert counted[f"size=10M,{prompt}"] == ["200", "5,120", "10,102,272"]
  assert counted["size=10M,method=model,seed=0"] == ["200", "10,097,152", "10,097,152"]
  assert counted["size=10M,method=prompt,prompt_length=1,objective=span,seed=0"][1] == "256"
  # Each size counts its own model: a 20-token prompt of width 48 on the 0.9M one, of 128 on the 3.6M.
  assert counted[f"size=0.9M,{prompt}"] == ["200", "960", "935,552"]
  assert counted[f"size=3.6M,{prompt}"] == ["200", "2,560", "3,576,704"]
  assert counted["size=0.9M,method=model,seed=1"][1:] == ["934,592", "934,592"]
  assert "not counted" not in "\n".join(lines)


def test_a_second_driver_on_a_sweep_folder_is_refused(reference_dir, tmp_path, capsys):
  from prompt_tuning import locks

  sweep_file = write_sweep(tmp_path, "tiny_locked", steps=2)
  out = tmp_path / "out"
  with locks.DirectoryLock(out, what="sweep"):  # another driver holds the folder
    assert cli.main(["sweep", "run", str(sweep_file), "--sweep_dir", str(out)]) == 1
  err = capsys.readouterr().err
  assert f"{out} is in use by" in err and "one sweep writes a folder at a time" in err
  assert not (out / "runs").exists()  # nothing was started
