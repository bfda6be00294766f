"""Every call the server makes into the model, in one place: the jitted programs and the device state they share.

    engine = Engine(config, params, mesh, EngineShapes(...))
    rows = engine.row_vectors(entry)          # one request's vectors (any method), padded, on device
    state = engine.admit(state, slots, tokens, [rows...])     # encode once, fill the slots' cross-attention cache
    state, rng, out = engine.step(state, rng, steps, running)  # up to `steps` positions of the running slots
    engine.beam(tokens, [rows...], settings)  # whole-batch beam search (decoding.generate)
    engine.score(tokens, targets, [rows...])  # teacher-forced log p(target | input)

Continuous batching for an encoder-decoder: a fixed number of slots; each
slot holds its own cross-attention keys/values (computed once, at
admission), its own tuned vectors, its own decode position and sampling
settings. A decoder step runs the frozen decoder on one position of every
slot at once: one batched `T5.decode` with a per-row `decode_position`
[slots], so each row writes its own self-attention cache slot and attends
with its own causal mask and relative positions. Only the running slots are
computed: the step gathers their rows of the per-slot state, padded up to a
step bucket, and writes them back after its steps; above a quarter of the
slots the cache stays whole, each row reading and writing its own cache row
(`T5.decode`'s cache_rows), and at most a quarter its rows are gathered too.
`step` runs up to `EngineShapes.max_steps_per_call` such steps in one call
(a `lax.while_loop` on the device, the tokens of every step returned
together), stopping early
once no slot is active or, when asked, after the first step that finishes a
slot: each call is a round trip to the host (the program's start, the
transfer of its outputs, the batcher's thread waking), and on a busy CPU that
costs about as much as a step. A finished slot takes the next request at the
step after the call returns; stale self-attention keys of its previous
request sit beyond the new request's position and are never visible (causal
mask).

Every row carries the same padded adapters tree: every leaf that any served
method may feed (`Method.leaves`), padded to the server's widths from the site
contract alone (`prompt_tuning.models.adapters.pad_row`: a row's unused leaves
hold their identity, a prompt's length and a prefix's mask mark what it
fills). So rows of every served method and length share one batch and one
program: the model takes each leaf per row ([L, B, ...]), masked positions get
exactly zero attention weight, and a scale of one or an addition of zero
changes no number. The slots keep only the decoder leaves a step reads: the
cross-attention leaves applied before the cache are in the slot's cache.

Compiled programs (all at start-up, `warm_up`): admit for each (rows in
`admit_buckets`, input length in `input_buckets`); a step program for each
number of rows in `step_buckets` and for `slots` (each for any number of steps
up to `max_steps_per_call`); score for each
(rows in `score_buckets`, input length in `input_buckets`); beam search for
each (beam size in `beam_sizes`, rows in `beam_buckets`, input length in
`input_buckets`). Requests are padded up to these shapes, never compiled for.

No method is named here: a library entry becomes a row through its method's
`entry` (`prompt_tuning.methods`) and the contract, so a new method is served
once its module declares its leaves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import decoding, methods, partitioning
from prompt_tuning.methods.base import Limits, method_class
from prompt_tuning.models import adapters as sites
from prompt_tuning.models.adapters import Adapters
from prompt_tuning.models.configs import T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.serve.store import PromptEntry

Array = jax.Array
PyTree = Any


EXCLUDED_LOGIT = -1e9  # an id outside a row's softmax (prompt_tuning.trainer's value: exp(-1e9 - max) is 0)
# The setting that gives each padded axis of the site contract (`adapters.PADDED_AXES`) its width.
WIDTH_SETTINGS = {"prompt": "max_prompt_length", "prefix": "max_prefix_length", "rank": "max_rank"}


class EngineError(RuntimeError):
  """A request the model could not compute (e.g. non-finite outputs); fails that request (or batch) only."""


@dataclasses.dataclass(frozen=True)
class EngineShapes:
  """The shapes the server compiles for (requests are padded up to them).

  Attributes:
    slots: rows decoded together (continuous batching).
    input_buckets: encoder input lengths (tokens, EOS included), ascending; the last is the maximum input.
    max_prompt_length: width of the prompt table.
    max_prefix_length: width of the prefix table (0: the server takes no prefixes).
    max_rank: width of the low-rank table (LoRA's rank r; 0: the server takes no low-rank deltas).
    max_decode_length: longest output (the self-attention cache length).
    max_steps_per_call: decoder steps one call of `Engine.step` may run before the batcher looks at its queue
      again; a request arriving meanwhile waits for the call to end. The batcher runs one step after each
      admission and doubles the count while no request arrives, up to this; 1: one step per call.
    admit_buckets: rows encoded at once when requests join.
    step_buckets: rows a decoder step computes: the running slots, padded up to the smallest bucket that holds
      them (`slots` is always the last), so a step's cost follows the requests running rather than the slots.
      Their per-slot state is gathered once per call and written back; above a quarter of the slots the cache is
      not (each step writes and attends to the rows' own cache rows in place, so only attention runs over every
      slot), at most a quarter it is too (`Engine._step_fn` has the measurements). Each bucket is one
      more compiled step program; () steps every slot always. None (the default): the powers of two from 4 and
      one and a half times those from 16 (24, 48, ...), below the slots (32 slots: 4, 8, 16, 24). On a 2-core
      CPU, 32 slots of the demo model, one step per call: 4 running cost 2.7 ms (gathered), 16 4.4 and 24 5.1
      (in place), against 6.0-6.6 over every slot (8 steps per call: 1.6, 3.4, 3.9 against 4.7-5.2).
    score_buckets: rows (input x prompt x candidate) scored at once.
    max_target_length: longest scored candidate (tokens, EOS included).
    beam_sizes: beam widths served.
    beam_buckets: rows decoded at once by beam search.
    beam_alpha: the length-penalty exponent of beam search.
    methods: the tuning methods served (names of `prompt_tuning.methods`); each adds its leaves to every row
      and program (per-layer prompts: [encoder layers, max_prompt_length, D] per row, twice), so serve only
      those the library needs. Uploads of other methods get a 400 naming the setting. A method with a padded
      axis needs its width (above) >= 1, and a width > 0 needs a method that reads it (the prompt table is
      always there: it is part of the encoder length).
  """

  slots: int = 16
  input_buckets: tuple[int, ...] = (32, 64)
  max_prompt_length: int = 32
  max_prefix_length: int = 16
  max_rank: int = 0
  max_decode_length: int = 32
  max_steps_per_call: int = 8
  admit_buckets: tuple[int, ...] = (1, 4, 16)
  step_buckets: tuple[int, ...] | None = None
  score_buckets: tuple[int, ...] = (8, 32)
  max_target_length: int = 8
  beam_sizes: tuple[int, ...] = (4,)
  beam_buckets: tuple[int, ...] = (1, 4)
  beam_alpha: float = 0.6
  methods: tuple[str, ...] = ("prompt", "prefix", "ia3", "per_layer_prompt")

  def __post_init__(self):
    if self.step_buckets is None:
      sizes = {2**i for i in range(2, 16)} | {3 * 2**i for i in range(3, 15)}  # 4, 8, 16, 32, ...; 24, 48, ...
      object.__setattr__(self, "step_buckets", tuple(sorted(b for b in sizes if b < self.slots)))
    for name in ("input_buckets", "admit_buckets", "step_buckets", "score_buckets", "beam_sizes", "beam_buckets"):
      value = tuple(int(v) for v in getattr(self, name))
      object.__setattr__(self, name, value)
      if name == "step_buckets" and not value:
        continue
      if not value or list(value) != sorted(set(value)) or value[0] < 1:
        raise ValueError(f"EngineShapes.{name}={value}: give ascending positive sizes.")
    if self.admit_buckets[-1] > self.slots:
      raise ValueError(f"admit_buckets {self.admit_buckets} exceed slots {self.slots}.")
    if self.step_buckets and self.step_buckets[-1] > self.slots:
      raise ValueError(f"step_buckets {self.step_buckets} exceed slots {self.slots}: give sizes below it (or ()).")
    if min(self.max_prompt_length, self.max_decode_length, self.max_target_length, self.max_steps_per_call) < 1:
      raise ValueError("max_prompt_length, max_decode_length, max_target_length and max_steps_per_call must be >= 1.")
    object.__setattr__(self, "methods", tuple(self.methods))
    known = methods.registered()
    unknown = set(self.methods) - set(known)
    if unknown:
      raise ValueError(f"EngineShapes.methods has {sorted(unknown)}; the server takes any of {sorted(known)}.")
    for name in self.methods:
      if known[name].unserved_reason():
        raise ValueError(f"EngineShapes.methods names {name!r}: {known[name].unserved_reason()}")
    used = sites.padded_axes(pair for name in self.methods for pair in known[name].leaves)
    for axis, setting in WIDTH_SETTINGS.items():
      width = getattr(self, setting)
      if axis in used and width < 1:
        raise ValueError(
          f"EngineShapes.methods={self.methods} serve vectors with a {axis} axis; give it a width ({setting} >= 1)."
        )
      if axis not in used and width > 0 and axis != "prompt":
        raise ValueError(
          f"EngineShapes.{setting}={width} but no method in EngineShapes.methods={self.methods} has a {axis} "
          f"axis: set {setting}=0, or serve a method that has one."
        )

  @property
  def step_sizes(self) -> tuple[int, ...]:
    """The rows of every step program: the step buckets below `slots`, then `slots`."""
    return tuple(b for b in self.step_buckets if b < self.slots) + (self.slots,)

  @property
  def max_input_length(self) -> int:
    return self.input_buckets[-1]

  @property
  def encoder_length(self) -> int:
    return self.max_prompt_length + self.max_input_length

  @property
  def widths(self) -> dict[str, int]:
    """The width of every padded axis of the site contract."""
    return {axis: getattr(self, setting) for axis, setting in WIDTH_SETTINGS.items()}


def bucket(size: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= size."""
  for b in buckets:
    if b >= size:
      return b
  raise ValueError(f"{size} exceeds the largest bucket {buckets[-1]}.")


def pad_rows(rows: np.ndarray, length: int) -> np.ndarray:
  """int rows of any lengths (a list of arrays) -> [n, length], 0-padded."""
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    out[i, : len(row)] = row
  return out


class Engine:
  """The frozen backbone on a mesh and the programs the batcher runs."""

  def __init__(self, config: T5Config, params: PyTree, mesh, shapes: EngineShapes):
    if "encoder" not in config.stacks:
      raise ValueError(
        "prompt-tuning serve runs encoder-decoder backbones; this one is decoder-only (serve it with "
        "prompt_tuning.decoding.generate(decoder_prompt_tokens=...) for now)."
      )
    self.config, self.params, self.mesh, self.shapes = config, params, mesh, shapes
    self.model = T5(config)
    self.replicated = partitioning.replicated(mesh)
    # Every leaf any served method feeds, at every site of this model: the layout of every row.
    leaves = (pair for name in shapes.methods for pair in method_class(name).leaves)
    self.served = sites.paths(leaves, config)
    self._empty = self._put(self._padded_row(None))
    self._admit = jax.jit(self._admit_fn, donate_argnums=(1,))
    self._step = jax.jit(self._step_fn, donate_argnums=(1,))
    self._score = jax.jit(self._score_fn)
    self._beam = jax.jit(self._beam_fn, static_argnames=("settings",))

  # ---------------------------------------------------------------------------
  # Rows: one request's vectors, padded to the tables' widths.

  def limits(self) -> Limits:
    settings = {axis: f"--gin.EngineShapes.{setting}" for axis, setting in WIDTH_SETTINGS.items()}
    return Limits(self.config, self.shapes.widths, self.shapes.methods, settings)

  def _put(self, tree: PyTree) -> PyTree:
    return jax.device_put(tree, self.replicated)

  def _padded_row(self, entry: PromptEntry | None) -> Adapters:
    """Host arrays of one row in the adapters layout (`prompt_tuning.models.adapters`), no batch axis: every
    served leaf, the entry's where its method feeds them (`Method.entry`), the identity elsewhere."""
    row = {} if entry is None else method_class(entry.method).entry(entry.arrays)
    return sites.pad_row(row, self.served, self.config, self.shapes.widths)

  def row_vectors(self, entry: PromptEntry | None) -> PyTree:
    """One request's vectors on device (what the library's DeviceCache holds); None: the frozen model."""
    return self._empty if entry is None else self._put(self._padded_row(entry))

  def _stack(self, rows: Sequence[PyTree], size: int) -> PyTree:
    """Rows (padded up to `size` with empty rows) -> every leaf with a leading row axis [B, ...]."""
    rows = list(rows) + [self._empty] * (size - len(rows))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *rows)

  # ---------------------------------------------------------------------------
  # How the vectors reach the backbone: its `adapters=` pytree, one set of vectors per row.

  def _model_kwargs(self, vectors: PyTree) -> dict[str, Any]:
    """Row-first leaves -> the model's per-row layout (input [B, ...]; per-layer sites [L, B, ...])."""
    return {"adapters": sites.per_row_layout(vectors)}

  @staticmethod
  def _step_leaves(vectors: PyTree) -> PyTree:
    """The decoder leaves a slot keeps for its steps (cross-attention's cached ones are in its cache)."""
    return sites.without_cached_cross_attention(vectors).get("decoder", {})

  # ---------------------------------------------------------------------------
  # Continuous batching: the slot state, admission and the step.

  def init_state(self) -> PyTree:
    """Empty slots: cache, encoder mask, prefixes and per-slot decoding settings."""
    shapes, cfg = self.shapes, self.config
    slots = shapes.slots
    encoded = jnp.zeros((slots, shapes.encoder_length, cfg.emb_dim), cfg.activation_dtype)
    mask = jnp.zeros((slots, shapes.encoder_length), bool)
    _, variables = self.model.apply(
      {"params": self.params}, encoded, mask, slots, shapes.max_decode_length, method=T5.init_cache, mutable=["cache"]
    )
    empty = self._stack([], slots)
    state = {
      "cache": variables["cache"],
      "encoder_mask": mask,
      "decoder": self._step_leaves(empty),  # each slot's decoder adapters, slot axis first
      "position": jnp.zeros(slots, jnp.int32),
      "token": jnp.zeros(slots, jnp.int32),
      "active": jnp.zeros(slots, bool),
      "max_length": jnp.ones(slots, jnp.int32),
      "temperature": jnp.zeros(slots, jnp.float32),
      "top_k": jnp.zeros(slots, jnp.int32),
      "top_p": jnp.ones(slots, jnp.float32),
    }
    return jax.jit(lambda s: s, out_shardings=self.replicated)(state)

  def _admit_fn(self, params, state, slot_ids, tokens, vectors, settings):
    """Encodes new rows once and writes them into slots `slot_ids` [n] (ids >= slots are dropped: padding rows)."""
    kwargs = self._model_kwargs(vectors)
    encoded, mask = self.model.apply({"params": params}, tokens, method=T5.encode, **kwargs)  # [n, P + T, D]
    # The cross-attention keys and values are projected from the P + T positions only, then padded with zeros to
    # the slots' encoder length: what projecting the zero-padded outputs gave (the projections and the adapters
    # applied there, IA3's scales and LoRA's delta, are linear with no bias), without projecting the padding
    # (the demo server's input bucket of 16: 16 of its 52 positions).
    pad = self.shapes.encoder_length - encoded.shape[1]
    _, variables = self.model.apply(
      {"params": params},
      encoded,
      mask,
      tokens.shape[0],
      self.shapes.max_decode_length,
      method=T5.init_cache,
      mutable=["cache"],
      **kwargs,
    )

    def put(old, new):
      return old.at[slot_ids].set(new.astype(old.dtype), mode="drop")

    def put_cache(path, old, new):
      if any(getattr(k, "key", "") == "encoder_decoder_attention" for k in path):  # [n, H, P + T, Dh]
        return put(old, jnp.pad(new, ((0, 0), (0, 0), (0, pad), (0, 0))))
      return old  # self-attention: stale keys beyond the new position are never visible

    state = dict(state)
    state["cache"] = jax.tree_util.tree_map_with_path(put_cache, state["cache"], variables["cache"])
    state["encoder_mask"] = put(state["encoder_mask"], jnp.pad(mask, ((0, 0), (0, pad))))
    state["decoder"] = jax.tree.map(put, state["decoder"], self._step_leaves(vectors))
    n = tokens.shape[0]
    state["position"] = put(state["position"], jnp.zeros(n, jnp.int32))
    state["token"] = put(state["token"], jnp.zeros(n, jnp.int32))
    state["active"] = put(state["active"], jnp.ones(n, bool))
    for name in ("max_length", "temperature", "top_k", "top_p"):
      state[name] = put(state[name], settings[name])
    return state

  def _one_step(self, params, state, rng, rows=None):
    """One batched decoder step, each row at its own position (T5.decode's per-row decode_position: each row
    writes its own self-attention cache slot and sees only its own earlier positions). rows: None, every slot;
    or int [k], the slots the state's rows are (its cache is every slot's: T5.decode's cache_rows)."""
    logits, mutated = self.model.apply(
      {"params": params, "cache": state["cache"]},
      None,
      state["encoder_mask"],
      state["token"][:, None],
      adapters=self._model_kwargs({"decoder": state["decoder"]})["adapters"],
      decode_position=state["position"],
      cache_rows=rows,
      method=T5.decode,
      mutable=["cache"],
    )
    logits, cache = logits[:, -1], mutated["cache"]
    logits = logits.astype(jnp.float32)  # [S, vocab]
    chosen = choose_tokens(logits, state["temperature"], state["top_k"], state["top_p"], rng)
    # log_softmax at the chosen ids only: the [S, vocab] log-probabilities are never written out.
    logp = jnp.take_along_axis(logits, chosen[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(logits, axis=-1)
    finite = jnp.all(jnp.isfinite(logits), axis=-1)
    state = dict(state, cache=cache, token=chosen, position=state["position"] + 1)
    done = state["active"] & ((chosen == 1) | (state["position"] >= state["max_length"]) | ~finite)
    state["active"] = state["active"] & ~done
    return state, {"token": chosen, "logp": logp, "done": done, "finite": finite}

  def _step_fn(self, params, state, rng, steps, stop_on_finish, rows=None):
    """Up to `steps` decoder steps; stops early when no slot is active, or (stop_on_finish) after a step that
    finished one. The rng is split once per step, as the host split it when each call ran one step. `rows` int
    [k]: the slots stepped (ids >= slots: padding rows, inactive): their rows of the per-slot state are gathered
    once before the steps and written back after them; None: every slot. With k at most a quarter of the slots
    their cache rows are gathered too (a copy once per call, then attention over k rows); with more, the cache
    stays whole and each step reads and writes the rows' own cache rows in place (`T5.decode`'s cache_rows:
    attention over every slot, no copy). On a 2-core CPU, 32 slots of the demo model: 4 running, gathered 2.7 ms a
    step at one step a call and 1.6 at 8, in place 3.1 and 2.6; 16 running, gathered 6.4 and 3.5, in place 4.4
    and 3.4."""
    full, cache_rows = state, None
    if rows is not None:
      if rows.shape[0] > self.shapes.slots // 4:
        cache_rows = rows
      moved = {k: v for k, v in full.items() if cache_rows is None or k != "cache"}
      state = dict(full, **jax.tree.map(lambda x: x.at[rows].get(mode="fill", fill_value=0), moved))
    width, most = state["active"].shape[0], self.shapes.max_steps_per_call
    out = {
      "token": jnp.zeros((most, width), jnp.int32),
      "logp": jnp.zeros((most, width), jnp.float32),
      "done": jnp.zeros((most, width), bool),
      "finite": jnp.ones((most, width), bool),
    }

    def more(carry):
      i, state, _, _, stop = carry
      return (i < steps) & jnp.any(state["active"]) & ~stop

    def one(carry):
      i, state, rng, out, _ = carry
      rng, sub = jax.random.split(rng)
      state, step = self._one_step(params, state, sub, cache_rows)
      out = {name: out[name].at[i].set(step[name]) for name in out}
      return i + 1, state, rng, out, stop_on_finish & jnp.any(step["done"])

    n, state, rng, out, _ = jax.lax.while_loop(more, one, (jnp.int32(0), state, rng, out, jnp.bool_(False)))
    if rows is not None:
      back = {k: state[k] for k in moved}
      state = dict(state, **jax.tree.map(lambda x, new: x.at[rows].set(new, mode="drop"), moved, back))
    return state, rng, dict(out, steps=n)

  def admit(self, state, slot_ids: Sequence[int], tokens: np.ndarray, rows: Sequence[PyTree], settings: dict):
    """Encodes up to a bucket of new requests into free slots. tokens: int [n, T] (T an input bucket)."""
    size = bucket(len(slot_ids), self.shapes.admit_buckets)
    ids = np.full(size, self.shapes.slots, np.int32)  # out of range: dropped
    ids[: len(slot_ids)] = slot_ids
    padded = np.zeros((size, tokens.shape[1]), np.int32)
    padded[: len(tokens)] = tokens
    per_row = {k: np.resize(np.asarray(v), size) for k, v in settings.items()}
    return self._admit(self.params, state, ids, padded, self._stack(rows, size), per_row)

  def step(self, state, rng, steps: int = 1, stop_on_finish: bool = False, running: Sequence[int] | None = None):
    """Up to `steps` (<= max_steps_per_call) positions for the running slots in one call: (state, the rng split
    once per step run, host dict of token/logp/done/finite [steps run, slots]). It stops early once no slot is
    active or, with stop_on_finish, after the first step that finishes a slot. `running`: the slots holding
    requests (None: all); only they are computed, padded up to a step bucket (`EngineShapes.step_buckets`), and
    the other slots' columns come back as finished and empty."""
    if not 1 <= steps <= self.shapes.max_steps_per_call:
      raise ValueError(f"steps={steps}: give 1..{self.shapes.max_steps_per_call} (EngineShapes.max_steps_per_call).")
    slots = self.shapes.slots
    running = list(range(slots)) if running is None else sorted(running)
    width = bucket(len(running), self.shapes.step_sizes)
    rows = None
    if width < slots:
      rows = np.full(width, slots, np.int32)  # out of range: padding rows, inactive, never written back
      rows[: len(running)] = running
    rng = self._put(rng)  # placed as the rng the program returns, so the next call finds the same program
    state, rng, out = self._step(self.params, state, rng, np.int32(steps), np.bool_(stop_on_finish), rows)
    out = jax.device_get(out)
    n = int(out.pop("steps"))
    if rows is None:
      return state, rng, {name: value[:n] for name, value in out.items()}
    fill = {"token": 0, "logp": 0.0, "done": True, "finite": True}
    full = {}
    for name, value in out.items():
      full[name] = np.full((n, slots), fill[name], value.dtype)
      full[name][:, running] = value[:n, : len(running)]
    return state, rng, full

  # ---------------------------------------------------------------------------
  # Whole-batch programs: scoring and beam search.

  def _teacher_forced(self, params, tokens, targets, vectors, allowed):
    """(log p(target | input) [n], finite [n]): each row's softmax over the ids `allowed` [n, vocab] marks;
    finite says whether every logit at the row's target positions is (NaN arising anywhere in its computation
    reaches them)."""
    decoder_inputs = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))  # shift right, start token 0
    logits = self.model.apply({"params": params}, tokens, decoder_inputs, targets, **self._model_kwargs(vectors))
    logits = logits.astype(jnp.float32)  # [n, L, vocab]
    real = targets > 0
    finite = jnp.all(jnp.isfinite(logits).all(axis=-1) | ~real, axis=-1)
    logits = jnp.where(allowed[:, None, :], logits, EXCLUDED_LOGIT)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(real, logp, 0.0), axis=-1), finite

  def _score_fn(self, params, tokens, targets, vectors, allowed):
    logp, finite = self._teacher_forced(params, tokens, targets, vectors, allowed)
    return jnp.where(finite, logp, jnp.nan)

  def score(
    self, tokens: np.ndarray, targets: np.ndarray, rows: Sequence[PyTree], allowed: np.ndarray | None = None
  ) -> np.ndarray:
    """log p(target | input, vectors) per row: tokens [n, T], targets [n, max_target_length] -> [n].

    allowed: bool [n, vocab], the ids each row's softmax normalizes over (class_label_softmax: the labels' tokens
    and EOS, as `prompt_tuning.trainer.restrict_logits`); None: the whole vocabulary. Rows the model could not
    compute come back non-finite (the caller fails their requests only).
    """
    n = len(rows)
    size = bucket(n, self.shapes.score_buckets)
    mask = np.ones((size, self.config.vocab_size), bool)
    if allowed is not None:
      mask[:n] = allowed
    logp = self._score(self.params, _pad_to(tokens, size), _pad_to(targets, size), self._stack(rows, size), mask)
    return np.asarray(jax.device_get(logp))[:n]

  def _beam_fn(self, params, tokens, vectors, rng, *, settings):
    """Beam search, then one teacher-forced pass over each row's best sequence: beam search routes NaN scores
    to its "impossible" value and returns tokens anyway, so the pass is what tells a row's computation went
    non-finite on the path it returned (rows whose scores come back NaN)."""
    out = decoding.generate(self.config, params, tokens, settings=settings, rng=rng, **self._model_kwargs(vectors))
    allowed = jnp.ones((tokens.shape[0], self.config.vocab_size), bool)
    _, finite = self._teacher_forced(params, tokens, out.tokens, vectors, allowed)
    return out.tokens, jnp.where(finite & jnp.isfinite(out.scores), out.scores, jnp.nan)

  def beam_settings(self, num_beams: int, max_decode_length: int) -> decoding.DecodingSettings:
    return decoding.DecodingSettings(
      method="beam", num_beams=num_beams, alpha=self.shapes.beam_alpha, max_decode_length=max_decode_length
    )

  def beam(self, tokens: np.ndarray, rows: Sequence[PyTree], num_beams: int) -> tuple[np.ndarray, np.ndarray]:
    """Beam search over a whole batch: (tokens [n, max_decode_length], scores [n]).

    Rows are independent: a row whose computation went non-finite (NaN arising from its vectors) comes back
    with a NaN score, and the caller fails that request only.
    """
    n = len(rows)
    size = bucket(n, self.shapes.beam_buckets)
    settings = self.beam_settings(num_beams, self.shapes.max_decode_length)
    out, scores = self._beam(
      self.params, _pad_to(tokens, size), self._stack(rows, size), jax.random.key(0), settings=settings
    )
    out, scores = jax.device_get((out, scores))
    return np.asarray(out)[:n], np.asarray(scores)[:n]

  def warm_up(self) -> list[str]:
    """Compiles every program the server runs (module docstring); returns their descriptions."""
    shapes, done = self.shapes, []
    state = self.init_state()
    for length in shapes.input_buckets:
      for n in shapes.admit_buckets:
        settings = {"max_length": [1], "temperature": [0.0], "top_k": [0], "top_p": [1.0]}
        state = self.admit(state, [shapes.slots] * n, np.ones((n, length), np.int32), [], settings)
        done.append(f"admit rows={n} input={length}")
      for n in shapes.score_buckets:
        targets = np.ones((n, shapes.max_target_length), np.int32)
        self.score(np.ones((n, length), np.int32), targets, [self._empty] * n)
        done.append(f"score rows={n} input={length}")
      for k in shapes.beam_sizes:
        for n in shapes.beam_buckets:
          self._beam(
            self.params,
            np.ones((n, length), np.int32),
            self._stack([], n),
            jax.random.key(0),
            settings=self.beam_settings(k, shapes.max_decode_length),
          )
          done.append(f"beam k={k} rows={n} input={length}")
    for width in shapes.step_sizes:
      state, _, _ = self.step(state, jax.random.key(0), running=range(width))
      done.append(f"step rows={width} steps<={shapes.max_steps_per_call}")
    return done


