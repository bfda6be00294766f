"""Real-token throughput of a prompt-tuning train step: packed vs unpacked (ours) vs PEFT; mixed vs shared prompts;
bfloat16 vs float32 activations; the share of the CPU's matmul roof.

One process measures, per length distribution, every configuration below, `--repeats` times interleaved (so load
from other processes hits them alike), and prints each one's median (min-max) and the per-repeat ratios:

- ours unpacked: T5X-style static shapes, every row padded to the feature lengths, one example per row;
- ours bucketed (BUCKET_BY_LENGTH = True): unpacked, each batch padded to its power-of-two bucket, and with
  BUCKETS_PER_DOUBLING = 2 to the finer grid of two lengths per doubling;
- ours packed (PACK = True): seqio's packing through `prompt_tuning.inputs`, each example with its own prompt;
- ours mixed: unpacked, every row with its own prompt from a trainable table of 8 (per-row prompt lengths too),
  against the shared prompt of "ours unpacked";
- ours bfloat16: the packed step with T5Config(dtype="bfloat16") activations (the backbone kept in float32, and
  with it cast to bfloat16 too);
- PEFT: Hugging Face PEFT prompt tuning on the equal PyTorch T5, unpacked (PEFT cannot pack), each batch padded to
  its longest example (Hugging Face's usual dynamic padding, kinder to it than static shapes).
- the ceiling of any packing ("boolq" only, without --skip_ceiling): ours and PEFT on rows with no padding at all,
  every example exactly the distribution's mean input length (its mean target length rounded), in as many rows as
  hold the positions of a packed batch. It is what perfect packing with perfect segment-local (block-diagonal)
  attention could reach, and a little more: a step's cost per example grows faster than its length (attention is
  quadratic), so examples of mixed lengths cost at least what the same tokens cost at their mean length.

Each configuration also prints its fill: the share of the encoder positions it computes that hold an example's token
or its prompt (the rest is padding).

Throughput counts real tokens only: the examples' input and target tokens, no padding and no prompt positions.

Length distributions:

- "boolq": SuperGLUE BoolQ as T5 feeds it ("boolq passage: ... question: ..." -> "True"/"False"), synthetic token
  ids with lengths drawn to follow published means: questions average 8.9 and passages 108 whitespace tokens (Clark
  et al. 2019, BoolQ, section 3; consistent with the tfds catalog's 8.51 MiB for its 12,697 train + validation
  examples, about 700 bytes each). Words become T5 SentencePiece pieces at 1.35 pieces a word (measured with the
  32,000-piece T5 vocabulary on an English prose text, /usr/share/common-licenses/GPL-3). The spread is assumed
  (log-normal, sigma 0.5 for passages, 0.3 for questions: only the means are published); True for 62% of the
  targets (the paper's majority baseline). Inputs are capped at 512 (T5's SuperGLUE length), prompt length 100
  (Lester et al.), t5_1_1_small with random weights.
- "wordnet": the demo task's real training rows (prompt_tuning/assets/wordnet_categories, tokenized by its seqio
  task with the demo vocabulary), prompt length 20 and the demo model's architecture (t5_1_1_demo), random weights;
  unpacked at the demo's lengths (64 + 4) in 32 rows, packed into 16 longer rows of 148 + 12 (as a T5X user
  packs: fewer, longer rows; --wordnet_packed_* change them).

    PYTHONPATH=. python benchmarks/packing.py [--repeats 3] [--only boolq,wordnet] [--skip_peft]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
import warnings

import numpy as np
from common import hf_t5, matmul_roof

EOS = 1
PEFT_IGNORE = -100  # Hugging Face's label id for positions without loss


def boolq_examples(
  count: int, rng: np.random.Generator, max_inputs: int = 512, vocab: int = 32000
) -> list[dict[str, np.ndarray]]:
  """Synthetic BoolQ rows with the lengths of the module docstring (token ids are random below `vocab`, lengths
  are not)."""
  pieces_per_word, template = 1.35, 8  # "boolq passage: ... question: ..." is 8 pieces in the T5 vocabulary
  examples = []
  for _ in range(count):
    passage = rng.lognormal(np.log(108) - 0.5**2 / 2, 0.5)
    question = rng.lognormal(np.log(8.9) - 0.3**2 / 2, 0.3)
    n_inputs = min(int(round((passage + question) * pieces_per_word)) + template + 1, max_inputs)
    n_targets = 2 if rng.random() < 0.62 else 4  # "True" (1 piece) or "False" (3 pieces), and EOS
    inputs, targets = rng.integers(3, vocab, n_inputs), rng.integers(3, vocab, n_targets)
    inputs[-1] = targets[-1] = EOS
    examples.append({"inputs": inputs.astype(np.int32), "targets": targets.astype(np.int32)})
  return examples


def wordnet_examples(max_inputs: int = 64) -> list[dict[str, np.ndarray]]:
  """The demo task's training rows as its seqio task tokenizes them, trimmed to the demo's input length."""
  import seqio

  from prompt_tuning import demo_data
  from prompt_tuning.demo_data import wordnet_categories

  os.environ.setdefault("PROMPT_TUNING_VOCAB", str(demo_data.DEMO_VOCABULARY))
  task = seqio.get_mixture_or_task(wordnet_categories.register_wordnet_category_task())
  rows = task.get_dataset({"inputs": max_inputs, "targets": 4}, split="train", shuffle=False)
  return [
    {"inputs": row["inputs"][:max_inputs].astype(np.int32), "targets": row["targets"].astype(np.int32)}
    for row in rows.as_numpy_iterator()
  ]


def _dataset(examples):
  import tensorflow as tf

  spec = {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)}
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)


def batches(
  examples, lengths, rows: int, pack: bool, prompt_slots: int, bucket=False, per_doubling: int = 1
) -> list[dict[str, np.ndarray]]:
  """Full batches of `rows` rows from the project's pipeline (`inputs.feature_converter`), packed or not, or
  unpacked and bucketed by length (`bucket`: BUCKET_BY_LENGTH's `inputs.length_bucketed`, `per_doubling` bucket
  lengths per doubling: BUCKETS_PER_DOUBLING)."""
  from prompt_tuning import inputs

  converter = inputs.feature_converter(False, pack=pack, prompt_slots=prompt_slots)
  names = inputs.MODEL_FEATURES_ENC_DEC + (inputs.PACKED_FEATURES if pack else ())
  if bucket:
    ds = converter(_dataset(examples), lengths).map(lambda row: {name: row[name] for name in names})
    return list(inputs.length_bucketed(ds, rows, per_doubling=per_doubling).as_numpy_iterator())
  converted = list(converter(_dataset(examples), lengths).as_numpy_iterator())
  return [
    {name: np.stack([row[name] for row in converted[i : i + rows]]) for name in names}
    for i in range(0, len(converted) - rows + 1, rows)
  ]


def uniform_examples(count: int, inputs: int, targets: int, rng, vocab: int = 32000) -> list[dict[str, np.ndarray]]:
  """`count` examples of exactly `inputs` input and `targets` target tokens (random ids below `vocab`, EOS last)."""
  examples = []
  for _ in range(count):
    row = {"inputs": rng.integers(3, vocab, inputs), "targets": rng.integers(3, vocab, targets)}
    row["inputs"][-1] = row["targets"][-1] = EOS
    examples.append({name: ids.astype(np.int32) for name, ids in row.items()})
  return examples


def fill(batch, prompt_length: int) -> float:
  """The share of the encoder positions a batch computes that hold an example's token or its prompt. Packed rows
  hold each example's prompt slots (negative ids; padding is 0); an unpacked row's prompt is joined in the model,
  `prompt_length` positions before the row."""
  tokens = batch["encoder_input_tokens"]
  if (tokens < 0).any():
    return float((tokens != 0).mean())
  rows, length = tokens.shape
  return float(((tokens != 0).sum() + rows * prompt_length) / (rows * (length + prompt_length)))


def real_tokens(batch) -> int:
  """The examples' input and target tokens: no padding, no prompt slots (negative ids)."""
  return int((batch["encoder_input_tokens"] > 0).sum() + (batch["decoder_target_tokens"] > 0).sum())


