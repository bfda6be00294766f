"""Trains one or every tuning method on the tiny task of tests/method_runs.py (subprocess helper).

    python tests/scripts/method_train.py ROOT BACKBONE METHODS STEPS [--checkpoint_every N] [--dropout R]
                                         [--mesh D,M] [--out FILE.npz] [--bucket]
                                         [--bucketed_methods METHODS --bucketed_steps N]

METHODS is a comma-separated list of tests/method_runs.METHODS; each trains in ROOT/<method>. --out writes every
method's final trainable leaves ("<method>:<path>") and per-step losses ("<method>:loss") to an npz file.
--bucketed_methods trains these methods too, with --bucket's settings, in ROOT/bucketed/<method> (their results keyed
"bucketed/<method>:..."): two comparisons, one process.
"""

import argparse
import sys
from pathlib import Path

# tests/ (method_runs) and the repository root before the installed package: this checkout's code is tested, also
# from a worktree beside an editable install of another.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]


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
  parser.add_argument("--bucketed_methods", default="", help="also trained with --bucket's settings")
  parser.add_argument("--bucketed_steps", type=int, default=None, help="their steps (default: STEPS)")
  args = parser.parse_args()

  import method_runs
  import numpy as np

  mesh = tuple(int(x) for x in args.mesh.split(",")) if args.mesh else None
  results = method_runs.train_methods(
    Path(args.root),
    Path(args.backbone),
    tuple(args.methods.split(",")),
    args.steps,
    checkpoint_every=args.checkpoint_every,
    bucket=args.bucket,
    dropout_rate=args.dropout,
    mesh_shape=mesh,
  )
  if args.bucketed_methods:
    bucketed = method_runs.train_methods(
      Path(args.root) / "bucketed",
      Path(args.backbone),
      tuple(args.bucketed_methods.split(",")),
      args.bucketed_steps or args.steps,
      checkpoint_every=args.checkpoint_every,
      bucket=True,
      dropout_rate=args.dropout,
      mesh_shape=mesh,
    )
    results |= {f"bucketed/{key}": value for key, value in bucketed.items()}
  if args.out:
    np.savez(args.out, **results)


if __name__ == "__main__":
  main()
