"""Train and eval steps: small pure functions, jit-compiled by the driver with explicit shardings.

Gradients are taken with respect to the *trainable* pytree only; the frozen
backbone is a separate, non-differentiated argument, so XLA computes no weight
gradients for it and the optimizer holds no state for it.

The loss is T5X's: softmax cross-entropy plus z-loss (1e-4 * log(Z)^2, which
keeps the softmax normalizer near 1), summed over target tokens with their
loss weights and divided by the number of real target tokens of the whole
(global) batch, microbatches included.

`output_ids` optionally restricts the softmax to a few token ids (those of a
task's class labels, and EOS): the loss, the token accuracy and the label
scores are then normalized over those ids only, the verbalizer cross-entropy of
Schick & Schuetze (2021, "Exploiting Cloze Questions for Few Shot Text
Classification", section 2). A frozen model whose output distribution a prompt
cannot reshape in a few hundred steps can still be taught to choose among the
labels (see RunConfig.class_label_softmax).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.optim import merge

PyTree = Any
Batch = dict[str, jax.Array]
# forward(params {"t5": ..., "prompt": ..., "prefix": ...}, batch, enable_dropout, rng) -> logits [B, T, V]
Forward = Callable[[PyTree, Batch, bool, jax.Array], jax.Array]
OutputIds = tuple[int, ...] | None  # token ids the softmax is restricted to, or None for the whole vocabulary
_EXCLUDED = -1e9  # exp(-1e9 - max) is 0 in float32: the id takes no probability


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs, besides the frozen backbone and the data position."""

  step: jax.Array  # int32 scalar
  trainable: PyTree
  opt_state: optax.OptState

  @classmethod
  def create(cls, trainable: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    return cls(step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=optimizer.init(trainable))


def restrict_logits(logits: jax.Array, output_ids: OutputIds) -> jax.Array:
  """float32 logits, every id outside `output_ids` pushed to `_EXCLUDED` (unchanged when `output_ids` is None).

  Finite, not -inf: padding targets (id 0, loss weight 0) fall outside the ids, and inf * 0 would be NaN.
  """
  logits = logits.astype(jnp.float32)
  if output_ids is None:
    return logits
  allowed = jnp.zeros((logits.shape[-1],), bool).at[jnp.asarray(output_ids, jnp.int32)].set(True)
  return jnp.where(allowed, logits, _EXCLUDED)


def token_losses(
  logits: jax.Array, targets: jax.Array, z_loss: float, output_ids: OutputIds = None
) -> tuple[jax.Array, jax.Array]:
  """Per-token cross-entropy and z-loss terms, float32 [B, T] each (softmax over `output_ids` when given)."""
  logits = restrict_logits(logits, output_ids)
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - target_logit, z_loss * jnp.square(log_z)


def loss_weights(batch: Batch) -> jax.Array:
  """seqio's decoder_loss_weights, or real target tokens when absent."""
  if "decoder_loss_weights" in batch:
    return batch["decoder_loss_weights"].astype(jnp.float32)
  return (batch["decoder_target_tokens"] > 0).astype(jnp.float32)


def _sequence_sums(right: jax.Array, weights: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
  """(target sequences, sequences whose every weighted token is the argmax) in a batch; a packed row
  (`decoder_segment_ids`) holds several sequences, each counted alone. For a classification task, with the answer's
  format learned, this is the accuracy of the label: the measure token accuracy blurs with the format's tokens."""
  wrong = (1.0 - right.astype(jnp.float32)) * weights
  segments = batch.get("decoder_segment_ids")
  if segments is None:
    present = jnp.sum(weights, -1) > 0
    return jnp.sum(present).astype(jnp.float32), jnp.sum(present & (jnp.sum(wrong, -1) == 0)).astype(jnp.float32)
  rows, length = segments.shape
  ids = (jnp.arange(rows)[:, None] * (length + 1) + segments).reshape(-1)  # one id per (row, segment)
  count = rows * (length + 1)
  present = jax.ops.segment_sum(weights.reshape(-1), ids, count) > 0
  errors = jax.ops.segment_sum(wrong.reshape(-1), ids, count)
  return jnp.sum(present).astype(jnp.float32), jnp.sum(present & (errors == 0)).astype(jnp.float32)


def summed_loss(
  trainable,
  frozen,
  batch: Batch,
  rng,
  forward: Forward,
  z_loss: float,
  enable_dropout: bool,
  output_ids: OutputIds = None,
  count_sequences: bool = False,
):
  """Sum over tokens of (cross-entropy + z-loss), and the sums behind the metrics (with `count_sequences`, the
  evaluation's, also those behind the sequence accuracy; the train step leaves them out)."""
  logits = restrict_logits(forward(merge(trainable, frozen), batch, enable_dropout, rng), output_ids)
  targets, weights = batch["decoder_target_tokens"], loss_weights(batch)
  cross_entropy, z_term = token_losses(logits, targets, z_loss)
  total = jnp.sum((cross_entropy + z_term) * weights)
  right = jnp.argmax(logits, -1) == targets
  sums = {
    "cross_entropy": jnp.sum(cross_entropy * weights),
    "z_loss": jnp.sum(z_term * weights),
    "correct": jnp.sum(right * weights),
  }
  if count_sequences:
    sums["sequences"], sums["sequences_correct"] = _sequence_sums(right, weights, batch)
  return total, sums


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(
        f"batch of {x.shape[0]} rows does not split into {num_microbatches} microbatches; "
        "make the batch size a multiple of NUM_MICROBATCHES."
      )
    return x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:])

  return jax.tree.map(split, batch)


