"""Rebuilds the demo's assets from scratch: corpus, vocabulary, pretrained models, WordNet task (`make demo-model`).

    python -m prompt_tuning.demo_data.build [STEP ...] [--size demo|demo_3m|demo_1m] [--build-dir .cache/demo_build]
                                           [--steps N] [--assets-dir DIR]

Steps, in order (all by default):

  corpus    WordNet glosses + King James Bible -> BUILD_DIR/corpus/{train,validation}.txt   (`apt-get install
            wordnet-base bible-kjv`)
  vocab     SentencePiece on the corpus -> BUILD_DIR/vocab/demo_spm.model
  pretrain  span corruption, configs/pretrain_demo.gin at --size -> BUILD_DIR/pretrain[_SIZE] (resumes if stopped;
            --steps caps it)
  export    the latest pretraining checkpoint, in bfloat16, as a Hugging Face folder -> the size's folder in
            prompt_tuning/assets (demo_t5 for the 10M `demo`, with the vocabulary; demo_t5_3m, demo_t5_1m), with its
            pretraining facts (pretraining.json) and model card
  lm_adapt  LM adaptation (Lester et al. 2021, section 3.2), configs/lm_adapt_demo.gin, from the exported folder ->
            BUILD_DIR/lm_adapt[_SIZE] (resumes; --steps caps it)
  export_lm its latest checkpoint, likewise -> the size's folder + "_lm" (demo_t5_lm, demo_t5_3m_lm, demo_t5_1m_lm)
  task      the WordNet tasks -> prompt_tuning/assets/wordnet_categories/{train,validation,test}.jsonl (the demo's
            animal-or-plant task) and prompt_tuning/assets/wordnet_task/ (hypernymy)

--size picks the member of the demo family (prompt_tuning.demo_data.DEMO_FAMILY) the model steps build; every
member shares the one corpus and vocabulary. Run from the repository root (the gin configs name paths relative to
it). Everything is seeded; the corpus, the vocabulary and the task files come out byte for byte the same on every
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from prompt_tuning import gin_config

STEPS = ("corpus", "vocab", "pretrain", "export", "lm_adapt", "export_lm", "task")
BUILD_DIR = Path(".cache/demo_build")
PRETRAIN_CONFIG = "pretrain_demo.gin"
LM_ADAPT_CONFIG = "lm_adapt_demo.gin"


def build_corpus(build_dir: Path) -> None:
  from prompt_tuning.demo_data import corpus

  paths = corpus.write_corpus(build_dir / "corpus")
  print(f"corpus: {', '.join(f'{k} {v.stat().st_size:,} bytes' for k, v in paths.items())}")


def build_vocabulary(build_dir: Path) -> None:
  from prompt_tuning.demo_data import vocabulary

  path = vocabulary.train_vocabulary(build_dir / "corpus" / "train.txt", build_dir / "vocab" / "demo_spm.model")
  print(f"vocabulary: {path} ({vocabulary.NUM_PIECES} pieces + {vocabulary.EXTRA_IDS} sentinels)")


def _run_dir(build_dir: Path, stage: str, size: str) -> Path:
  """Where a stage ("pretrain", "lm_adapt") of one size trains: the 10M `demo` keeps the configs' own folders."""
  return build_dir / (stage if size == "demo" else f"{stage}_{size}")


def _model_dir(assets: Path | None, size: str, lm_adapted: bool = False) -> Path:
  """The exported folder of a size: in prompt_tuning/assets, or in `assets` (--assets-dir) when given."""
  from prompt_tuning import demo_data

  folder = demo_data.demo_model_dir(size, lm_adapted)
  return Path(assets) / folder.name if assets else folder


def _bindings(
  build_dir: Path, stage: str, size: str, steps: int | None, assets: Path | None = None
) -> tuple[str, list[str]]:
  """(gin file, bindings) of a stage's run at one size."""
  vocabulary_path = build_dir / "vocab" / "demo_spm.model"
  if stage == "pretrain":
    config = PRETRAIN_CONFIG
    bindings = [
      f"prompt_tuning.demo_data.register_pretraining_task.vocabulary_path = '{vocabulary_path}'",
      f"VOCABULARY_PATH = '{vocabulary_path}'",
    ]
  else:  # LM adaptation continues the exported span-corruption model, with the shipped vocabulary (the same file).
    config = LM_ADAPT_CONFIG
    bindings = [f"INITIAL_CHECKPOINT_PATH = '{_model_dir(assets, size)}'"]
  bindings += [
    f"SIZE = '{size}'",
    f"MODEL_DIR = '{_run_dir(build_dir, stage, size)}'",
    f"prompt_tuning.demo_data.register_pretraining_task.corpus_dir = '{build_dir / 'corpus'}'",
  ]
  return config, bindings + ([f"TRAIN_STEPS = {steps}"] if steps else [])


