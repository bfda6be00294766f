"""Rebuilds the demo's assets from scratch: corpus, vocabulary, pretrained model, WordNet task (`make demo-model`).

    python -m prompt_tuning.demo_data.build [STEP ...] [--build-dir .cache/demo_build] [--steps N]

Steps, in order (all by default):

  corpus    WordNet glosses + King James Bible -> BUILD_DIR/corpus/{train,validation}.txt   (`apt-get install
            wordnet-base bible-kjv`)
  vocab     SentencePiece on the corpus -> BUILD_DIR/vocab/demo_spm.model
  pretrain  span corruption, configs/pretrain_demo.gin -> BUILD_DIR/pretrain (resumes if stopped; --steps caps it)
  export    the latest pretraining checkpoint, in bfloat16, as a Hugging Face folder with the vocabulary ->
            prompt_tuning/assets/demo_t5 (and pretraining facts to prompt_tuning/assets/demo_t5/pretraining.json)
  task      the WordNet tasks -> prompt_tuning/assets/wordnet_categories/{train,validation,test}.jsonl (the demo's
            animal-or-plant task) and prompt_tuning/assets/wordnet_task/ (hypernymy)

Run from the repository root (the gin config names paths relative to it). Everything is seeded; the corpus, the
vocabulary and the task files come out byte for byte the same on every machine.
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

STEPS = ("corpus", "vocab", "pretrain", "export", "task")
BUILD_DIR = Path(".cache/demo_build")
PRETRAIN_CONFIG = "pretrain_demo.gin"


def build_corpus(build_dir: Path) -> None:
  from prompt_tuning.demo_data import corpus

  paths = corpus.write_corpus(build_dir / "corpus")
  print(f"corpus: {', '.join(f'{k} {v.stat().st_size:,} bytes' for k, v in paths.items())}")


def build_vocabulary(build_dir: Path) -> None:
  from prompt_tuning.demo_data import vocabulary

  path = vocabulary.train_vocabulary(build_dir / "corpus" / "train.txt", build_dir / "vocab" / "demo_spm.model")
  print(f"vocabulary: {path} ({vocabulary.NUM_PIECES} pieces + {vocabulary.EXTRA_IDS} sentinels)")


def _pretrain_bindings(build_dir: Path, steps: int | None) -> list[str]:
  bindings = [
    f"MODEL_DIR = '{build_dir / 'pretrain'}'",
    f"prompt_tuning.demo_data.register_pretraining_task.corpus_dir = '{build_dir / 'corpus'}'",
    f"prompt_tuning.demo_data.register_pretraining_task.vocabulary_path = '{build_dir / 'vocab' / 'demo_spm.model'}'",
    f"VOCABULARY_PATH = '{build_dir / 'vocab' / 'demo_spm.model'}'",
  ]
  return bindings + ([f"TRAIN_STEPS = {steps}"] if steps else [])


# (last step, Adafactor learning rate) of each pretraining phase: configs/pretrain_demo.gin is phase 1; phase 2 resumes
# its checkpoint at a 3x higher rate, which got the model off the loss plateau where its decoder ignored the encoder.
PHASES = ((1000, 0.01), (2000, 0.03))


def pretrain(build_dir: Path, steps: int | None) -> None:
  """Runs the pretraining phases in turn (each resumes the last checkpoint); `steps` caps the total."""
  from prompt_tuning import cli

  start = time.perf_counter()
  for last_step, learning_rate in PHASES:
    last_step = min(last_step, steps) if steps else last_step
    bindings = _pretrain_bindings(build_dir, last_step) + [f"adafactor.learning_rate = {learning_rate}"]
    code = cli.main(["train", f"--gin_file={PRETRAIN_CONFIG}"] + [f"--gin_bindings={b}" for b in bindings])
    if code:
      raise SystemExit(code)
    if steps and last_step >= steps:
      break
  print(f"pretraining: {time.perf_counter() - start:.0f}s in this invocation")


def _pretrained_backbone(build_dir: Path):
  """(config, backbone params, step) from the latest pretraining checkpoint."""
  import gin
  import jax

  from prompt_tuning import cli, train

  gin.clear_config()
  cli.configure_gin([PRETRAIN_CONFIG], _pretrain_bindings(build_dir, None), [])
  run = train.build(train.RunConfig())
  run.checkpoints.close()
  backbone = jax.device_get(run.state.trainable["t5"])
  gin.clear_config()
  return run.tuned.config, backbone, int(run.state.step)


def _pretraining_facts(build_dir: Path, step: int, total: int) -> dict:
  lines = [json.loads(line) for line in (build_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
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


def export(build_dir: Path, out_dir: Path | None = None) -> Path:
  """Writes the latest pretraining checkpoint (bfloat16) and the vocabulary as the shipped model folder."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from prompt_tuning import demo_data
  from prompt_tuning.checkpoints import save_hf_pretrained
  from prompt_tuning.demo_data import model_card, vocabulary

  out_dir = Path(out_dir or demo_data.DEMO_MODEL_DIR)
  config, backbone, step = _pretrained_backbone(build_dir)
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(backbone))
  save_hf_pretrained(out_dir, config, jax.tree.map(lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16)), backbone))
  shutil.copyfile(build_dir / "vocab" / "demo_spm.model", out_dir / demo_data.DEMO_VOCABULARY.name)
  for path in out_dir.iterdir():
    path.chmod(0o644)  # safetensors writes its file owner-only; the package ships it to everyone.
  facts = _pretraining_facts(build_dir, step, total) | {"machine": f"{os.cpu_count()} CPU cores ({platform.machine()})"}
  (out_dir / "pretraining.json").write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
  corpus_chars = (build_dir / "corpus" / "train.txt").stat().st_size + (
    build_dir / "corpus" / "validation.txt"
  ).stat().st_size
  model_card.write_model_card(out_dir, facts, config, corpus_chars, vocabulary.NUM_PIECES, vocabulary.VOCAB_SIZE)
  size = sum(p.stat().st_size for p in out_dir.iterdir())
  print(f"export: step {step}, {total:,} parameters -> {out_dir} ({size / 1e6:.1f} MB)")
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


def _parse(argv):
  parser = argparse.ArgumentParser(prog="python -m prompt_tuning.demo_data.build", description=__doc__.splitlines()[0])
  parser.add_argument("steps", nargs="*", help=f"steps to run, of {', '.join(STEPS)} (default: all)")
  parser.add_argument("--build-dir", type=Path, default=BUILD_DIR)
  parser.add_argument("--steps", dest="train_steps", type=int, default=None, help="pretraining steps (the config's)")
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
      pretrain(args.build_dir, args.train_steps)
    elif step == "export":
      export(args.build_dir)
    else:
      build_task()
    print(f"[{step}] done in {time.perf_counter() - start:.0f}s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
