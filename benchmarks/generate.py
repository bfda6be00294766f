"""Greedy decoding with a soft prompt, ours vs Hugging Face generate + PEFT, on whatever JAX and torch run on here.

    PYTHONPATH=. nice -n 19 python benchmarks/generate.py [--size t5_1_1_small] [--batch 8] [--inputs 128]
        [--prompt 20] [--new_tokens 32] [--repeats 3]

The decoding part of `benchmarks/accelerator.py` (its `OursDecode` and `HfDecode`, measured the same way) at the
sizes of the CPU row of RESULTS.md: `prompt_tuning.decoding.generate` of random full-length token rows through a
random soft prompt against `PeftModel.generate` with PEFT prompt tuning of the same architecture, float32, both
forced to generate exactly `--new_tokens` tokens (our EOS id set to -1, HF's min_new_tokens). The two run
interleaved, one untimed call each first; the ratio (ours / HF throughput) is taken per repeat and reported as
median (min-max). Random weights: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # accelerator.py, common.py
sys.path.insert(0, str(HERE.parent))


def main(argv: list[str] | None = None) -> dict:
  from accelerator import HfDecode, OursDecode, Scale, interleaved, spread

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="t5_1_1_small")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=128)
  parser.add_argument("--prompt", type=int, default=20)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  scale = Scale(
    decode_sizes=(args.size,),
    decode_batches=(args.batch,),
    decode_inputs=args.inputs,
    decode_prompt=args.prompt,
    new_tokens=args.new_tokens,
    dtype="float32",
  )
  runners = {"ours": OursDecode(args.size, args.batch, scale), "hf": HfDecode(args.size, args.batch, scale)}
  seconds = interleaved(runners, args.repeats, 1)
  result = {name: spread([runners[name].tokens / s for s in seconds[name]]) for name in runners}  # generated tokens/s
  result["ratio"] = spread([h / o for o, h in zip(seconds["ours"], seconds["hf"])])
  print(f"{args.size}, batch {args.batch}, {args.inputs} inputs + prompt {args.prompt}, {args.new_tokens} new tokens")
  for name, label in (("ours", "ours, tokens/s"), ("hf", "HF + PEFT, tokens/s"), ("ratio", "ours / HF + PEFT")):
    s = result[name]
    print(f"| {label} | {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}) |")
  return result


if __name__ == "__main__":
  main()
