"""Trains one or every tuning method on the tiny task of tests/method_runs.py (subprocess helper).

    python tests/scripts/method_train.py ROOT BACKBONE METHODS STEPS [--checkpoint_every N] [--dropout R]
                                         [--mesh D,M] [--out FILE.npz] [--bucket]

METHODS is a comma-separated list of tests/method_runs.METHODS; each trains in ROOT/<method>. --out writes every
method's final trainable leaves ("<method>:<path>") and per-step losses ("<method>:loss") to an npz file.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("root")
  parser.add_argument("backbone")
  parser.add_argument("methods")
  parser.add_argument("steps", type=int)
  parser.add_argument("--checkpoint_every", type=int, default=100)
  parser.add_argument("--dropout", type=float, default=0.0)
  parser.add_argument("--mesh", default=None)
  parser.add_argument("--out", default=None)
  parser.add_argument("--bucket", action="store_true", help="BUCKET_BY_LENGTH on the varied-length task")
  args = parser.parse_args()

  import method_runs
  import numpy as np

  from prompt_tuning import train

  mesh = tuple(int(x) for x in args.mesh.split(",")) if args.mesh else None
  results = {}
  for method in args.methods.split(","):
    model_dir = Path(args.root) / method
    bucket = {"bucket_by_length": True, "mixture_or_task_name": method_runs.register_task(True)} if args.bucket else {}
    cfg = method_runs.run_config(
      model_dir, Path(args.backbone), method, dropout_rate=args.dropout, mesh_shape=mesh, **bucket
    )
    train.train(cfg, num_train_steps=args.steps, checkpoint_every=args.checkpoint_every, log_every=1)
    if args.out:
      for path, value in method_runs.final_trainable(cfg).items():
        results[f"{method}:{path}"] = value
      lines = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
      results[f"{method}:loss"] = np.array([x["train/loss"] for x in lines if "train/loss" in x])
  if args.out:
    np.savez(args.out, **results)


if __name__ == "__main__":
  main()
