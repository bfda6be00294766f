"""The smallest real end-to-end job: load a real T5X checkpoint and decode a sentence.

    python -m prompt_tuning.demo [--checkpoint PATH] [--size t5_1_1_tiny] [--vocab PATH] [--text "..."]

By default it reads the reference T5X checkpoint and T5 SentencePiece model
that sit beside the project (../shared/reference). That checkpoint is a tiny
T5 1.1 after 3 training steps, so the decoded text is not meaningful: the demo
shows the pipeline (T5X loader -> Flax T5 -> prompt -> cached decoding ->
SentencePiece detokenization) working on real artifacts made by other tools.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def _parse(argv):
  parser = argparse.ArgumentParser(prog="python -m prompt_tuning.demo", description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", default=str(REFERENCE / "t5x_t5_1_1_tiny" / "checkpoint_3"))
  parser.add_argument("--size", default="t5_1_1_tiny", help="named T5 size of the checkpoint (T5X stores no config)")
  parser.add_argument("--vocab", default=str(REFERENCE / "t5_spm_32000.model"))
  parser.add_argument("--text", default="translate English to German: The house is wonderful.")
  parser.add_argument("--prompt-length", type=int, default=5, help="also decode with a random soft prompt this long")
  parser.add_argument("--max-decode-length", type=int, default=16)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = _parse(argv)
  for label, path in (("checkpoint", args.checkpoint), ("vocabulary", args.vocab)):
    if not Path(path).exists():
      print(f"error: {label} not found at {path}; pass --{label.replace('vocabulary', 'vocab')} PATH", file=sys.stderr)
      return 2

  import jax
  import numpy as np
  import seqio

  import prompt_tuning as pt
  from prompt_tuning import decoding

  start = time.perf_counter()
  config, params = pt.load_pretrained(args.checkpoint, config=args.size)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  print(f"loaded {args.checkpoint}: {args.size}, {n_params:,} parameters ({time.perf_counter() - start:.1f}s)")

  vocab = seqio.SentencePieceVocabulary(args.vocab, extra_ids=100)
  ids = vocab.encode(args.text) + [vocab.eos_id]
  print(f"input : {args.text!r} -> {len(ids)} tokens {ids}")
  tokens = np.asarray([ids], np.int32)
  settings = decoding.DecodingSettings(max_decode_length=args.max_decode_length)

  runs = [("no prompt", None)]
  if args.prompt_length:
    prompt = 0.5 * jax.random.normal(jax.random.key(0), (args.prompt_length, config.emb_dim))
    runs.append((f"{args.prompt_length}-token random prompt", prompt))
  for label, prompt in runs:
    start = time.perf_counter()
    out = decoding.generate(config, params, tokens, prompt=prompt, settings=settings)
    decoded = [int(t) for t in np.asarray(out.tokens[0]) if t > 0]
    print(f"greedy, {label}: {decoded} -> {vocab.decode(decoded)!r}  ({time.perf_counter() - start:.1f}s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