# (last step, Adafactor learning rate) of each pretraining phase: configs/pretrain_demo.gin is phase 1; phase 2 resumes
# its checkpoint at a 3x higher rate, which got the model off the loss plateau where its decoder ignored the encoder.
PHASES = ((1000, 0.01), (2000, 0.03))


def _train(config: str, bindings: list[str]) -> None:
  """`prompt-tuning train --gin_file=config --gin_bindings=...`, in this process."""
  import gin

  from prompt_tuning import compilation_cache, train

  compilation_cache.enable()
  gin.clear_config()
  gin_config.configure_gin([config], bindings, [], check_unread=True)
  gin_config.apply_code_read_macros()
  train.train()
  gin.clear_config()


def pretrain(build_dir: Path, steps: int | None, size: str = "demo") -> None:
  """Runs the pretraining phases in turn (each resumes the last checkpoint); `steps` caps the total."""
  start = time.perf_counter()
  for last_step, learning_rate in PHASES:
    last_step = min(last_step, steps) if steps else last_step
    config, bindings = _bindings(build_dir, "pretrain", size, last_step)
    _train(config, bindings + [f"adafactor.learning_rate = {learning_rate}"])
    if steps and last_step >= steps:
      break
  print(f"pretraining: {time.perf_counter() - start:.0f}s in this invocation")


def lm_adapt(build_dir: Path, steps: int | None, size: str = "demo", assets: Path | None = None) -> None:
  """Continues the exported model of `size` on the prefix-LM objective (configs/lm_adapt_demo.gin)."""
  start = time.perf_counter()
  _train(*_bindings(build_dir, "lm_adapt", size, steps, assets))
  print(f"LM adaptation: {time.perf_counter() - start:.0f}s in this invocation")


def _trained_backbone(build_dir: Path, stage: str, size: str, assets: Path | None):
  """(config, backbone params, step) from a stage's latest checkpoint."""
  import gin
  import jax

  from prompt_tuning import train

  config, bindings = _bindings(build_dir, stage, size, None, assets)
  if not (_run_dir(build_dir, stage, size) / "metrics.jsonl").is_file():
    raise SystemExit(f"error: nothing to export: run the {stage!r} step for --size {size} first")
  gin.clear_config()
  gin_config.configure_gin([config], bindings, [])
  run = train.build(train.RunConfig())
  run.checkpoints.close()
  backbone = jax.device_get(run.state.trainable["t5"])
  gin.clear_config()
  return run.tuned.config, backbone, int(run.state.step)


def _training_facts(run_dir: Path, step: int, total: int) -> dict:
  lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in lines if "train/loss" in r and r["step"] <= step]
  eval_rows = [r for r in lines if "eval/loss" in r and r["step"] <= step]
  return {
    "steps": step,
    "parameters": total,
    "final_train_loss": train_rows[-1]["train/loss"] if train_rows else None,
    "final_train_cross_entropy": train_rows[-1].get("train/cross_entropy") if train_rows else None,
    "final_eval_loss": eval_rows[-1]["eval/loss"] if eval_rows else None,
    "final_eval_token_accuracy": eval_rows[-1].get("eval/accuracy") if eval_rows else None,
    "wall_clock_seconds": round(lines[-1]["time"] - lines[0]["time"]) if lines else None,
  }