def _pad_to(x: np.ndarray, rows: int) -> np.ndarray:
  out = np.zeros((rows,) + x.shape[1:], x.dtype)
  out[: len(x)] = x
  return out


def choose_tokens(logits: Array, temperature: Array, top_k: Array, top_p: Array, rng: Array) -> Array:
  """Per-row greedy (temperature 0) or sampling with per-row temperature, top-k (0: off) and top-p (1: off).

  logits [S, V] float32; temperature, top_p float [S]; top_k int [S]. Returns int32 [S].
  """
  vocab = logits.shape[-1]
  greedy = decoding.argmax(logits)

  def sample() -> Array:
    scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
    ordered = jnp.sort(scaled, axis=-1)[:, ::-1]  # [S, V] descending
    kth = jnp.take_along_axis(ordered, jnp.clip(top_k - 1, 0, vocab - 1)[:, None], axis=-1)
    scaled = jnp.where((top_k[:, None] > 0) & (scaled < kth), decoding.NEG_INF, scaled)
    ordered = jnp.sort(scaled, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p[:, None]
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    scaled = jnp.where(scaled < threshold, decoding.NEG_INF, scaled)
    sampled = jax.random.categorical(rng, scaled, axis=-1)
    return jnp.where(temperature <= 0.0, greedy, sampled).astype(jnp.int32)

  # The two sorts over [S, V] cost several times a decoder step on CPU: only when some slot samples.
  return jax.lax.cond(jnp.any(temperature > 0.0), sample, lambda: greedy)
