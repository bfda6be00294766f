"""Where the packed prompt-tuning train step spends its time on the CPU: the JAX profiler's per-HLO-op trace.

The BoolQ-like packed step of `packing.py` (t5_1_1_small, prompt 100, 4 packed rows of 512 + 100 inputs and 16
targets, float32, Adafactor), traced with `jax.profiler` (its Perfetto trace: one event per XLA:CPU thunk, named
by its HLO instruction); the time of every instruction is summed over `--steps` steps and joined to the compiled
HLO's metadata (the JAX operation and source line that made it), then grouped into kinds: matmuls (dot and the
fusions around one), random bits (dropout's threefry), gathers and scatters, copies and transposes, reductions,
other elementwise fusions.

    cd benchmarks && PYTHONPATH=.. python profile_packed.py [--steps 5] [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
from pathlib import Path

import numpy as np
from packing import Ours, batches, boolq_examples


def instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (its opcode and called computation's kind, its metadata op_name and source)} of the entry
  computation and every fusion, from compiled HLO text."""
  out = {}
  for line in hlo_text.splitlines():
    match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ (\w[\w\-]*)\(", line)
    if not match:
      continue
    name, opcode = match.groups()
    kind = re.search(r"kind=(\w+)", line)
    op_name = re.search(r'op_name="([^"]*)"', line)
    source = re.search(r'source_file="([^"]*)" source_line=(\d+)', line)
    where = (op_name.group(1) if op_name else "") + (
      f"  [{Path(source.group(1)).name}:{source.group(2)}]" if source else ""
    )
    out[name] = (opcode + (f"/{kind.group(1)}" if kind else ""), where)
  return out


def category(name: str, opcode: str, where: str, body: str) -> str:
  text = f"{name} {opcode} {where} {body}".lower()
  if "threefry" in text or "random_bits" in text or "rng" in text:
    return "random bits (dropout)"
  if "dot" in text or "convolution" in text or "ynn" in name.lower():
    return "matmul (dot and its fusion)"
  if "gather" in text or "scatter" in text or "dynamic" in text:
    return "gather, scatter, dynamic slices"
  if "reduce" in text:
    return "reductions"
  if "copy" in text or "transpose" in text:
    return "copies, transposes"
  return "other elementwise"


def component(where: str) -> str:
  """The model part an instruction belongs to, from its JAX op_name: forward or backward pass, and the module path
  with layer indices dropped (e.g. "backward encoder/layers_*/attention")."""
  op_name = where.split("  [")[0]
  if not op_name:
    return "(no metadata)"
  direction = "backward" if "transpose(" in op_name else "forward" if "jvp(" in op_name else "outside the model"
  parts = [
    p for p in re.sub(r"layers_\d+", "layers_*", op_name).split("/")[1:] if not p.startswith(("jvp", "transpose"))
  ]
  module = [p for p in parts if re.fullmatch(r"[A-Za-z_.*]+", p) and not p.startswith("T5.")][:3]
  return f"{direction} {'/'.join(module)}"


def fusion_bodies(hlo_text: str) -> dict[str, str]:
  """{fused computation name: its opcodes, space-separated}: what a fusion instruction computes."""
  bodies, current = {}, None
  for line in hlo_text.splitlines():
    head = re.match(r"%?([\w.\-]+) .*\{\s*$", line)
    if head and "=" not in line.split("{")[0]:
      current = head.group(1)
      bodies[current] = ""
    elif current and line.strip() == "}":
      current = None
    elif current:
      op = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = \S+ (\w[\w\-]*)\(", line)
      if op:
        bodies[current] += op.group(1) + " "
  return bodies


def profile(runner: Ours, steps: int) -> dict[str, float]:
  """{HLO instruction: microseconds summed over `steps` traced steps}."""
  import jax

  runner.step()
  folder = Path(tempfile.mkdtemp(prefix="profile_packed_"))
  jax.profiler.start_trace(str(folder), create_perfetto_trace=True)
  for _ in range(steps):
    runner.step()
  jax.profiler.stop_trace()
  (trace,) = folder.rglob("perfetto_trace.json.gz")
  events = json.load(gzip.open(trace))
  events = events["traceEvents"] if isinstance(events, dict) else events
  times: dict[str, float] = collections.Counter()
  for e in events:
    args = e.get("args", {})
    if e.get("ph") == "X" and "hlo_op" in args and args.get("hlo_module", "").startswith("jit_train_step"):
      times[args["hlo_op"]] += e.get("dur", 0.0)
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--top", type=int, default=25)
  args = parser.parse_args()
  examples = boolq_examples(400, np.random.default_rng(0))
  packed = batches(examples, {"inputs": 512, "targets": 16}, 4, True, 100)
  runner = Ours("t5_1_1_small", 100, packed[:4])
  hlo = runner.compiled.as_text()
  names, bodies = instructions(hlo), fusion_bodies(hlo)
  called = {m.group(1): m.group(2) for m in re.finditer(r"%?([\w.\-]+) = .*calls=%?([\w.\-]+)", hlo)}
  times = profile(runner, args.steps)
  total = sum(times.values())
  kinds: dict[str, float] = collections.Counter()
  parts: dict[str, float] = collections.Counter()
  rows = []
  for op, micros in times.items():
    opcode, where = names.get(op, ("?", ""))
    body = bodies.get(called.get(op, ""), "")
    kinds[category(op, opcode, where, body)] += micros
    parts[component(where)] += micros
    rows.append((micros, op, opcode, where, body))
  print(f"traced {args.steps} steps: {total / 1e3 / args.steps:.1f} ms of HLO instructions per step")
  print("\n| kind | share | ms/step |\n| --- | --- | --- |")
  for kind, micros in kinds.most_common():
    print(f"| {kind} | {100 * micros / total:.1f}% | {micros / 1e3 / args.steps:.1f} |")
  print("\n| model part | share | ms/step |\n| --- | --- | --- |")
  for part, micros in parts.most_common(args.top):
    print(f"| {part} | {100 * micros / total:.1f}% | {micros / 1e3 / args.steps:.1f} |")
  print(f"\ntop {args.top} instructions:")
  for micros, op, opcode, where, body in sorted(rows, reverse=True)[: args.top]:
    print(f"{100 * micros / total:5.1f}%  {op:<28} {opcode:<20} {where[:110]}  {{{body.strip()[:80]}}}")


if __name__ == "__main__":
  main()