def train_step(
  state: TrainState,
  frozen: PyTree,
  batch: Batch,
  rng: jax.Array,
  *,
  forward: Forward,
  optimizer: optax.GradientTransformation,
  z_loss: float = 1e-4,
  num_microbatches: int = 1,
  output_ids: OutputIds = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step; gradients accumulated over `num_microbatches` slices of the batch."""
  rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.grad(functools.partial(summed_loss, output_ids=output_ids), has_aux=True)
  if num_microbatches == 1:
    grads, sums = grad_fn(state.trainable, frozen, batch, rng, forward, z_loss, True)
  else:

    def accumulate(carry, micro):
      index, micro_batch = micro
      grads, sums = grad_fn(state.trainable, frozen, micro_batch, jax.random.fold_in(rng, index), forward, z_loss, True)
      return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zeros = jax.tree.map(jnp.zeros_like, state.trainable)
    zero_sums = {k: jnp.zeros((), jnp.float32) for k in ("cross_entropy", "z_loss", "correct")}
    micro = (jnp.arange(num_microbatches), _split_microbatches(batch, num_microbatches))
    (grads, sums), _ = jax.lax.scan(accumulate, (zeros, zero_sums), micro)
  # Per-token normalization over the whole batch (T5X's NUM_REAL_TARGET_TOKENS).
  num_tokens = jnp.maximum(jnp.sum(loss_weights(batch)), 1.0)
  grads = jax.tree.map(lambda g: g / num_tokens, grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  metrics = _metrics(sums, num_tokens)
  metrics["grad_norm"] = optax.global_norm(grads)
  # Lets the driver refuse to keep (or save) a state that went non-finite.
  metrics["param_norm"] = optax.global_norm(trainable)
  return state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state), metrics


def _metrics(sums: dict[str, jax.Array], num_tokens: jax.Array) -> dict[str, jax.Array]:
  metrics = {
    "loss": (sums["cross_entropy"] + sums["z_loss"]) / num_tokens,
    "cross_entropy": sums["cross_entropy"] / num_tokens,
    "z_loss": sums["z_loss"] / num_tokens,
    "accuracy": sums["correct"] / num_tokens,
    "num_tokens": num_tokens,
  }
  if "sequences" in sums:
    metrics["sequence_accuracy"] = sums["sequences_correct"] / jnp.maximum(sums["sequences"], 1.0)
    metrics["num_sequences"] = sums["sequences"]
  return metrics


def eval_step(
  trainable, frozen, batch: Batch, *, forward: Forward, z_loss: float = 1e-4, output_ids: OutputIds = None
) -> dict[str, jax.Array]:
  """Teacher-forced loss, token accuracy and sequence accuracy, no dropout."""
  _, sums = summed_loss(trainable, frozen, batch, jax.random.key(0), forward, z_loss, False, output_ids, True)
  return _metrics(sums, jnp.maximum(jnp.sum(loss_weights(batch)), 1.0))


def score_step(trainable, frozen, batch: Batch, *, forward: Forward, output_ids: OutputIds = None) -> jax.Array:
  """log p(targets | inputs) per row [B]: ranks candidate class labels by likelihood."""
  logits = forward(merge(trainable, frozen), batch, False, jax.random.key(0))
  cross_entropy, _ = token_losses(logits, batch["decoder_target_tokens"], 0.0, output_ids)
  return -jnp.sum(cross_entropy * loss_weights(batch), axis=-1)