class Ours:
  """A compiled prompt-tuning train step (Adafactor, the paper's settings) over a cycle of batches."""

  def __init__(self, size, prompt_length, batch_list, dtype="float32", frozen_dtype="float32", mixed_prompts=0):
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec

    import prompt_tuning as pt
    from prompt_tuning import optim, prompts, trainer
    from prompt_tuning.methods import Prompt
    from prompt_tuning.tuning import TunedT5

    config = pt.get_config(size, dropout_rate=0.0, dtype=dtype)
    backbone = _backbone(size)
    if frozen_dtype != "float32":
      backbone = jax.tree.map(lambda x: x.astype(frozen_dtype), backbone)
    uniform = lambda rng, emb, n: jax.random.uniform(rng, (n, emb.shape[1]), minval=-0.5, maxval=0.5)  # noqa: E731
    tuned = TunedT5(config, (Prompt(prompt_length, uniform),))
    forward, self.batches = tuned.forward, list(batch_list)
    if mixed_prompts:
      # A trainable table of prompts [K, P, D]; row b uses prompt task[b] and its first prompt_lengths[b] vectors.
      shape = (mixed_prompts, prompt_length, config.emb_dim)
      table = jax.random.uniform(jax.random.key(1), shape, minval=-0.5, maxval=0.5)
      params = {"t5": backbone, "prompt": table}
      axes = {"t5": tuned.logical_axes({"t5": backbone})["t5"], "prompt": PartitionSpec(None, *prompts.PROMPT_AXES)}
      rows = self.batches[0]["encoder_input_tokens"].shape[0]
      task = np.arange(rows) % mixed_prompts
      lengths = prompt_length - (np.arange(rows) % 4) * (prompt_length // 4)  # P, 3P/4, P/2, P/4, P, ...
      self.batches = [{**b, "task": task, "prompt_lengths": lengths} for b in self.batches]

      def forward(params, batch, enable_dropout, rng):
        return pt.T5(config).apply(
          {"params": params["t5"]},
          batch["encoder_input_tokens"],
          batch["decoder_input_tokens"],
          batch["decoder_target_tokens"],
          prompt=jnp.take(params["prompt"], batch["task"], axis=0),  # [B, P, D]
          prompt_lengths=batch["prompt_lengths"],
          enable_dropout=enable_dropout,
          rngs={"dropout": rng} if enable_dropout else {},
        )
    else:
      params = {"t5": backbone, **tuned.init_vectors(jax.random.key(1), backbone)}
      axes = tuned.logical_axes(params)
    trainable, self.frozen = optim.partition(params, r"^prompt$")
    trainable_axes, _ = optim.partition(axes, r"^prompt$")
    optimizer = optim.adafactor(logical_axes=trainable_axes)
    self.state = trainer.TrainState.create(trainable, optimizer)
    step = jax.jit(functools.partial(trainer.train_step, forward=forward, optimizer=optimizer), donate_argnums=(0,))
    self.rng = jax.random.key(0)
    # One compiled step per batch shape (bucketed batches come in a few; the others in one).
    self.compiled_by_shape = {}
    for batch in self.batches:
      shape = batch["encoder_input_tokens"].shape
      if shape not in self.compiled_by_shape:
        self.compiled_by_shape[shape] = step.lower(self.state, self.frozen, batch, self.rng).compile()
    self.compiled = self.compiled_by_shape[self.batches[0]["encoder_input_tokens"].shape]
    flops = [c.cost_analysis() for c in self.compiled_by_shape.values()]
    flops = [float((a[0] if isinstance(a, list) else a).get("flops", 0.0)) for a in flops]
    # FLOPs of a step: the mean over the cycle of batches (per shape for bucketed ones).
    by_shape = dict(zip(self.compiled_by_shape, flops))
    self.flops = float(np.mean([by_shape[b["encoder_input_tokens"].shape] for b in self.batches]))
    self.fill = float(np.mean([fill(b, prompt_length) for b in self.batches]))
    self.index = 0

  def step(self) -> int:
    import jax

    batch = self.batches[self.index % len(self.batches)]
    self.index += 1
    compiled = self.compiled_by_shape[batch["encoder_input_tokens"].shape]
    self.state, metrics = compiled(self.state, self.frozen, batch, self.rng)
    jax.block_until_ready(metrics["loss"])
    return real_tokens(batch)


@functools.cache
def _backbone(size: str):
  import jax

  import prompt_tuning as pt

  config = pt.get_config(size, dropout_rate=0.0)
  return jax.device_get(jax.jit(pt.init_params, static_argnums=0)(config, jax.random.key(0)))


class Peft:
  """PEFT prompt tuning's train step on the equal PyTorch T5, each batch padded to its longest example."""

  def __init__(self, size, prompt_length, examples, rows: int, threads: int):
    import peft
    import torch
    from transformers.optimization import Adafactor

    self.torch = torch
    model = peft.get_peft_model(
      hf_t5(size, threads),
      peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=prompt_length),
    ).train()
    self.model = model
    params = [p for p in model.parameters() if p.requires_grad]
    self.optimizer = Adafactor(
      params, lr=0.3, scale_parameter=False, relative_step=False, warmup_init=False, decay_rate=-0.8
    )
    self.batches, fills = [], []
    for i in range(0, len(examples) - rows + 1, rows):
      chunk = examples[i : i + rows]
      inputs = self._pad([e["inputs"] for e in chunk], 0)
      labels = self._pad([e["targets"] for e in chunk], PEFT_IGNORE)
      tokens = sum(len(e["inputs"]) + len(e["targets"]) for e in chunk)
      self.batches.append((torch.tensor(inputs), torch.tensor(inputs > 0), torch.tensor(labels), tokens))
      # PEFT puts the prompt's positions before every row's inputs.
      fills.append(((inputs > 0).sum() + rows * prompt_length) / (rows * (inputs.shape[1] + prompt_length)))
    self.fill = float(np.mean(fills))
    self.index = 0

  @staticmethod
  def _pad(rows, value) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows)), value, np.int64)
    for i, r in enumerate(rows):
      out[i, : len(r)] = r
    return out

  def step(self) -> int:
    inputs, mask, labels, tokens = self.batches[self.index % len(self.batches)]
    self.index += 1
    self.optimizer.zero_grad(set_to_none=True)
    self.model(input_ids=inputs, attention_mask=mask.long(), labels=labels).loss.backward()
    self.optimizer.step()
    return tokens


