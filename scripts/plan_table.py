"""The README's table of where each configs/*.gin fits: `prompt-tuning plan --search` for every config.

    PYTHONPATH=. python scripts/plan_table.py [--devices h100,v3] [configs/prompt_base.gin ...]

For each config and device: the smallest mesh (data x model) it fits on with the config's own settings, and on one
device, whether it fits and otherwise the first settings the planner finds that make it fit. Prints a Markdown
table (paste it into README.md's "Where each config fits"). Takes minutes: every model axis is compiled once per
config (XLA:CPU, abstract inputs).
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("configs", nargs="*")
  parser.add_argument("--devices", default="h100,v3")
  args = parser.parse_args()
  import jax

  from prompt_tuning import plan

  jax.config.update("jax_num_cpu_devices", plan.HOST_DEVICES)
  import gin

  from prompt_tuning import gin_config

  configs = args.configs or sorted(
    str(p.relative_to(ROOT)) for g in ("prefix_*.gin", "prompt_*.gin") for p in (ROOT / "configs").glob(g)
  )
  devices = args.devices.split(",")
  print("| config | " + " | ".join(f"smallest {d} mesh | on one {d}" for d in devices) + " |")
  print("| --- |" + " --- | --- |" * len(devices))
  for path in configs:
    gin.clear_config()
    gin_config.configure_gin([os.path.basename(path)], [], [], check_unread=True)
    planner = plan.Planner(plan.planning_run_config())
    cells = []
    for device in devices:
      best = plan.smallest_mesh(planner, device)
      cells.append(f"{best.settings.mesh_text()} ({plan._bytes(best.memory.total)})" if best else "none up to 1,024")
      one = dataclasses.replace(planner.base_settings(), data=1, model=1)
      estimate = planner.estimate(one)
      if estimate.fits(device):
        cells.append(f"fits ({plan._bytes(estimate.memory.total)})")
      else:
        alone, together = plan.suggestions(planner, estimate, device, max_model=1)
        fitting = [e for e in [*alone, *together] if e.fits(device)]
        if fitting:
          e = min(fitting, key=lambda e: (len(e.settings.flags(one)), e.memory.total))
          cells.append(f"with {' '.join(e.settings.flags(one))} ({plan._bytes(e.memory.total)})")
        else:
          cells.append("no")
    print(f"| `{os.path.basename(path)}` | " + " | ".join(cells) + " |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
