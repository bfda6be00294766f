"""Every row of issue #29's table of ratios against peers, re-measured in one run: one markdown table for RESULTS.md.

    PYTHONPATH=. nice -n 5 python benchmarks/peers.py [--repeats 3] [--output peers.json] [--hf_threads 0] [--quick]

The rows, one after the other, each measured by its own benchmark script (called, not copied) with ours and the
baseline interleaved repeat by repeat, so load moving during a row hits both sides alike:

- server: `serve.py`'s `bench` at concurrency 32, one shared prompt, against Hugging Face generate + PEFT on the
  same requests (`--hf_too`), requests/s; then, with no goal, the same with `--no_http` (the server in this
  process, no HTTP front end or load generator beside it), and where each run's time went (`serve.py`'s
  accounting, HF's beside it), and the server row's ceiling: HF's time over the server's with its admissions at
  their floor (no padding, at the matmul roof) and the rest as measured;
- generate: `generate.py` (`decoding.generate`, greedy, t5_1_1_small, batch 8, 128 inputs + prompt 20, exactly 32
  new tokens, float32) against `PeftModel.generate`, generated tokens/s;
- training: `packing.py`'s BoolQ-like scenario at t5_1_1_small (ours unpacked, bucketed with BUCKET_BY_LENGTH,
  packed, and PEFT prompt tuning with dynamic padding), real tokens/s, and the packed step's XLA-counted FLOP/s
  over the float32 matmul roof measured in each repeat; then, with no goal, why the packed row stops where it does:
  ours and PEFT on rows with no padding at all (the ceiling of any packing, `packing.py`'s docstring), and each
  configuration's encoder fill.

Each row reports median (min-max) over `--repeats` of ours, the baseline and the ratio taken per repeat, the
issue's goal, whether the median meets it, and the load average before and after the row. `--quick` runs the
same driver at toy sizes (the demo model t5_1_1_demo, 32 inputs, 1 train step a repeat) to check that it works
end to end in a couple of minutes: its numbers are not the issue's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the benchmark scripts and common.py
sys.path.insert(0, str(HERE.parent))

GOALS = {  # the goals: ours / peer (the roof share: a fraction of the measured roof)
  "server": 1.5,
  "generate": 1.5,
  "bucketed": 1.2,
  "bucketed finer": 1.2,
  "packed": 2.0,
  "packed roof share": 0.6,
}


def _spread(values: list[float]) -> dict[str, float]:
  from accelerator import spread

  return {**spread(values), "values": list(values)}


def _load() -> float:
  return os.getloadavg()[0]


def server_rows(args) -> dict:
  import serve

  argv = ["--requests", "32", "--concurrency", "32", "--prompts", "1", "--repeats", str(args.repeats), "--hf_too"]
  argv += ["--hf_threads", str(args.hf_threads)]
  cell = lambda c: {"median": c["requests_per_s"], "min": c["requests_per_s_min"], "max": c["requests_per_s_max"]}  # noqa: E731
  rows = {}
  for key, extra in (("server", []), ("server without HTTP", ["--no_http"])):
    out = serve.main(argv + extra)
    ours, hf = out["tables"]["continuous"][(1, 32)], out["tables"]["hf_peft"][(1, 32)]
    rows[key] = {"ours": cell(ours), "peer": cell(hf), "ratio": _spread(out["hf_ratios"][(1, 32)])}
    if key == "server":
      rows["server ceiling"] = {"ratio": _spread(out["ceilings"][(1, 32)])}
    rows["accounting"] = {**rows.get("accounting", {}), key: {k: ours[k] for k in serve.ACCOUNTING}}
    rows["hf accounting"] = {**rows.get("hf accounting", {}), key: {k: hf[k] for k in serve.HF_ACCOUNTING}}
  return rows


def generate_row(args) -> dict:
  import generate

  sizes = ["--size", "t5_1_1_demo", "--inputs", "32"] if args.quick else []
  out = generate.main(sizes + ["--repeats", str(args.repeats), "--hf_threads", str(args.hf_threads)])
  return {"ours": out["ours"], "peer": out["hf"], "ratio": out["ratio"]}


CEILING = "no padding (the ceiling of any packing) ours / PEFT"


def training_rows(args) -> dict:
  import packing

  argv = ["--only", "boolq", "--repeats", str(args.repeats), "--skip_packed_extras"]
  argv += ["--boolq_size", "t5_1_1_demo", "--steps", "1", "--bucketed_batches", "2"] if args.quick else []
  out = packing.scenario("boolq", packing.parse_args(argv), args.hf_threads or os.cpu_count() or 1)
  configurations, ratios = out["configurations"], out["ratios"]
  peft = _spread(configurations["PEFT unpacked"]["tokens_per_s"])
  rows = {}
  for key, name, label in (
    ("bucketed", "ours bucketed (BUCKET_BY_LENGTH)", "bucketed ours / PEFT"),
    ("bucketed finer", "ours bucketed, BUCKETS_PER_DOUBLING = 2", "bucketed, 2 per doubling, ours / PEFT"),
    ("unpacked", "ours unpacked", "unpacked ours / PEFT"),
    ("packed", "ours packed", "packed ours / PEFT"),
  ):
    rows[key] = {"ours": _spread(configurations[name]["tokens_per_s"]), "peer": peft, "ratio": _spread(ratios[label])}
  rows["packed roof share"] = {"ratio": _spread(configurations["ours packed"]["roof_share"])}
  # Why packing stops where it does: the same step on rows with no padding (packing's ceiling), against PEFT as
  # measured and against PEFT on those same rows (the kernels alone, no padding on either side).
  even, even_peft = configurations["ours, no padding"], configurations["PEFT, no padding"]
  rows["ceiling"] = {"ours": _spread(even["tokens_per_s"]), "peer": peft, "ratio": _spread(ratios[CEILING])}
  rows["equal rows"] = {
    "ours": _spread(even["tokens_per_s"]),
    "peer": _spread(even_peft["tokens_per_s"]),
    "ratio": _spread(ratios["ours / PEFT on the same rows with no padding"]),
  }
  rows["no padding roof share"] = {"ratio": _spread(even["roof_share"])}
  rows["fill"] = {name: configurations[name]["fill"] for name in configurations}
  rows["roof_gflops"] = _spread([r / 1e9 for r in out["roofs"]])
  return rows


LABELS = {
  "server": "server, one shared prompt, concurrency 32, req/s: ours / HF generate + PEFT",
  "server ceiling": "the server row's ceiling: its runs with every admission at its floor (each request encoded "
  "alone, unpadded, at the matmul roof: `serve.admission_floor`), its steps and time outside the model as measured "
  "(no goal)",
  "server without HTTP": "the same server built in the benchmark's process, requests submitted to its batcher, no "
  "HTTP: ours / HF generate + PEFT (no goal)",
  "generate": "`decoding.generate` greedy, {size}, batch 8, {inputs} inputs + prompt 20, 32 new tokens, tokens/s: "
  "ours / HF + PEFT",
  "bucketed": "training, BoolQ-like, unpacked with BUCKET_BY_LENGTH, {train_size}, real tokens/s: ours / PEFT",
  "bucketed finer": "training, the same with BUCKETS_PER_DOUBLING = 2 (bucket lengths about 1.41x apart), "
  "{train_size}: ours / PEFT",
  "unpacked": "training, BoolQ-like, unpacked (every row padded to 512), {train_size}: ours / PEFT (no goal)",
  "packed": "training, BoolQ-like, packed, {train_size}: ours / PEFT",
  "packed roof share": "packed train step, XLA-counted FLOP/s / the f32 matmul roof in the same repeat",
  "ceiling": "training on rows with no padding (every example the mean length; packing's ceiling): ours / PEFT as "
  "above (no goal)",
  "equal rows": "training, ours / PEFT, both on those rows with no padding: the kernels alone (no goal)",
  "no padding roof share": "the train step on rows with no padding, FLOP/s / the f32 matmul roof (no goal)",
}


def _cell(s: dict | None, scale: float = 1.0, unit: str = "") -> str:
  if s is None:
    return "-"
  return f"{s['median'] * scale:.2f}{unit} ({s['min'] * scale:.2f}-{s['max'] * scale:.2f})"


def markdown(rows: dict, args) -> str:
  names = {
    "size": "t5_1_1_demo" if args.quick else "t5_1_1_small",
    "inputs": 32 if args.quick else 128,
    "train_size": "t5_1_1_demo" if args.quick else "t5_1_1_small",
  }
  lines = [
    "| row | ours | peer | ours / peer, per repeat | goal | met (median) | load before-after |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  for key, label in LABELS.items():
    row = rows[key]
    share = key.endswith("roof share")
    goal = GOALS.get(key)
    ratio = _cell(row["ratio"], 100.0, " %") if share else _cell(row["ratio"], 1.0, "x")
    goal_text = "-" if goal is None else (f">= {goal * 100:.0f} %" if share else f">= {goal}x")
    met = "-" if goal is None else ("met" if row["ratio"]["median"] >= goal else "not met")
    load = f"{row['load'][0]:.1f}-{row['load'][1]:.1f}"
    lines.append(
      f"| {label.format(**names)} | {_cell(row.get('ours'))} | {_cell(row.get('peer'))} | {ratio} | {goal_text} "
      f"| {met} | {load} |"
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="toy sizes: checks the driver, measures nothing")
  parser.add_argument(
    "--hf_threads", type=int, default=0, help="torch threads for the peers (0: one per core; 1 on a busy box)"
  )
  parser.add_argument("--output", default=None, help="write every row's numbers, per repeat, as JSON here")
  args = parser.parse_args(argv)
  warnings.filterwarnings("ignore", category=FutureWarning)
  rows, start = {}, time.perf_counter()
  for part in (server_rows, generate_row, training_rows):
    before, began = _load(), time.perf_counter()
    measured = part(args)
    print(f"{part.__name__}: {time.perf_counter() - began:.0f} s", flush=True)
    measured = measured if part is not generate_row else {"generate": measured}
    for row in measured.values():
      if isinstance(row, dict) and "ratio" in row:
        row["load"] = (before, _load())
    rows.update(measured)
  table = markdown(rows, args)
  command = "PYTHONPATH=. python benchmarks/peers.py " + " ".join(sys.argv[1:] if argv is None else argv)
  print(f"\n{command}\n{args.repeats} repeats, {time.perf_counter() - start:.0f} s; ", end="")
  print(f"f32 matmul roof in the training repeats {_cell(rows['roof_gflops'])} GFLOP/s")
  fills = ", ".join(f"{name} {share:.0%}" for name, share in rows["fill"].items())
  print(f"encoder fill (positions holding an example's token or its prompt): {fills}")
  for name, a in rows["accounting"].items():
    print(
      f"{name}: {a['engine_share']:.0%} of the elapsed time in the model's programs ({a['step_share']:.0%} in "
      f"decoder steps, {a['admit_share']:.0%} in admissions), {a['steps_per_request']:.2f} decoder steps and "
      f"{a['admissions_per_request']:.2f} admissions per request, {a['rows_per_step']:.1f} rows per step, "
      f"{a['step_ms']:.1f} ms a step, {a['admit_ms']:.1f} ms an admission"
    )
  for name, a in rows["hf accounting"].items():
    print(
      f"HF generate + PEFT beside the {name} row: {a['first_token_share']:.0%} of its time in the encoder and the "
      f"first step (the same batches with max_new_tokens=1: {a['first_token_ms']:.1f} ms a request), "
      f"{a['steps_per_request']:.2f} later decoder steps per request, {a['step_ms']:.1f} ms a step of 32 rows"
    )
  print(f"\n{table}")
  if args.output:
    Path(args.output).write_text(json.dumps({"command": command, "rows": rows, "table": table}, indent=1))
  return rows


if __name__ == "__main__":
  main()