def export(build_dir: Path, assets: Path | None = None, size: str = "demo", lm_adapted: bool = False) -> Path:
  """Writes a stage's latest checkpoint (bfloat16) as the size's shipped folder (in prompt_tuning/assets, or in
  `assets`), with its facts and model card; the 10M span-corruption folder (demo_t5) also carries the family's
  vocabulary."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from prompt_tuning import demo_data
  from prompt_tuning.checkpoints import save_hf_pretrained
  from prompt_tuning.demo_data import model_card, vocabulary

  stage = "lm_adapt" if lm_adapted else "pretrain"
  out_dir = _model_dir(assets, size, lm_adapted)
  config, backbone, step = _trained_backbone(build_dir, stage, size, assets)
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(backbone))
  save_hf_pretrained(out_dir, config, jax.tree.map(lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16)), backbone))
  if size == "demo" and not lm_adapted:
    shutil.copyfile(build_dir / "vocab" / "demo_spm.model", out_dir / demo_data.DEMO_VOCABULARY.name)
  for path in out_dir.iterdir():
    path.chmod(0o644)  # safetensors writes its file owner-only; the package ships it to everyone.
  facts = _training_facts(_run_dir(build_dir, stage, size), step, total) | {
    "machine": f"{os.cpu_count()} CPU cores ({platform.machine()})"
  }
  if lm_adapted or size != "demo":
    facts |= {"size": size, "objective": "prefix_lm" if lm_adapted else "span_corruption"}
  if lm_adapted:
    pretrained = json.loads((_model_dir(assets, size) / "pretraining.json").read_text())
    facts["initialized_from"] = {"folder": demo_data.DEMO_FAMILY[size], "steps": pretrained["steps"]}
  (out_dir / "pretraining.json").write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
  corpus_chars = (build_dir / "corpus" / "train.txt").stat().st_size + (
    build_dir / "corpus" / "validation.txt"
  ).stat().st_size
  model_card.write_model_card(out_dir, facts, config, corpus_chars, vocabulary.NUM_PIECES, vocabulary.VOCAB_SIZE)
  megabytes = sum(p.stat().st_size for p in out_dir.iterdir()) / 1e6
  print(f"export: {stage} step {step}, {total:,} parameters -> {out_dir} ({megabytes:.1f} MB)")
  return out_dir


def build_task() -> None:
  from prompt_tuning import demo_data
  from prompt_tuning.demo_data import wordnet_categories, wordnet_task

  for name, module, folder in (
    ("animal or plant", wordnet_categories, demo_data.WORDNET_CATEGORY_TASK_DIR),
    ("hypernymy", wordnet_task, demo_data.WORDNET_TASK_DIR),
  ):
    paths = module.write_task(folder)
    print(f"task ({name}): " + ", ".join(f"{k} {sum(1 for _ in open(v))} examples" for k, v in paths.items()))
  for name, paths in wordnet_task.write_derived_tasks(demo_data.ASSETS).items():
    print(f"task ({name}): " + ", ".join(f"{k} {sum(1 for _ in open(v))} examples" for k, v in paths.items()))


def _parse(argv):
  from prompt_tuning.demo_data import DEMO_FAMILY

  parser = argparse.ArgumentParser(prog="python -m prompt_tuning.demo_data.build", description=__doc__.splitlines()[0])
  parser.add_argument("steps", nargs="*", help=f"steps to run, of {', '.join(STEPS)} (default: all)")
  parser.add_argument("--build-dir", type=Path, default=BUILD_DIR)
  parser.add_argument(
    "--steps", dest="train_steps", type=int, default=None, help="pretraining / LM-adaptation steps (the config's)"
  )
  parser.add_argument("--size", default="demo", choices=list(DEMO_FAMILY), help="the member of the demo family")
  parser.add_argument(
    "--assets-dir",
    type=Path,
    default=None,
    help="export the model folders here (and LM-adapt from here) instead of into prompt_tuning/assets",
  )
  args = parser.parse_args(argv)
  unknown = [s for s in args.steps if s not in STEPS]
  if unknown:
    parser.error(f"unknown step {unknown[0]!r}; the steps are {', '.join(STEPS)}")
  return args


def main(argv=None) -> int:
  args = _parse(argv)
  wanted = args.steps or list(STEPS)
  for step in STEPS:
    if step not in wanted:
      continue
    start = time.perf_counter()
    if step == "corpus":
      build_corpus(args.build_dir)
    elif step == "vocab":
      build_vocabulary(args.build_dir)
    elif step == "pretrain":
      pretrain(args.build_dir, args.train_steps, args.size)
    elif step == "export":
      export(args.build_dir, args.assets_dir, args.size)
    elif step == "lm_adapt":
      lm_adapt(args.build_dir, args.train_steps, args.size, args.assets_dir)
    elif step == "export_lm":
      export(args.build_dir, args.assets_dir, args.size, lm_adapted=True)
    else:
      build_task()
    print(f"[{step}] done in {time.perf_counter() - start:.0f}s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
