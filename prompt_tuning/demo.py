"""The first command (`make demo`): prompt-tune the project's own small pretrained T5 on a WordNet task, and compare.

    python -m prompt_tuning.demo [--quick] [--steps N] [--examples N] [--greedy] [--work-dir DIR] [--record]
                                 [--verbose]

Nothing is downloaded: the frozen backbone is the demo model shipped in prompt_tuning/assets/demo_t5 (a 10M-parameter
T5 1.1 pretrained here with span corruption on WordNet glosses and the King James Bible; see its MODEL_CARD.md), and
the task is "cachalot: large whale with ... Is a cachalot an animal or a plant?" -> animal / plant, from WordNet's
lexicographer classes with held-out words (prompt_tuning/assets/wordnet_categories). Each row is a real run of
`prompt_tuning.train.train` configured by configs/demo/*.gin, then `prompt_tuning.infer.infer` on the test split:

  frozen, no prompt        the pretrained model as it is
  frozen, random prompt    an untrained 20-token random prompt
  prompt tuning            20 tokens initialized from the class labels, 400 steps (Lester et al. 2021)
  prefix tuning            10 key/value prefixes per layer through an MLP (Li & Liang 2021)
  model tuning             every weight

Accuracy ranks the two class labels by log-likelihood (infer's score mode: an invalid answer is impossible), with the
softmax over the labels' tokens as every row is trained (RunConfig.class_label_softmax). `--greedy` adds the exact
match of greedily decoded text, over the whole vocabulary (a column shown only then): 0% for every row of a full run,
as rows trained over the labels' tokens learn to choose among them, not to put them above the rest of the vocabulary.
TensorFlow's, XLA's and absl's start-up lines are hidden, as the command line hides them (`--verbose` shows them).
All five rows run live (about 11 minutes on 2 CPU cores); a full run's results are kept as a reference in
prompt_tuning/assets/demo_t5/demo_results.json (`--record` rewrites it).

The two trained vector rows are left in a serving library (`--library`, default `demo_library/`): the prompt as
`animal_or_plant.npy` and the folded prefix as `animal_or_plant_prefix.safetensors`, which
`prompt-tuning serve --gin_file=demo/base.gin --prompts_dir=demo_library` serves. The copy from the recorded run
ships in prompt_tuning/assets/demo_library.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from prompt_tuning import gin_config

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RECORDED_RESULTS = Path(__file__).resolve().parent / "assets" / "demo_t5" / "demo_results.json"
QUICK_STEPS = 5
QUICK_EXAMPLES = 64
GREEDY_DECODE_LENGTH = 4
DEFAULT_LIBRARY = Path("demo_library")


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the table: a configs/demo/ gin file, trained or not."""

  name: str
  config: str
  trains: bool
  library_id: str | None = None  # the id its trained vectors get in the serving library


ROWS = (
  Row("frozen, no prompt", "demo/no_prompt.gin", trains=False),
  Row("frozen, random prompt", "demo/random_prompt.gin", trains=False),
  Row("prompt tuning", "demo/prompt.gin", trains=True, library_id="animal_or_plant"),
  Row("prefix tuning", "demo/prefix.gin", trains=True, library_id="animal_or_plant_prefix"),
  Row("model tuning", "demo/model.gin", trains=True),
)


@dataclasses.dataclass
class Result:
  """What the table shows for one row."""

  name: str
  accuracy: float
  greedy_exact_match: float | None
  trainable_parameters: int
  saved_state_bytes: int
  train_seconds: float
  steps: int
  examples: int


