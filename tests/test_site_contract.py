"""The site contract drives serving: a row of any method padded to the server's widths (identity on the leaves it
does not use) computes what the method computes alone, mixed batches equal each row alone, and a method declared
only by its module (here a test-only one) is checked, stored and served with no server edit."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import jitted
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import decoding, partitioning
from prompt_tuning.methods import IA3, PerLayerPrompt, PrefixSettings, Prompt
from prompt_tuning.methods.base import _REGISTRY, Method, PromptError, method_class, registered
from prompt_tuning.models import adapters as sites

WIDTHS = {"prompt": 5, "prefix": 4, "rank": 3}
SERVED = ("prompt", "prefix", "ia3", "per_layer_prompt")


@dataclasses.dataclass(frozen=True)
class ShiftedMLP(Method):
  """A test-only method: scales of the feed-forward activations of the decoder only, declared here alone."""

  name = "test_shifted_mlp"
  leaves = (("mlp", "scale"),)

  def init(self, rng, backbone, config):
    return {"decoder": {"mlp": {"scale": jnp.ones((config.num_decoder_layers, config.mlp_dim))}}}

  def adapters(self, params, config, task_ids=None):
    return params


def _uniform(rng, embedding, length):
  return jax.random.uniform(rng, (length, embedding.shape[1]), minval=-0.5, maxval=0.5)


def _moved(tree, seed):
  """The tree moved off its initialization (ones would hide a wrong scale), each leaf differently."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [x + 0.4 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _folded(method, config, frozen, seed):
  params = method.init(jax.random.key(seed), frozen, config)
  return method.fold(_moved(params, seed), config)


@pytest.fixture(scope="module")
def entries(tiny_decoder_model, tmp_path_factory):
  """{method name: (named arrays as the library reads them from the method's export, the method's own adapters)}."""
  from prompt_tuning.serve.store import read_entry_file

  config, frozen = tiny_decoder_model
  methods = {
    "prompt": Prompt(3, _uniform),
    "prefix": PrefixSettings(length=2, mlp_width=8),
    "ia3": IA3(),
    "per_layer_prompt": PerLayerPrompt(4, _uniform, mode="replace"),
    "test_shifted_mlp": ShiftedMLP(),
  }
  out = {}
  for i, (name, method) in enumerate(methods.items()):
    folded = _folded(method, config, frozen, i)
    folder = tmp_path_factory.mktemp(name)
    method.export(folded, config, folder)
    read, arrays = read_entry_file(folder if name != "prompt" else folder / "prompt.npy")
    assert read == name
    out[name] = (arrays, method.adapters(folded, config))
  return out


def _logits(config, params, adapters, batch):
  enc, dec, targets = batch
  return jitted.apply(pt.T5(config), {"params": params}, enc, dec, targets, adapters=adapters)


def _served(names, config):
  return sites.paths((pair for n in names for pair in method_class(n).leaves), config)


def test_the_contract_declares_every_leaf_the_model_reads():
  for sub, leaves in sites.SITE_LEAVES.items():
    for name, leaf in leaves.items():
      assert leaf.identity in (0.0, 1.0, sites.ABSENT, False, 0), (sub, name)
      if leaf.marks:
        assert leaf.marks in leaves and leaf.dtype in (np.bool_, np.int32)
  assert sites.leaf_of(("decoder", "cross_attention", "lora_value_a")).cached  # LoRA's values: before the cache
  assert not sites.leaf_of(("decoder", "cross_attention", "lora_query_a")).cached
  assert sites.leaf_of(("encoder", "self_attention", "lora_query_b")).padded_axis == 1  # [L, r, H*Dh]: rank
  assert {"prompt", "prefix", "ia3", "per_layer_prompt"} <= set(registered())


def test_a_row_padded_to_identity_computes_what_its_method_computes_alone(tiny_decoder_model, batch, entries):
  """Each method's library entry, padded with every leaf of every served method (the identity where it feeds
  none), gives the logits of the method's own adapters; the empty row gives the frozen model's."""
  config, frozen = tiny_decoder_model
  served = _served(SERVED + ("test_shifted_mlp",), config)
  rows = 3
  frozen_logits = _logits(config, frozen, None, batch)
  empty = sites.pad_row({}, served, config, WIDTHS)
  per_row = lambda row: sites.per_row_layout(jax.tree.map(lambda x: jnp.stack([x] * rows), row))  # noqa: E731
  np.testing.assert_allclose(_logits(config, frozen, per_row(empty), batch), frozen_logits, rtol=1e-5, atol=1e-5)
  for name, (arrays, alone) in entries.items():
    padded = sites.pad_row(method_class(name).entry(arrays), served, config, WIDTHS)
    expected = _logits(config, frozen, alone, batch)
    assert not np.allclose(expected, frozen_logits, atol=1e-3), name  # the vectors matter
    np.testing.assert_allclose(_logits(config, frozen, per_row(padded), batch), expected, rtol=1e-4, atol=1e-4)


def test_a_mixed_batch_equals_each_row_alone(tiny_decoder_model, batch, entries):
  config, frozen = tiny_decoder_model
  served = _served(SERVED + ("test_shifted_mlp",), config)
  names = ["prefix", "per_layer_prompt", "test_shifted_mlp"]  # the batch has 3 rows: one method each
  padded = [sites.pad_row(method_class(n).entry(entries[n][0]), served, config, WIDTHS) for n in names]
  mixed = _logits(config, frozen, sites.per_row_layout(jax.tree.map(lambda *x: jnp.stack(x), *padded)), batch)
  for i, name in enumerate(names):
    alone = _logits(config, frozen, entries[name][1], batch)
    np.testing.assert_allclose(mixed[i], alone[i], rtol=1e-4, atol=1e-4, err_msg=name)


