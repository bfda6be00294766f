"""Builds every configs/*.gin abstractly on 8 simulated devices; prints one JSON line per config.

Subprocess helper of tests/test_gin_configs.py (the device count must be set
before jax is imported).
"""

import json
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's code, not an install of another
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gin  # noqa: E402

from prompt_tuning import gin_config, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def main(vocab_path: str) -> None:
  for path in sorted((ROOT / "configs").glob("*.gin")):
    gin.clear_config()
    gin_config.configure_gin(
      [path.name],
      [
        "MODEL_DIR = '/tmp/unused'",
        "INITIAL_CHECKPOINT_PATH = '/tmp/unused'",
        "MIXTURE_OR_TASK_NAME = 'super_glue_boolq_v102'",
        f"VOCABULARY_PATH = '{vocab_path}'",
      ],
      [],
    )
    result = train.plan(train.RunConfig())
    shapes, shardings = result["shapes"], result["shardings"]
    line = {
      "config": path.name,
      "model_size": train.RunConfig().model_size,
      "total": result["total_count"],
      "trainable": result["trainable_count"],
      "prompt": list(shapes["prompt"].shape) if "prompt" in shapes else None,
      "prefix": "prefix" in shapes,
      "mesh": dict(shardings["t5"]["token_embedder"]["embedding"].mesh.shape),
      "mlp_spec": list(shardings["t5"]["encoder"]["layers_0"]["mlp"]["wo"]["kernel"].spec),
      "prompt_spec": list(shardings["prompt"].spec) if "prompt" in shardings else None,
    }
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
