"""Time to the first training step, cold (empty compilation cache) vs warm (the cache a previous run filled).

    python benchmarks/startup.py [--repeats 3] [--config demo/prompt.gin]

Each measurement is a fresh `prompt-tuning train` process on the shipped demo model (TRAIN_STEPS=1): from the
process start to the first step's line in metrics.jsonl. Cold runs each get an empty cache folder; warm runs reuse
one that a previous run of the same config filled. Prints the median and min-max of each, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prompt_tuning import compilation_cache  # noqa: E402


def time_to_first_step(config: str, model_dir: Path, cache: Path) -> float:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **{compilation_cache.ENV: str(cache)})
  flags = [f"--gin_file={config}", f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=1", "--gin.train.log_every=1"]
  start = time.time()
  subprocess.run(
    [sys.executable, "-m", "prompt_tuning.cli", "train", *flags], check=True, cwd=ROOT, env=env, capture_output=True
  )
  first = json.loads((model_dir / "metrics.jsonl").read_text().splitlines()[0])
  return first["time"] - start


def summary(values: list[float]) -> str:
  return f"{statistics.median(values):.1f} s ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--config", default="demo/prompt.gin")
  args = parser.parse_args()
  cold, warm = [], []
  with tempfile.TemporaryDirectory() as work:
    work = Path(work)
    warm_cache = work / "warm_cache"
    time_to_first_step(args.config, work / "fill", warm_cache)
    for i in range(args.repeats):
      cold.append(time_to_first_step(args.config, work / f"cold{i}", work / f"cold_cache{i}"))
      warm.append(time_to_first_step(args.config, work / f"warm{i}", warm_cache))
  ratios = [c / w for c, w in zip(cold, warm)]
  print(f"config {args.config}, {args.repeats} repeats, time from process start to the first step")
  print("| start | time to first step, median (min-max) |")
  print("| --- | --- |")
  print(f"| cold (empty cache) | {summary(cold)} |")
  print(f"| warm (cache filled) | {summary(warm)} |")
  print(f"| cold / warm | {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
  main()