def _parse(argv):
  parser = argparse.ArgumentParser(prog="python -m prompt_tuning.demo", description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps, {QUICK_EXAMPLES} test examples")
  parser.add_argument("--steps", type=int, default=None, help="training steps of each trained row (configs: 400)")
  parser.add_argument("--examples", type=int, default=None, help="test examples scored (default: all 1,000)")
  parser.add_argument("--greedy", action="store_true", help="also decode greedily (exact match, whole vocabulary)")
  parser.add_argument("--work-dir", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
  parser.add_argument("--record", action="store_true", help=f"write the results to {RECORDED_RESULTS.name}")
  parser.add_argument("--verbose", action="store_true", help="show TensorFlow's, XLA's and absl's start-up logs")
  parser.add_argument(
    "--library",
    type=Path,
    default=DEFAULT_LIBRARY,
    help="write the trained prompt and folded prefix here, a folder `prompt-tuning serve --prompts_dir` serves",
  )
  args = parser.parse_args(argv)
  if args.quick:
    args.steps = args.steps or QUICK_STEPS
    args.examples = args.examples or QUICK_EXAMPLES
  if args.record and (args.quick or args.steps or args.examples):
    parser.error("--record needs a full run (no --quick, --steps or --examples)")
  return args


def _configure(row: Row, model_dir: Path, steps: int | None) -> None:
  import gin

  gin.clear_config()
  bindings = [f"MODEL_DIR = '{model_dir}'"]
  if steps is not None and row.trains:
    bindings.append(f"TRAIN_STEPS = {steps}")
  gin_config.configure_gin([row.config], bindings, [])


def _directory_bytes(folder: Path) -> int:
  return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def _steps_done(model_dir: Path) -> int:
  metrics = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
  return max((m["step"] for m in metrics), default=0)


def _read_predictions(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _score(model_dir: Path, examples: int | None, greedy: bool) -> tuple[float, float | None, int]:
  """(ranked accuracy, greedy exact match, examples) of the run in `model_dir` on the test split."""
  from prompt_tuning import decoding, infer

  ranked = _read_predictions(
    infer.infer(mode="score", num_examples=examples, output_file=str(model_dir / "rank.jsonl"))
  )
  accuracy = sum(r["prediction"] == r["targets"] for r in ranked) / len(ranked)
  exact = None
  if greedy:
    settings = decoding.DecodingSettings(max_decode_length=GREEDY_DECODE_LENGTH)
    path = infer.infer(
      mode="predict", num_examples=examples, decoding_settings=settings, output_file=str(model_dir / "greedy.jsonl")
    )
    decoded = _read_predictions(path)
    exact = sum(r["prediction"].strip() == r["targets"] for r in decoded) / len(decoded)
  return accuracy, exact, len(ranked)


def add_to_library(model_dir: Path, library: Path, library_id: str) -> Path:
  """Copies the vectors of a run's last export into the serving library as `library_id`: a prompt as `.npy`, any
  other method (the folded prefix) as `.safetensors` with its method recorded (`prompt_tuning.serve.store`)."""
  from prompt_tuning.serve import store

  exports = sorted((model_dir / "numpy_checkpoints").glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
  if not exports:
    raise FileNotFoundError(f"{model_dir}/numpy_checkpoints holds no export to add to the library")
  export = exports[-1]
  library.mkdir(parents=True, exist_ok=True)
  if (export / "prompt.npy").is_file():
    target = library / f"{library_id}.npy"
    shutil.copyfile(export / "prompt.npy", target)
    return target
  method, arrays = store.read_entry_file(export)
  return store.save_entry(library / f"{library_id}.safetensors", method, arrays)


def run_row(
  row: Row, work_dir: Path, steps: int | None, examples: int | None, greedy: bool, library: Path | None = None
) -> Result:
  """Trains (if the row trains) and scores one row; returns its result."""
  import gin

  from prompt_tuning import train

  model_dir = work_dir / row.config.split("/")[-1].removesuffix(".gin")
  shutil.rmtree(model_dir, ignore_errors=True)
  _configure(row, model_dir, steps)
  print(f"\n== {row.name} ({row.config})", file=sys.stderr, flush=True)
  trainable = train.plan(train.RunConfig())["trainable_count"] if row.trains else 0
  seconds, done = 0.0, 0
  if row.trains:
    start = time.perf_counter()
    train.train()
    seconds = time.perf_counter() - start
    done = _steps_done(model_dir)
    if library is not None and row.library_id:
      print(f"library: {add_to_library(model_dir, library, row.library_id)}", file=sys.stderr, flush=True)
  accuracy, exact, count = _score(model_dir, examples, greedy)
  gin.clear_config()
  return Result(
    name=row.name,
    accuracy=accuracy,
    greedy_exact_match=exact,
    trainable_parameters=trainable,
    saved_state_bytes=_directory_bytes(model_dir / "checkpoints"),
    train_seconds=seconds,
    steps=done,
    examples=count,
  )


def _size(num_bytes: int) -> str:
  if not num_bytes:
    return "-"
  for unit, scale in (("MB", 1e6), ("kB", 1e3)):
    if num_bytes >= scale:
      return f"{num_bytes / scale:.1f} {unit}"
  return f"{num_bytes} B"


TABLE_HEADER = ("method", "accuracy", "greedy EM", "trainable params", "saved state", "train time", "steps")
GREEDY_COLUMN = TABLE_HEADER.index("greedy EM")


def _shown(cells: tuple[str, ...], greedy: bool) -> tuple[str, ...]:
  """The columns shown: "greedy EM" only when the run decodes greedily (otherwise it would be empty on every row)."""
  return cells if greedy else cells[:GREEDY_COLUMN] + cells[GREEDY_COLUMN + 1 :]


def _cells(r: Result) -> tuple[str, ...]:
  return (
    r.name,
    f"{100 * r.accuracy:.1f}%",
    "-" if r.greedy_exact_match is None else f"{100 * r.greedy_exact_match:.1f}%",
    f"{r.trainable_parameters:,}",
    _size(r.saved_state_bytes),
    f"{r.train_seconds:.0f}s" if r.steps else "-",
    str(r.steps) if r.steps else "-",
  )


def _widths(names: list[str], greedy: bool) -> list[int]:
  """Column widths fixed before any row is done (so each row can be printed as soon as it is): the header's, the
  longest method name, and room for the largest numbers the demo prints."""
  header = _shown(TABLE_HEADER, greedy)
  return [max(len(header[0]), *map(len, names)), *(max(len(h), 9) for h in header[1:])]


def _line(cells: tuple[str, ...], widths: list[int]) -> str:
  return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths)).rstrip()


def table_head(names: list[str], greedy: bool = False) -> str:
  """The table's header and rule, for rows named `names` (with the "greedy EM" column if `greedy`)."""
  widths = _widths(names, greedy)
  return "\n".join([_line(_shown(TABLE_HEADER, greedy), widths), "  ".join("-" * w for w in widths)])


def table_row(result: Result, names: list[str], greedy: bool = False) -> str:
  """One row of the table, aligned with `table_head(names, greedy)`."""
  return _line(_shown(_cells(result), greedy), _widths(names, greedy))


def format_table(results: list[Result]) -> str:
  """The comparison table, one line per row; the "greedy EM" column when the results have it."""
  names = [r.name for r in results]
  greedy = any(r.greedy_exact_match is not None for r in results)
  return "\n".join([table_head(names, greedy), *(table_row(r, names, greedy) for r in results)])


def _write_record(results: list[Result], total_seconds: float) -> None:
  record = {
    "note": "A full run of `python -m prompt_tuning.demo --record`, kept as a reference.",
    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "total_seconds": round(total_seconds),
    "rows": [dataclasses.asdict(r) for r in results],
  }
  RECORDED_RESULTS.write_text(json.dumps(record, indent=2) + "\n")


def _check_assets() -> str | None:
  from prompt_tuning import demo_data

  task_dir = demo_data.WORDNET_CATEGORY_TASK_DIR
  for path in (demo_data.DEMO_MODEL_DIR / "config.json", demo_data.DEMO_VOCABULARY, task_dir):
    if not path.exists():
      return f"{path} is missing: the demo model ships with the package; rebuild it with `make demo-model`"
  return None


def main(argv=None) -> int:
  args = _parse(argv)
  problem = _check_assets()
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  from prompt_tuning import compilation_cache, startup

  if not args.verbose:
    startup.quiet_start_up()
  compilation_cache.enable()
  start = time.perf_counter()
  work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="prompt_tuning_demo_"))
  results = []
  names = [row.name for row in ROWS]
  # Each row is printed as soon as it is done (the whole run takes minutes); the trainer's progress goes to stderr.
  print('WordNet "Is a cachalot an animal or a plant?" (after its definition), held-out words, demo T5:', flush=True)
  print(table_head(names, args.greedy), flush=True)
  try:
    for row in ROWS:
      results.append(run_row(row, work_dir, args.steps, args.examples, args.greedy, args.library))
      print(table_row(results[-1], names, args.greedy), flush=True)
  finally:
    if args.work_dir is None:
      shutil.rmtree(work_dir, ignore_errors=True)
  total = time.perf_counter() - start
  if not args.quick:
    print("\nchance: 50.0% (balanced labels)")
  print(f"total time: {total:.0f}s")
  print(
    f"trained vectors: {args.library}/ (serve them: prompt-tuning serve --gin_file=demo/base.gin "
    f"--prompts_dir={args.library})"
  )
  if args.record:
    _write_record(results, total)
  return 0


if __name__ == "__main__":
  sys.exit(main())
