"""SPoT-style prompt transfer (Vu et al., 2022): start a task's prompt from another task's, and find which one.

    prompt-tuning transfer SOURCE --gin_file=... --gin.MODEL_DIR=... [--library DIR]
    prompt-tuning transfer rank   --gin_file=... --gin.MODEL_DIR=... [--library DIR] [--target PROMPT]
                                  [--metric average_tokens|per_token_average|per_token_max] [--start best|worst]

`transfer SOURCE` trains the run the gin flags describe, its prompt initialized from SOURCE instead of PROMPT_INIT
(SPoT, section 2: the source prompt initializes the target task's prompt, which is then tuned as usual). SOURCE is
an entry of the prompt library (`--library`, the server's `--prompts_dir` format, see `prompt_tuning.serve.store`;
default: the demo library shipped in the package), or a prompt file or folder (`prompt_tuning.prompts.from_file`'s
formats: .npy, .safetensors, a PEFT folder, a training step folder, a MODEL_DIR). A checkpoint in MODEL_DIR still wins
(the run resumes).

`transfer rank` is SPoT's retrieval (section 4): the target task's prompt is tuned briefly (`tune_target.steps`
steps, gin: `--gin.tune_target.steps=N`, into MODEL_DIR/transfer_rank/target) or given (`--target`), then compared
with every prompt of the library as task embeddings (section 4.1):

- `average_tokens`: the cosine of the sources' and the target's average prompt tokens (the paper's better metric,
  used to rank by default);
- `per_token_average`: the average cosine over every pair of a source token and a target token (the paper's second);
- `per_token_max`: the average over the target's tokens of the best cosine with any source token. Not in the paper
  (issue #28 asked for it): opt-in, for prompts whose tokens match up to a permutation.

The ranking is printed and written to MODEL_DIR/transfer_rank/ranking.json; `--start best` (or `worst`, for a
control) then trains MODEL_DIR from that source, as `transfer SOURCE` would.

A source must be a prompt of the run's width trained on the run's backbone: another width is refused by name
(`Prompt.check`, the check the server applies to uploads), and so is another backbone where the source records one
(the training checkpoint's meta of a MODEL_DIR, or the header of an export: `prompt_files.recorded_backbone`): its
fingerprint must be the run's. A source that records no backbone (.npy files, PEFT folders, files written before
exports recorded it) is compared and used with a warning naming it. The run's backbone is read once to fingerprint
it, before training reads it again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import gin
import numpy as np

log = logging.getLogger(__name__)

RANK = "rank"
METRICS = ("average_tokens", "per_token_average", "per_token_max")
RANK_FOLDER = "transfer_rank"


class TransferError(ValueError):
  """A source prompt that cannot be used for this run; the message names it and says why."""


@dataclasses.dataclass(frozen=True)
class Source:
  """A prompt handed to transfer: its name (the library id, or the path as given), where it lies, its vectors [P, D]
  and the backbone it records (None: it records none)."""

  name: str
  path: Path
  method: str
  prompt: np.ndarray | None
  backbone: dict[str, str] | None


# -- sources ---------------------------------------------------------------------------------------------------------


def default_library() -> Path:
  from prompt_tuning.demo_data import DEMO_LIBRARY_DIR

  return DEMO_LIBRARY_DIR


def _source(name: str, path: Path, method: str, arrays: dict[str, np.ndarray]) -> Source:
  from prompt_tuning.checkpoints.prompt_files import recorded_backbone

  prompt = np.asarray(arrays["prompt"], np.float32) if method == "prompt" else None
  return Source(name, path, method, prompt, recorded_backbone(path))


def library_sources(library: str | Path) -> list[Source]:
  """The sources of one `--library`: every entry of a library folder (the server's formats; prompts and the other
  methods' alike, sorted by id), or the one prompt a file or a training folder holds (named by its file name).

  Raises:
    TransferError: nothing at `library`. PromptError: an entry that cannot be read (naming its file).
  """
  from prompt_tuning import storage
  from prompt_tuning.serve.library_files import LibraryFolder
  from prompt_tuning.serve.store import read_entry_file

  if storage.is_remote(library):
    raise TransferError(
      f"--library {library}: a prompt library is a local folder (the server's --prompts_dir format). Copy it down "
      f"(gcloud storage cp -r {library} DIR) and give DIR; one prompt on gs:// is given as SOURCE or --target itself."
    )
  library = Path(library)
  if not library.exists():
    raise TransferError(f"no prompt library at {library}: give --library a folder of prompts, or one prompt.")
  if library.is_dir() and not _holds_one_prompt(library):
    entries = LibraryFolder(library, writable=False).scan()
    return sorted((_source(e.prompt_id, e.path, e.method, dict(e.arrays)) for e in entries), key=lambda s: s.name)
  method, arrays = read_entry_file(library)
  return [_source(library.stem if library.is_file() else library.name, library, method, arrays)]


def _remote_source(url: str) -> Source:
  """A prompt on gs:// (`prompt_files.load_prompt_file`'s formats; a MODEL_DIR reads only its newest numpy step) and
  the backbone it records. Its path stays the gs:// one: the run's prompt initializer reads it from there."""
  from prompt_tuning.checkpoints.prompt_files import load_prompt_file, recorded_backbone

  try:
    prompt = load_prompt_file(url)
  except FileNotFoundError as e:
    raise TransferError(str(e)) from None
  return Source(url, url, "prompt", prompt, recorded_backbone(url))


def _holds_one_prompt(folder: Path) -> bool:
  """Whether a folder is one entry (a MODEL_DIR, a training step folder, a PEFT or export folder), not a library."""
  from prompt_tuning import methods

  exports = [cls.export_file() for cls in methods.registered().values() if cls.export_file()]
  markers = ("numpy_checkpoints", "adapter_config.json", "prompt.npy", "prompt.safetensors", *exports)
  return any((folder / name).exists() for name in markers)


def read_source(spec: str, libraries: list[str | Path] | None = None) -> Source:
  """The source named `spec`: a file or folder if one exists at that path, else an entry of one of `libraries`
  (default: the shipped demo library).

  Raises:
    TransferError: neither, naming the libraries' entries; or an entry of another method than the prompt.
  """
  from prompt_tuning import storage
  from prompt_tuning.serve.store import read_entry_file

  if storage.is_remote(spec):  # a prompt on gs:// (a MODEL_DIR trained there, an export uploaded)
    if libraries:
      raise TransferError(f"{spec} is a prompt on Cloud Storage, so --library is not read: leave it out.")
    source = _remote_source(spec)
    if source.prompt is None:
      raise TransferError(f"{spec} holds no prompt: transfer starts a prompt from a prompt.")
    return source
  path = Path(spec)
  if path.exists():
    if libraries:
      raise TransferError(
        f"{spec} is a file or folder, so --library {' '.join(map(str, libraries))} is not read: leave it out, or "
        "name a library entry by its id."
      )
    method, arrays = read_entry_file(path)
    source = _source(spec, path, method, arrays)
  else:
    libraries = list(libraries) if libraries else [default_library()]
    sources = {s.name: s for library in reversed(libraries) for s in library_sources(library)}  # the first wins
    if spec not in sources:
      raise TransferError(
        f"no prompt {spec!r}: no file or folder at that path, and no entry of that id in the library "
        f"{', '.join(map(str, libraries))} (its entries: {', '.join(sorted(sources)) or 'none'}). Give a prompt file, "
        "a MODEL_DIR or a library id."
      )
    source = sources[spec]
  if source.prompt is None:
    raise TransferError(
      f"{source.name!r} ({source.path}) holds a {source.method!r} export, not a prompt: transfer starts a prompt "
      "from a prompt."
    )
  return source


# -- checks ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Backbone:
  """The run's backbone as transfer checks against it: its architecture, fingerprint and path (its name)."""

  config: Any
  fingerprint: str
  path: str


def run_backbone(cfg) -> Backbone:
  """Reads the run's backbone (`run.load_backbone`) to fingerprint it as training checkpoints do."""
  from prompt_tuning import run
  from prompt_tuning.checkpoints.training import backbone_fingerprint

  config, params = run.load_backbone(cfg)
  return Backbone(config, backbone_fingerprint(params), str(cfg.initial_checkpoint_path))


def check_source(source: Source, backbone: Backbone) -> None:
  """Refuses a source that is not a prompt of this backbone: another method, another width (`Prompt.check`), or a
  recorded backbone whose fingerprint is not this one's. Warns when the source records no backbone.

  Raises:
    TransferError: naming the source, its path and what differs.
  """
  from prompt_tuning.methods.base import Limits, PromptError
  from prompt_tuning.methods.prompt import Prompt

  where = f"source {source.name!r} ({source.path})"
  if source.prompt is None:
    raise TransferError(f"{where} holds a {source.method!r} export, not a prompt.")
  limits = Limits(backbone.config, {"prompt": source.prompt.shape[0]}, ("prompt",))
  try:
    Prompt.check({"prompt": source.prompt}, limits)
  except PromptError as e:
    raise TransferError(f"{where}: {e}") from None
  recorded = source.backbone
  if recorded is None:
    log.warning("%s records no backbone: only its width is checked against %s.", where, backbone.path)
  elif recorded["backbone_fingerprint"] != backbone.fingerprint:
    raise TransferError(
      f"{where} was trained on another backbone: {recorded['backbone_path'] or 'unnamed'} (fingerprint "
      f"{recorded['backbone_fingerprint']}), while this run's INITIAL_CHECKPOINT_PATH {backbone.path} has fingerprint "
      f"{backbone.fingerprint}. A prompt means something to the backbone it was tuned on only: pick a source tuned "
      "on this backbone, or point INITIAL_CHECKPOINT_PATH at the source's."
    )


# -- frozen sources of a method (ATTEMPT) ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class SourcePrompts:
  """Frozen source prompts a method mixes (ATTEMPT, `prompt_tuning.methods.attempt`), read by `source_prompts`:
  their names, vectors, and the check of each against a run's backbone, `check_source` as transfer applies it. Equal
  by identity only (it holds arrays)."""

  sources: tuple[Source, ...]

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(s.name for s in self.sources)

  @property
  def prompts(self) -> np.ndarray:
    """The sources stacked, float32 [t, P, D].

    Raises:
      TransferError: sources of different lengths or widths, naming each.
    """
    shapes = {s.name: tuple(s.prompt.shape) for s in self.sources}
    if len(set(shapes.values())) != 1:
      raise TransferError(f"the source prompts have shapes {shapes}; a mixture of prompts needs one [P, D] shape.")
    return np.stack([s.prompt for s in self.sources])

  def check(self, config, fingerprint: str, backbone_path: str | None) -> None:
    """Refuses a source of another width, or recording another backbone, than `config` / `fingerprint` (the run's
    INITIAL_CHECKPOINT_PATH `backbone_path`), as `check_source`.

    Raises:
      TransferError: naming the source and what differs.
    """
    backbone = Backbone(config, fingerprint, str(backbone_path))
    for source in self.sources:
      check_source(source, backbone)

  def record(self) -> list[dict[str, str | None]]:
    """What an export records of each source: its name, path and the backbone fingerprint it records."""
    return [
      {"name": s.name, "path": str(s.path), "backbone_fingerprint": (s.backbone or {}).get("backbone_fingerprint")}
      for s in self.sources
    ]


@gin.configurable(module="prompt_tuning.transfer")
def source_prompts(names: list[str] = gin.REQUIRED, library: str | None = None) -> SourcePrompts:
  """The prompts `names` (ATTEMPT_SOURCES): ids of the prompt library `library` (ATTEMPT_LIBRARY, the server's
  `--prompts_dir` format; None: the shipped demo library), or prompt files and MODEL_DIRs when no library is given
  (`read_source`). Each is checked against the run's backbone when the run is built (`SourcePrompts.check`).

  Raises:
    TransferError: no names, a name found nowhere, or an entry of another method than the prompt.
  """
  if isinstance(names, str) or not names:
    raise TransferError(f"ATTEMPT_SOURCES is {names!r}: give a list of library ids or prompt files to mix.")
  if len(set(names)) != len(names):
    raise TransferError(f"ATTEMPT_SOURCES {list(names)} names a source twice; give each once.")
  libraries = [library] if library is not None else None
  return SourcePrompts(tuple(read_source(str(name), libraries) for name in names))


# -- similarity (Vu et al. 2022, section 4.1) ------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def similarity(source: np.ndarray, target: np.ndarray, metric: str = "average_tokens") -> float:
  """The similarity of two prompts [P1, D] and [P2, D] as task embeddings (lengths may differ).

  Raises:
    ValueError: an unknown metric, or prompts of different widths.
  """
  if metric not in METRICS:
    raise ValueError(f"unknown similarity {metric!r}; use one of {', '.join(METRICS)}.")
  if source.shape[-1] != target.shape[-1]:
    raise ValueError(f"prompts of widths {source.shape[-1]} and {target.shape[-1]} cannot be compared.")
  if metric == "average_tokens":
    return float(_unit(source.mean(axis=0)) @ _unit(target.mean(axis=0)))
  pairs = _unit(source) @ _unit(target).T  # [P1, P2] cosines
  if metric == "per_token_average":
    return float(pairs.mean())
  return float(pairs.max(axis=0).mean())  # per target token, its best source token


def rank(target: np.ndarray, sources: list[Source], metric: str = "average_tokens") -> list[dict[str, Any]]:
  """The sources, most similar first by `metric`, each {"name", "path", <every metric>: score}."""
  rows = [
    {"name": s.name, "path": str(s.path), **{m: similarity(s.prompt, target, m) for m in METRICS}} for s in sources
  ]
  return sorted(rows, key=lambda row: (-row[metric], row["name"]))


def format_ranking(rows: list[dict[str, Any]], refused: list[tuple[str, str]], metric: str) -> str:
  """The ranking as a table (ranked by `metric`, marked *), then the sources refused and why."""
  width = max([len("source"), *(len(r["name"]) for r in rows)])
  head = "  ".join(f"{m}{'*' if m == metric else ''}".rjust(len(m) + 1) for m in METRICS)
  lines = [f"rank  {'source'.ljust(width)}  {head}"]
  for i, row in enumerate(rows, start=1):
    scores = "  ".join(f"{row[m]:+.4f}".rjust(len(m) + 1) for m in METRICS)
    lines.append(f"{i:>4}  {row['name'].ljust(width)}  {scores}")
  for name, why in refused:
    lines.append(f"refused {name}: {why}")
  return "\n".join(lines)


# -- the commands ----------------------------------------------------------------------------------------------------


def _check_length(source: Source, cfg) -> None:
  length = source.prompt.shape[0]
  run_length = cfg.prompt.length if cfg.prompt is not None else 0
  if not run_length:
    raise TransferError("transfer starts a prompt, and this run has none (PROMPT_LENGTH is 0): set PROMPT_LENGTH.")
  if run_length != length:
    raise TransferError(
      f"source {source.name!r} ({source.path}) has {length} prompt vectors but PROMPT_LENGTH is {run_length}: "
      f"set PROMPT_LENGTH = {length} to start from it."
    )


def train_from(source: Source, cfg) -> dict[str, Any]:
  """Trains the run `cfg` describes with its prompt initialized from `source` (checked against it first)."""
  from prompt_tuning import prompts, train

  _check_length(source, cfg)
  log.info("transfer: the prompt starts from %s (%s), in place of PROMPT_INIT", source.name, source.path)
  prompt = dataclasses.replace(cfg.prompt, initializer=prompts.from_file(source.path))
  return train.train(run_config=dataclasses.replace(cfg, prompt=prompt))


@gin.configurable(module="prompt_tuning.transfer")
def tune_target(cfg, steps: int = 100) -> Any:
  """SPoT's target task embedding: the run's prompt tuned `steps` steps (from PROMPT_INIT) on its task, into
  MODEL_DIR/transfer_rank/target; returns that folder (a finished one is reused)."""
  from prompt_tuning import train

  if steps < 1:
    raise TransferError(f"tune_target.steps is {steps}; the target prompt needs at least 1 step of tuning.")
  from prompt_tuning import storage

  folder = storage.path(cfg.model_dir) / RANK_FOLDER / "target"
  train.train(
    run_config=dataclasses.replace(cfg, model_dir=str(folder)),
    num_train_steps=steps,
    checkpoint_every=steps,
    eval_every=0,
  )
  return folder


def transfer_command(spec: str, libraries: list[str] | None, cfg) -> dict[str, Any]:
  """`prompt-tuning transfer SOURCE`: checks the source against the run's backbone, then trains from it."""
  source = read_source(spec, libraries)
  check_source(source, run_backbone(cfg))
  return train_from(source, cfg)


def rank_command(
  libraries: list[str] | None, target: str | None, metric: str, start: str | None, cfg
) -> dict[str, Any] | None:
  """`prompt-tuning transfer rank`: ranks the libraries' prompts against the target's (tuned briefly unless given),
  prints and writes the ranking, and with `start` trains MODEL_DIR from the best or worst source.

  Raises:
    TransferError: two sources of one name (rename one), or (with `start`) no source left to start from.
  """
  from prompt_tuning import storage

  libraries = list(libraries) if libraries else [default_library()]
  sources = [source for library in libraries for source in library_sources(library)]
  names = [s.name for s in sources]
  if len(set(names)) != len(names):
    twice = sorted({n for n in names if names.count(n) > 1})
    raise TransferError(f"the libraries {', '.join(map(str, libraries))} hold several sources named {twice}.")
  backbone = run_backbone(cfg)
  target_path = target if target is not None else tune_target(cfg)
  target_source = read_source(str(target_path))  # a path: no library is read
  check_source(target_source, backbone)
  ranked, refused = [], []
  for source in sources:
    try:
      check_source(source, backbone)
    except TransferError as e:
      refused.append((source.name, str(e)))
      continue
    ranked.append(source)
  rows = rank(target_source.prompt, ranked, metric)
  library = ", ".join(map(str, libraries))
  print(f"target: {target_path} [{', '.join(map(str, target_source.prompt.shape))}]; library: {library}")
  print(format_ranking(rows, refused, metric))
  out = storage.path(cfg.model_dir) / RANK_FOLDER / "ranking.json"
  record = {"target": str(target_path), "library": str(library), "metric": metric, "ranking": rows}
  storage.write_bytes(out, (json.dumps({**record, "refused": dict(refused)}, indent=1) + "\n").encode())
  if start is None:
    return None
  if not rows:
    raise TransferError(f"no prompt of {library} can start this run (see the refusals above).")
  chosen = rows[0] if start == "best" else rows[-1]
  return train_from(next(s for s in ranked if s.name == chosen["name"]), cfg)


def add_flags(parser: argparse.ArgumentParser) -> None:
  """The command line's flags beside the gin flags (`prompt_tuning.cli`)."""
  parser.add_argument("source", help="a library id, a prompt file or a MODEL_DIR to start from; or 'rank'")
  parser.add_argument(
    "--library",
    action="append",
    default=None,
    help="a prompt library folder, or one prompt (a file or MODEL_DIR); repeatable (default: the demo library)",
  )
  parser.add_argument("--target", default=None, help="rank: the target's tuned prompt (default: tune it briefly)")
  parser.add_argument("--metric", choices=METRICS, default=None, help="rank: the similarity ranked by")
  parser.add_argument("--start", choices=("best", "worst"), default=None, help="rank: then train from this source")


def main(args: argparse.Namespace) -> dict[str, Any] | None:
  """Runs `prompt-tuning transfer` once gin is configured (the cli has parsed the flags of `add_flags`)."""
  from prompt_tuning.run import RunConfig

  cfg = RunConfig()
  if args.source == RANK:
    return rank_command(args.library, args.target, args.metric or METRICS[0], args.start, cfg)
  given = [f"--{name}" for name in ("target", "metric", "start") if getattr(args, name) is not None]
  if given:
    raise TransferError(f"{', '.join(given)} belong to `transfer rank`; `transfer SOURCE` does not read them.")
  return transfer_command(args.source, args.library, cfg)


# -- SPoT inside a sweep ---------------------------------------------------------------------------------------------


@gin.configurable(module="prompt_tuning.transfer")
def ranked_source(
  model_dir: str = gin.REQUIRED,
  task: str = gin.REQUIRED,
  sources: dict[str, str] = gin.REQUIRED,
  pick: str = "best",
  metric: str = METRICS[0],
):
  """A prompt initializer (PROMPT_INIT) for sweeps: SPoT's retrieval over runs beside this one.

  `sources` maps each task of the sweep to the run (a folder beside MODEL_DIR: SWEEP_DIR/runs/NAME) whose prompt is
  its task embedding. When the run's prompt is initialized, the prompt of this run's `task` (the target) is compared
  with the other tasks' by `metric` (Vu et al. 2022, section 4.1) and the `pick` ("best" or "worst") is loaded as
  `prompts.from_file` loads it; the ranking is logged and written to MODEL_DIR/transfer_rank/ranking.json. Sources of
  another width, or recording another backbone than the target's, are refused by name (logged). Nothing is read before
  the prompt is initialized, so a sweep plans before its source runs exist (their parameters are then not counted).

  Raises (when the prompt is initialized):
    TransferError: `task` or a source run missing or untrained (train the sources first), or no source left.
  """
  import jax

  from prompt_tuning import prompts

  if pick not in ("best", "worst"):
    raise TransferError(f"ranked_source.pick is {pick!r}; use 'best' or 'worst'.")
  if metric not in METRICS:
    raise TransferError(f"ranked_source.metric is {metric!r}; use one of {', '.join(METRICS)}.")
  if task not in sources:
    raise TransferError(f"ranked_source.task {task!r} is none of the sources' tasks ({', '.join(sorted(sources))}).")

  def init(rng, embedding, length):
    from prompt_tuning import storage

    runs = storage.path(model_dir).parent  # SWEEP_DIR/runs: local, or on gs:// for a sweep in the bucket
    found = {}
    for name, run in sources.items():
      if not (runs / run / "numpy_checkpoints").is_dir():
        raise TransferError(
          f"SPoT's source run {runs / run} (task {name}) has no trained prompt: run the sweep of the single-task runs "
          "into the same --sweep_dir first."
        )
      found[name] = dataclasses.replace(read_source(str(runs / run)), name=name)
    target = found.pop(task)
    usable, refused = [], []
    for source in found.values():
      width = source.prompt.shape[1]
      recorded = (source.backbone or {}).get("backbone_fingerprint")
      if width != embedding.shape[1]:
        refused.append((source.name, f"width {width}, this backbone's is {embedding.shape[1]}"))
      elif recorded and target.backbone and recorded != target.backbone["backbone_fingerprint"]:
        refused.append((source.name, f"trained on another backbone ({source.backbone['backbone_path']})"))
      else:
        usable.append(source)
    rows = rank(target.prompt, usable, metric)
    log.info("SPoT ranking for %s:\n%s", task, format_ranking(rows, refused, metric))
    if not rows:
      raise TransferError(f"no source prompt can start the task {task} (refused: {dict(refused)}).")
    chosen = rows[0] if pick == "best" else rows[-1]
    if jax.process_index() == 0:
      out = storage.path(model_dir) / RANK_FOLDER / "ranking.json"
      record = {"target": str(target.path), "metric": metric, "pick": pick, "chosen": chosen["name"], "ranking": rows}
      storage.write_bytes(out, (json.dumps({**record, "refused": dict(refused)}, indent=1) + "\n").encode())
    return prompts.from_file(chosen["path"])(rng, embedding, length)

  return init