def _measure(runners: dict, repeats: int, steps: int) -> tuple[dict[str, list[tuple[float, float]]], list[float]]:
  """({name: [(tokens/s, s/step) per repeat]}, [the f32 matmul roof of each repeat]): a warm-up pass over each
  runner's whole cycle of batches, then per repeat the roof and the runners interleaved, each for at least `steps`
  steps in whole cycles of its batches (a part of a cycle would weigh its batches' lengths unevenly: with 2 steps
  of a cycle of 4 bucketed batches, a repeat's ratio to PEFT depended on which 2 it drew).

  The warm-up runs every batch once, not one step: an XLA executable's first run pays one-time costs (its buffers
  and threads), so with a single warm-up step the bucketed runner's other bucket shapes ran for the first time in
  the first timed repeat, which read 0.82-0.86x of PEFT against 1.23-1.29x in the next two (two runs, 2026-12-06)."""
  for runner in runners.values():
    for _ in range(len(runner.batches)):
      runner.step()
  results, roofs = {name: [] for name in runners}, []
  for _ in range(repeats):
    roofs.append(matmul_roof(repeats=5)[0])
    for name, runner in runners.items():
      cycle = len(runner.batches)
      count = -(-steps // cycle) * cycle
      tokens, start = 0, time.perf_counter()
      for _ in range(count):
        tokens += runner.step()
      elapsed = time.perf_counter() - start
      results[name].append((tokens / elapsed, elapsed / count))
  return results, roofs


def _spread(values) -> str:
  return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _report(title: str, runners: dict, results: dict, roofs: list[float], ratios: list[tuple[str, str, str]]) -> dict:
  """Prints the scenario's table and ratios; returns them per repeat: {"roofs": [FLOP/s], "configurations": {name:
  {"tokens_per_s", "s_per_step", "roof_share" (0-1, empty without XLA's FLOP count)}}, "ratios": {label: [x]}}."""
  print(f"\n## {title}")
  print(f"f32 matmul roof in the repeats: {_spread([r / 1e9 for r in roofs])} GFLOP/s")
  print("| configuration | real tokens/s | s/step | XLA-counted FLOP/s / f32 matmul roof | encoder fill |")
  print("| --- | --- | --- | --- | --- |")
  out = {"roofs": list(roofs), "configurations": {}, "ratios": {}}
  for name, rows in results.items():
    flops = getattr(runners[name], "flops", 0.0)
    shares = [flops / seconds / roof for (_, seconds), roof in zip(rows, roofs)] if flops else []
    share = "-" if not flops else _spread([s * 100 for s in shares]) + " %"
    filled = runners[name].fill
    print(f"| {name} | {_spread([t for t, _ in rows])} | {_spread([s for _, s in rows])} | {share} | {filled:.0%} |")
    out["configurations"][name] = {
      "tokens_per_s": [t for t, _ in rows],
      "s_per_step": [s for _, s in rows],
      "roof_share": shares,
      "fill": filled,
    }
  for label, top, bottom in ratios:
    if top in results and bottom in results:
      per_repeat = [a / b for (a, _), (b, _) in zip(results[top], results[bottom])]
      print(f"- {label}: {_spread(per_repeat)}x (median (min-max) of the {len(per_repeat)} paired repeats)")
      out["ratios"][label] = per_repeat
  return out


RATIOS = [
  ("packed / unpacked (ours)", "ours packed", "ours unpacked"),
  ("packed ours / PEFT", "ours packed", "PEFT unpacked"),
  ("unpacked ours / PEFT", "ours unpacked", "PEFT unpacked"),
  ("bucketed ours / PEFT", "ours bucketed (BUCKET_BY_LENGTH)", "PEFT unpacked"),
  ("bucketed, 2 per doubling, ours / PEFT", "ours bucketed, BUCKETS_PER_DOUBLING = 2", "PEFT unpacked"),
  (
    "bucketed, 2 per doubling / powers of two (ours)",
    "ours bucketed, BUCKETS_PER_DOUBLING = 2",
    "ours bucketed (BUCKET_BY_LENGTH)",
  ),
  ("bucketed / unpacked (ours)", "ours bucketed (BUCKET_BY_LENGTH)", "ours unpacked"),
  ("no padding (the ceiling of any packing) ours / PEFT", "ours, no padding", "PEFT unpacked"),
  ("ours / PEFT on the same rows with no padding", "ours, no padding", "PEFT, no padding"),
  ("packed / no padding (ours)", "ours packed", "ours, no padding"),
  ("mixed / shared prompts (unpacked)", "ours mixed (8 prompts, 4 lengths)", "ours unpacked"),
  ("bf16 activations / f32 (packed)", "ours packed, bf16 activations", "ours packed"),
  ("bf16 activations and backbone / f32 (packed)", "ours packed, bf16 activations + backbone", "ours packed"),
]


def scenario(name, args, threads) -> dict:
  """Measures one length distribution ("boolq" or "wordnet") with `args` (`parse_args`'s); prints its table and
  returns its numbers per repeat (`_report`)."""
  if name == "boolq":
    size, prompt_length, rows, packed_rows = args.boolq_size, 100, args.boolq_rows, args.boolq_rows
    import prompt_tuning as pt

    vocab = min(32000, pt.get_config(size).vocab_size)
    examples = boolq_examples(400, np.random.default_rng(0), vocab=vocab)
    # T5's SuperGLUE input length; packed rows get room for the targets of several examples.
    unpacked_lengths, packed_lengths = {"inputs": 512, "targets": 8}, {"inputs": 512, "targets": 16}
  else:
    size, prompt_length, rows = "t5_1_1_demo", 20, args.wordnet_rows
    examples = wordnet_examples()
    packed_rows = args.wordnet_packed_rows
    unpacked_lengths = {"inputs": 64, "targets": 4}
    packed_lengths = {"inputs": args.wordnet_packed_inputs, "targets": args.wordnet_packed_targets}
  unpacked = batches(examples, unpacked_lengths, rows, False, prompt_length)
  bucketed = batches(examples, unpacked_lengths, rows, False, prompt_length, bucket=True)
  finer = batches(examples, unpacked_lengths, rows, False, prompt_length, bucket=True, per_doubling=2)
  packed = batches(examples, packed_lengths, packed_rows, True, prompt_length)
  per_row = np.mean([b["encoder_segment_ids"].max(axis=1).mean() for b in packed])
  inputs_mean = np.mean([len(e["inputs"]) for e in examples])
  print(
    f"\n{name}: {len(examples)} examples, inputs {inputs_mean:.1f} tokens on average, prompt {prompt_length}; "
    f"unpacked {rows} rows of {unpacked_lengths}, packed {packed_rows} rows of {packed_lengths} (+ the prompt) "
    f"holding {per_row:.2f} examples each; {size}, random weights, {threads} threads"
  )
  runners = {
    "ours unpacked": Ours(size, prompt_length, unpacked[:4]),
    "ours bucketed (BUCKET_BY_LENGTH)": Ours(size, prompt_length, bucketed[: args.bucketed_batches]),
    "ours bucketed, BUCKETS_PER_DOUBLING = 2": Ours(size, prompt_length, finer[: args.bucketed_batches]),
    "ours packed": Ours(size, prompt_length, packed[:4]),
  }
  if not args.skip_packed_extras:
    runners["ours mixed (8 prompts, 4 lengths)"] = Ours(size, prompt_length, unpacked[:4], mixed_prompts=8)
  if not args.skip_bf16 and not args.skip_packed_extras:
    runners["ours packed, bf16 activations"] = Ours(size, prompt_length, packed[:4], dtype="bfloat16")
    runners["ours packed, bf16 activations + backbone"] = Ours(
      size, prompt_length, packed[:4], dtype="bfloat16", frozen_dtype="bfloat16"
    )
  if name == "boolq" and not args.skip_ceiling:
    # As many rows of the mean length as hold a packed batch's positions (so the kernels see alike shapes).
    mean_inputs = int(round(inputs_mean))
    mean_targets = int(round(np.mean([len(e["targets"]) for e in examples])))
    packed_positions = packed_rows * (packed_lengths["inputs"] + prompt_length)
    ceiling_rows = max(1, round(packed_positions / (mean_inputs + prompt_length)))
    even = uniform_examples(4 * ceiling_rows, mean_inputs, mean_targets, np.random.default_rng(1), vocab)
    even_lengths = {"inputs": mean_inputs, "targets": mean_targets}
    print(f"no padding: {ceiling_rows} rows of {even_lengths} (+ the prompt), no position left empty")
    even_batches = batches(even, even_lengths, ceiling_rows, False, prompt_length)
    runners["ours, no padding"] = Ours(size, prompt_length, even_batches)
    if not args.skip_peft:
      runners["PEFT, no padding"] = Peft(size, prompt_length, even, ceiling_rows, threads)
  if not args.skip_peft:
    runners["PEFT unpacked"] = Peft(size, prompt_length, examples[: 4 * rows], rows, threads)
  results, roofs = _measure(runners, args.repeats, args.steps)
  return _report(name, runners, results, roofs, RATIOS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration and repeat")
  parser.add_argument("--only", default="boolq,wordnet")
  parser.add_argument("--boolq_rows", type=int, default=4)
  parser.add_argument("--boolq_size", default="t5_1_1_small", help="the model of the BoolQ scenario")
  parser.add_argument("--wordnet_rows", type=int, default=32)
  # Longer packed rows (the demo's 64 input tokens + 20 prompt positions hold one of its examples, 35 + 20 on
  # average): 148 + 20 holds up to three, and each example's 3 target tokens need 12 positions for them.
  parser.add_argument("--wordnet_packed_inputs", type=int, default=148)
  parser.add_argument("--wordnet_packed_targets", type=int, default=12)
  parser.add_argument("--wordnet_packed_rows", type=int, default=16)
  parser.add_argument("--skip_peft", action="store_true")
  parser.add_argument("--skip_packed_extras", action="store_true", help="no mixed-prompt and bfloat16 runners")
  parser.add_argument(
    "--bucketed_batches", type=int, default=4, help="bucketed batches in the cycle (from the first examples)"
  )
  parser.add_argument("--skip_bf16", action="store_true")
  parser.add_argument("--skip_ceiling", action="store_true", help="no runners on rows without padding (boolq)")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  warnings.filterwarnings("ignore", category=FutureWarning)
  threads = os.cpu_count() or 1
  roof, roof_median = matmul_roof()
  bf16_roof, _ = matmul_roof(dtype="bfloat16")
  print(
    f"matmul roof (2048^3, jitted): float32 {roof / 1e9:.1f} GFLOP/s best, {roof_median / 1e9:.1f} median; "
    f"bfloat16 {bf16_roof / 1e9:.1f} best"
  )
  return {name: scenario(name, args, threads) for name in args.only.split(",")}


if __name__ == "__main__":
  main()
