"""Runs a tiny prompt-tuning job (subprocess helper for the trainer tests).

    python tests/scripts/tiny_train.py MODEL_DIR STEPS [--mesh D,M] [--distributed PORT,PID,N] [--out FILE]

Prints nothing special; writes a JSON summary (losses, final prompt) to --out.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("model_dir")
  parser.add_argument("steps", type=int)
  parser.add_argument("--mesh", default=None)
  parser.add_argument("--distributed", default=None)
  parser.add_argument("--out", default=None)
  parser.add_argument("--checkpoint_every", type=int, default=2)
  parser.add_argument("--backbone", default=None)
  parser.add_argument("--dropout", type=float, default=0.1)
  args = parser.parse_args()

  import jax

  if args.distributed:
    port, pid, n = (int(x) for x in args.distributed.split(","))
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n, process_id=pid)

  import tiny_task

  from prompt_tuning import train

  mesh = tuple(int(x) for x in args.mesh.split(",")) if args.mesh else None
  cfg = train.RunConfig(
    model_dir=args.model_dir,
    initial_checkpoint_path=args.backbone or str(tiny_task.T5X_TINY),
    model_size=None if args.backbone else "t5_1_1_tiny",
    mixture_or_task_name=tiny_task.register(),
    task_feature_lengths={"inputs": 16, "targets": 4},
    prompt_length=3,
    prompt_init=tiny_task.uniform_init,
    batch_size=8,
    dropout_rate=args.dropout,
    shuffle=True,
    mesh_shape=mesh,
  )
  last = train.train(cfg, num_train_steps=args.steps, checkpoint_every=args.checkpoint_every, log_every=1)
  if args.out:
    import numpy as np

    # Rebuilding restores the latest checkpoint (collectively, on every process).
    run = train.build(cfg)
    prompt = np.asarray(run.state.trainable["prompt"].addressable_data(0))
    run.checkpoints.close()
    out = {"last_loss": last["loss"], "step": int(run.state.step), "prompt": prompt.tolist()}
    metrics = Path(args.model_dir) / "metrics.jsonl"
    if metrics.exists():
      lines = [json.loads(x) for x in metrics.read_text().splitlines()]
      out["losses"] = {x["step"]: x["train/loss"] for x in lines if "train/loss" in x}
    Path(args.out).write_text(json.dumps(out))
  if args.distributed:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