def test_pad_row_refuses_what_the_server_does_not_take(tiny_decoder_model):
  config, _ = tiny_decoder_model
  served = _served(("prompt",), config)
  with pytest.raises(ValueError, match="not served here"):
    sites.pad_row({"decoder": {"mlp": {"scale": np.ones((2, 8))}}}, served, config, WIDTHS)
  with pytest.raises(ValueError, match="prompt at most 5"):
    sites.pad_row({"input": {"prompt": np.ones((6, config.emb_dim))}}, served, config, WIDTHS)


def test_a_method_declared_only_in_its_module_is_checked_and_served(tiny_decoder_model, entries):
  """The server's engine and library take the test-only method by name: uploads are checked by the contract,
  and its rows, in one batch with a prompt's and a prefix's, score what decoding.sequence_log_probs gives for
  each alone."""
  from prompt_tuning.serve.engine import Engine, EngineShapes
  from prompt_tuning.serve.store import PromptLibrary

  config, frozen = tiny_decoder_model
  served = ("prompt", "prefix", "test_shifted_mlp")
  shapes = EngineShapes(
    slots=2, input_buckets=(8,), max_prompt_length=5, max_prefix_length=4, max_decode_length=4,
    admit_buckets=(1,), score_buckets=(4,), max_target_length=5, beam_buckets=(1,), methods=served,
  )  # fmt: skip
  engine = Engine(config, frozen, partitioning.make_mesh(), shapes)
  library = PromptLibrary(engine.limits(), max_library_bytes=1 << 20)
  with pytest.raises(PromptError, match="test_shifted_mlp.*decoder/mlp/scale"):
    library.put("bad", "test_shifted_mlp", {"decoder/self_attention/key_scale": np.ones((2, 8))})
  with pytest.raises(PromptError, match=r"needs \[2, 32\]"):
    library.put("bad", "test_shifted_mlp", {"decoder/mlp/scale": np.ones((2, 31))})
  with pytest.raises(PromptError, match="not served here.*EngineShapes.methods"):
    library.put("ia3", "ia3", entries["ia3"][0])
  for name in served:
    library.put(name, name, entries[name][0])
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, 64, (4, 8)).astype(np.int32)
  targets = rng.integers(2, 64, (4, 5)).astype(np.int32)
  targets[:, -1] = 1
  order = ["test_shifted_mlp", "prompt", None, "prefix"]
  rows = [engine.row_vectors(None if n is None else library.get(n)) for n in order]
  scores = engine.score(tokens, targets, rows)
  for i, name in enumerate(order):
    adapters = None if name is None else entries[name][1]
    alone = decoding.sequence_log_probs(config, frozen, tokens[i : i + 1], targets[i : i + 1], adapters=adapters)
    np.testing.assert_allclose(scores[i], np.asarray(alone)[0], rtol=1e-4, atol=1e-4, err_msg=str(name))
  assert library.get("prefix").length == 2 and library.get("test_shifted_mlp").length == 0


def test_every_method_declares_its_interface():
  for name, cls in registered().items():
    assert cls.name == name and cls.leaves, name
    for method in ("check", "entry", "read_export", "read_file", "export_file"):
      assert callable(getattr(cls, method))
  assert PerLayerPrompt(2, _uniform).input_length == 2 and IA3().input_length == 0
  assert "test_shifted_mlp" in _REGISTRY


def test_the_prompt_methods_refuse_more_vectors_than_the_server_takes():
  """Prompt and per-layer prompt uploads longer than the server's prompt width name the setting to raise."""
  config = pt.get_config("t5_1_0_tiny")
  limits = pt.methods.Limits(config, {"prompt": 2}, ("prompt",), {"prompt": "--gin.EngineShapes.max_prompt_length"})
  with pytest.raises(PromptError, match=r"'prompt' has 3 vectors; .* at most 2 .*EngineShapes.max_prompt_length"):
    Prompt.check({"prompt": np.ones((3, config.emb_dim), np.float32)}, limits)
  layers = np.ones((config.num_encoder_layers, 3, config.emb_dim), np.float32)
  with pytest.raises(PromptError, match="per-layer prompt has 3 vectors; .* at most 2"):
    PerLayerPrompt.check({"replace": layers}, limits)


def test_the_model_says_which_stacks_attentions_and_lengths_it_has():
  """What methods, the planner and the server ask of the model instead of its decoder_only flag."""
  enc_dec, dec = pt.get_config("t5_1_0_tiny"), pt.get_config("decoder_only_tiny")
  assert enc_dec.stacks == ("encoder", "decoder") and dec.stacks == ("decoder",)
  assert enc_dec.attentions("decoder") == ("self_attention", "cross_attention") and dec.attentions("encoder") == ()
  assert dec.attentions("decoder") == ("self_attention",) and dec.depth("encoder") == 0
  assert enc_dec.sequence_lengths(8, 4, prompt=3) == (11, 4) and dec.sequence_lengths(8, 4, prompt=3) == (0, 15)
  assert enc_dec.takes_packed_rows and not dec.takes_packed_rows
  assert [p[:2] for p in sites.paths(IA3.leaves, dec)] == [("decoder", "self_attention")] * 2 + [("decoder", "mlp")]
  assert len(sites.paths(IA3.leaves)) == len(sites.paths(IA3.leaves, enc_dec)) == 8  # None: any model's paths
