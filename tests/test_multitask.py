"""Multi-task prompts: the reference implementation's (`MultiTaskPrompt`: add, concat, concat_features, project) and
MPT (`MultitaskPromptTuning`). Each example's task is read from the sentinel its input opens with and reaches the
methods unpacked and per packed segment (packed and unpacked give one loss); unknown tasks are refused naming the
known ones; a multi-task run trains on a task-index mixture and its per-task prompts, exported as plain prompts, are
served mixed in one batch, each row what its task gives alone; MPT matches PEFT's MultitaskPromptTuningConfig on
the same Hugging Face T5 both ways."""

import copy
import functools
import json

import jax
import jax.numpy as jnp
import jitted
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import inputs
from prompt_tuning.methods import MultiTaskPrompt, MultitaskPromptTuning
from prompt_tuning.methods import mpt as mpt_module
from prompt_tuning.methods.base import PromptError
from prompt_tuning.prompts import random_uniform

MIXTURE = "task_index_multitask_odd_even"
VOCAB_SIZE = 8192  # the demo vocabulary's 8,092 pieces and 100 sentinels: method_runs' backbone


@functools.cache
def _register() -> str:
  """Two tasks on the demo vocabulary whose inputs open with their sentinel (<extra_id_0>: odd?, <extra_id_1>:
  even?), inputs of varied length, and their mixture."""
  import method_runs
  import seqio
  import tensorflow as tf

  vocab = seqio.SentencePieceVocabulary(str(method_runs.DEMO_VOCAB), extra_ids=100)
  assert vocab.vocab_size == VOCAB_SIZE
  names = []
  for k, question in enumerate(("odd", "even")):

    def examples(split, shuffle_files, seed=None, k=k, question=question):
      del shuffle_files, seed
      numbers = range(k * 500 + (0 if split == "train" else 1000), k * 500 + (64 if split == "train" else 1016))
      words = [" ".join([method_runs.WORDS[i % 10]] * (1 + i % 4)) for i in numbers]
      answers = ["yes" if (i % 2 == (k == 0)) else "no" for i in numbers]
      texts = [f"<extra_id_{k}> is {w} number {i} {question}?" for w, i in zip(words, numbers)]
      return tf.data.Dataset.from_tensor_slices({"inputs": texts, "targets": answers})

    name = f"multitask_odd_even_{k}"
    seqio.TaskRegistry.add(
      name,
      seqio.FunctionDataSource(examples, splits=["train", "validation"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={f: seqio.Feature(vocab, add_eos=True) for f in ("inputs", "targets")},
      metric_fns=[],
    )
    names.append(name)
  seqio.MixtureRegistry.add(MIXTURE, [(n, 1.0) for n in names])
  return MIXTURE


def test_each_example_task_comes_from_its_sentinel_and_unknown_tasks_are_refused():
  s0, s1, s2 = VOCAB_SIZE - 1, VOCAB_SIZE - 2, VOCAB_SIZE - 3  # <extra_id_0>, <extra_id_1>, <extra_id_2>
  unpacked = {"encoder_input_tokens": np.array([[s1, 5, 1, 0], [s0, 7, 1, 0], [0, 0, 0, 0]])}  # a padding row
  np.testing.assert_array_equal(inputs.task_ids(unpacked, VOCAB_SIZE, 2), [1, 0, 0])
  # Packed: each segment's first token; P = 2 slots (-1) per example; 0 past the last segment.
  tokens = np.array([[s1, 5, 1, -1, -1, s0, 1, -1, -1, 0], [s0, 9, 9, 1, -1, -1, 0, 0, 0, 0]])
  segments = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]])
  packed = {"encoder_input_tokens": tokens, "encoder_segment_ids": segments}
  ids = inputs.task_ids(packed, VOCAB_SIZE, 2, prompt_slots=2)
  assert ids.shape == (2, inputs.segment_capacity(10, 2)) == (2, 3)
  np.testing.assert_array_equal(ids, [[1, 0, 0], [0, 0, 0]])
  for bad, named in ((s2, "<extra_id_2>"), (17, "token id 17")):
    unpacked["encoder_input_tokens"][1, 0] = bad
    with pytest.raises(ValueError, match=rf"opens with {named}, which names no task .* tasks 0 \.\. 1 .*task_index_"):
      inputs.task_ids(unpacked, VOCAB_SIZE, 2)


def test_the_reference_combinations_make_each_task_prompt():
  config = pt.get_config("t5_1_1_tiny", vocab_size=64)
  rng, d = jax.random.key(0), config.emb_dim
  backbone = {"token_embedder": {"embedding": jnp.ones((64, d))}}
  cases = {
    "add": (MultiTaskPrompt(3, 2), 3, lambda s, t, k: s + t[k]),
    "concat": (MultiTaskPrompt(3, 2, "concat", task_length=2), 5, lambda s, t, k: np.concatenate([s, t[k]])),
    "concat_features": (
      MultiTaskPrompt(3, 2, "concat_features", shared_features=d - 1),
      3,
      lambda s, t, k: np.concatenate([s, t[k]], axis=1),
    ),
    "project": (
      MultiTaskPrompt(3, 2, "project", shared_features=5),
      3,
      lambda s, t, k: s @ t["kernel"][k] + t["bias"][k],
    ),
  }
  for name, (method, length, formula) in cases.items():
    params = jax.device_get(method.init(rng, backbone, config))
    assert method.input_length == length and method.task_count == 2
    prompt = method.adapters(params, config, jnp.array([1, 0, 1]))["input"]["prompt"]
    assert prompt.shape == (3, length, d), name
    for row, k in enumerate((1, 0, 1)):
      np.testing.assert_allclose(prompt[row], formula(params["shared"], params["tasks"], k), rtol=1e-5, err_msg=name)
    folded = method.fold(params, config)
    np.testing.assert_array_equal(method.adapters(folded, config, jnp.array([1]))["input"]["prompt"][0], prompt[0])
    with pytest.raises(ValueError, match="needs each row's task: train and evaluate it on task_index_"):
      method.adapters(params, config)
  for bad, message in (
    (dict(combination="mean"), "use one of"),
    (dict(task_length=2), "task_length is not read by combination 'add'"),
    (dict(combination="concat_features"), "set shared_features or task_features"),
    (dict(num_tasks=0), "num_tasks must be a positive integer"),
  ):
    with pytest.raises(ValueError, match=message):
      MultiTaskPrompt(**{"length": 3, "num_tasks": 2, **bad})
  with pytest.raises(ValueError, match="add up to the embedding width"):
    MultiTaskPrompt(3, 2, "concat_features", shared_features=d, task_features=4).init(rng, backbone, config)


def test_mpt_factor_init_ones_starts_every_task_at_the_shared_prompt_and_normal_near_zero():
  config = pt.get_config("t5_1_1_tiny", vocab_size=64)
  backbone = {"token_embedder": {"embedding": jax.random.normal(jax.random.key(1), (64, config.emb_dim))}}
  tables = {}
  for init, ranks in (("normal", 1), ("ones", 1), ("ones", 3)):
    method = MultitaskPromptTuning(4, 2, ranks, random_uniform(), factor_init=init)
    params = jax.device_get(jax.jit(functools.partial(method.init, config=config))(jax.random.key(0), backbone))
    tables[init, ranks] = (np.asarray(method.task_table(params)), np.asarray(params["shared"]))
  for ranks in (1, 3):
    table, shared = tables["ones", ranks]
    np.testing.assert_allclose(table, np.broadcast_to(shared, table.shape), rtol=0.15, atol=1e-6)
    assert not np.array_equal(table[0], table[1])  # the noise tells the tasks and the rank components apart
  table, shared = tables["normal", 1]
  assert np.abs(table).max() < 1e-2 * np.abs(shared).max()  # PEFT's draw: u v^T ~ 0.02^2
  with pytest.raises(ValueError, match="factor_init must be one of"):
    MultitaskPromptTuning(4, 2, 1, random_uniform(), factor_init="zeros")


@pytest.mark.parametrize(
  "gin_file,bindings,expected",
  [
    (
      "prompts/mpt.gin",
      ["MPT_RANKS = 2"],
      {"length": 4, "num_tasks": 3, "num_ranks": 2, "factor_stddev": 0.02, "factor_init": "normal"},
    ),
    (
      "prompts/multitask_prompt.gin",
      ["MULTITASK_PROMPT_COMBINATION = 'concat'", "prompt_tuning.methods.MultiTaskPrompt.task_length = 2"],
      {"length": 4, "num_tasks": 3, "combination": "concat", "task_length": 2, "input_length": 6},
    ),
  ],
)
def test_each_method_gin_file_configures_it(gin_file, bindings, expected):
  import gin

  from prompt_tuning import gin_config

  gin_config.configure_gin([gin_file], ["PROMPT_LENGTH = 4", "NUM_TASKS = 3", *bindings], [])
  try:
    method = (MultitaskPromptTuning if gin_file.endswith("/mpt.gin") else MultiTaskPrompt)()
    assert gin.query_parameter("RunConfig.methods")[0].selector.endswith(type(method).__name__)
  finally:
    with gin.unlock_config():
      gin.clear_config()
  assert {k: getattr(method, k) for k in expected} == expected


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
  pytest.importorskip("seqio")
  import method_runs

  return method_runs.write_backbone(tmp_path_factory.mktemp("backbone"))


RUNS = {
  "mpt": MultitaskPromptTuning(3, num_tasks=2, num_ranks=2, initializer=random_uniform(0.5)),
  "multitask_prompt": MultiTaskPrompt(2, num_tasks=2, combination="concat", task_length=1),
}


def _mixes_tasks(batch) -> bool:
  """Whether a packed row holds examples of both tasks."""
  if "encoder_segment_ids" not in batch:
    return False
  segments = batch["encoder_segment_ids"].max(axis=1)
  return any(len(set(ids[:n])) == 2 for ids, n in zip(batch["task_ids"], segments))


@pytest.mark.parametrize("method,pack", [("mpt", False), ("multitask_prompt", True)])
def test_a_multitask_run_trains_on_a_task_index_mixture_packed_or_not(backbone, tmp_path, method, pack):
  """Steps on the mixture's batches (with their task ids; packed rows mix both tasks) move the method's vectors only
  and lower the loss; packed and unpacked evaluation of the trained MPT agree (every packed example got its own
  task's prompt: the two methods share that path, `task_prompts.select`); the export holds every task's prompt as a
  plain prompt file."""
  import method_runs

  from prompt_tuning import optim, partitioning, train

  cfg = method_runs.run_config(
    tmp_path / "run",
    backbone,
    "prompt",
    mixture_or_task_name=_register(),
    prompt=None,
    methods=(RUNS[method],),
    pack=pack,
    optimizer=optim.adafactor(learning_rate=0.3),
    task_feature_lengths={"inputs": 32, "targets": 8},  # room for several examples in a packed row
  )
  run = train.build(cfg)
  run.checkpoints.close()
  lengths, tuned = cfg.task_feature_lengths, run.tuned
  batches = inputs.train_batches(
    cfg.mixture_or_task_name, lengths, 8, pack=pack, prompt_slots=tuned.prompt_length, task_count=tuned.task_count
  )
  batch = next(batches)
  assert batch["task_ids"].shape == (
    (8, inputs.segment_capacity(32 + tuned.prompt_length, tuned.prompt_length)) if pack else (8,)
  )
  assert set(np.unique(batch["task_ids"])) == {0, 1}  # both tasks in one batch
  assert _mixes_tasks(batch) == pack
  before = jax.device_get(run.state.trainable)
  state, losses = run.state, []
  for step in range(3):
    state, metrics = run.train_step(state, run.frozen, partitioning.shard_batch(batch, run.mesh), jax.random.key(step))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0], losses
  trained = jax.device_get(state.trainable)
  assert set(trained) == {method}
  assert all(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(trained)))
  losses, mixed = {}, False
  for packed in (
    (False, True) if method == "mpt" else ()
  ):  # the validation split, one compiled shape each (no length buckets)
    totals = np.zeros(2)
    for batch in inputs.eval_batches(
      cfg.mixture_or_task_name, lengths, 8, pack=packed, prompt_slots=tuned.prompt_length, task_count=2
    ):
      mixed = mixed or _mixes_tasks(batch)
      metrics = jax.device_get(run.eval_step(trained, run.frozen, partitioning.shard_batch(batch, run.mesh)))
      totals += [float(metrics["loss"]) * float(metrics["num_tokens"]), float(metrics["num_tokens"])]
    losses[packed] = totals[0] / totals[1]
  if losses:
    assert mixed and losses[False] == pytest.approx(losses[True], rel=1e-4)
  train.export_methods(tuned, trained, tmp_path / "export")
  table = np.asarray(tuned.method(method).fold(trained[method], tuned.config)["task_prompts"])
  # eval and infer place the folded table as build_inference does: by the method's own logical axes.
  folded = {"t5": run.frozen["t5"], **tuned.fold(trained)}
  axes = tuned.logical_axes(jax.eval_shape(lambda: folded))
  partitioning.with_sharding(folded, partitioning.shardings_for(axes, run.mesh, partitioning.logical_rules()))
  for k in range(2):
    np.testing.assert_allclose(np.load(tmp_path / "export" / f"{method}_tasks" / f"task_{k}.npy"), table[k], rtol=1e-6)


def test_per_task_prompts_are_served_mixed_in_one_batch(backbone, tmp_path):
  """MPT's per-task prompts, exported as plain prompts, are library entries of method "prompt"; rows of both tasks
  share one scoring batch, each row scoring what the multi-task method gives its task."""
  from prompt_tuning import decoding, partitioning, trainer
  from prompt_tuning import eval as evaluation
  from prompt_tuning.run import Inference
  from prompt_tuning.serve.engine import Engine, EngineShapes
  from prompt_tuning.serve.store import PromptLibrary, read_entry_file
  from prompt_tuning.tuning import TunedT5

  config, frozen = pt.load_pretrained(str(backbone))
  method = RUNS["mpt"]
  params = jax.device_get(method.init(jax.random.key(1), frozen, config))
  params["task_cols"] = params["task_cols"] * 50  # as after training: tasks far apart
  written = method.export(params, config, tmp_path)
  assert tmp_path / "mpt_tasks" / "task_1.npy" in written
  shapes = EngineShapes(
    slots=2, input_buckets=(8,), max_prompt_length=4, max_prefix_length=0, max_rank=0, max_decode_length=4,
    admit_buckets=(1,), score_buckets=(4,), max_target_length=4, beam_buckets=(1,), methods=("prompt",),
  )  # fmt: skip
  engine = Engine(config, frozen, partitioning.make_mesh(), shapes)
  library = PromptLibrary(engine.limits(), max_library_bytes=1 << 20)
  for k in range(2):
    assert read_entry_file(tmp_path / "mpt_tasks" / f"task_{k}.npy")[0] == "prompt"
    library.put(f"task_{k}", *read_entry_file(tmp_path / "mpt_tasks" / f"task_{k}.npy"))
  with pytest.raises(PromptError, match="served through its per-task prompts: upload mpt_tasks/task_<K>.npy"):
    MultitaskPromptTuning.check({"task_prompts": np.zeros((2, 3, config.emb_dim), np.float32)}, engine.limits())
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, VOCAB_SIZE - 100, (4, 8)).astype(np.int32)
  order = [1, 0, 0, 1]  # the rows' tasks
  tokens[:, 0] = [VOCAB_SIZE - 1 - k for k in order]  # each row opens with its task's sentinel
  targets = rng.integers(3, 500, (4, 4)).astype(np.int32)
  targets[:, -1] = 1
  scores = engine.score(tokens, targets, [engine.row_vectors(library.get(f"task_{k}")) for k in order])
  # What the multi-task method gives each row's task, through eval's and infer's Predictor on the multi-task run
  # itself (each row's task read from its sentinel).
  tuned = TunedT5(config, (method,))
  score = functools.partial(trainer.score_step, forward=tuned.forward)
  run = Inference(tuned, engine.mesh, {"t5": frozen}, {"mpt": params}, None, score, None, 0, "test")
  predictor = evaluation.Predictor(run, decoding.DecodingSettings(), 4, vocab_size=VOCAB_SIZE)
  batch = {"encoder_input_tokens": tokens, "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0)))}
  by_task = predictor.score({**batch, "decoder_target_tokens": targets})
  np.testing.assert_allclose(scores, by_task, rtol=1e-4, atol=1e-4)
  # The tasks' prompts differ, and each row took its own: the same rows under one task's prompt score otherwise.
  one_task = engine.score(tokens, targets, [engine.row_vectors(library.get("task_0"))] * 4)
  assert not np.allclose(one_task[[0, 3]], scores[[0, 3]], atol=1e-3)
  np.testing.assert_allclose(one_task[[1, 2]], scores[[1, 2]], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def hf_t5(tmp_path_factory):
  pytest.importorskip("peft")
  from hf_models import hf_model, save

  model = hf_model("t5_1_1")
  config, params = pt.load_pretrained(save(model, tmp_path_factory.mktemp("hf_t5_1_1")))
  return model, config, params


def _peft_logits(wrapped, enc, targets, task_ids):
  """PEFT's seq2seq prompt models make the decoder's input from `labels` (given decoder_input_ids, they drop them)."""
  import torch

  with torch.no_grad():
    return wrapped(
      input_ids=torch.tensor(enc),
      attention_mask=torch.tensor(enc > 0).long(),
      labels=torch.tensor(targets),
      task_ids=torch.tensor(task_ids),
    ).logits.numpy()


def test_mpt_matches_peft_both_ways(hf_t5, tmp_path):
  """PEFT's MPT adapter read as ours gives PEFT's logits for each row's task, to 1e-5; ours exported loads in PEFT
  with our logits; one that also prompts the decoder is refused."""
  import peft
  import torch
  from hf_models import padded_batch, shift_right

  model, config, frozen = hf_t5
  peft_config = peft.MultitaskPromptTuningConfig(
    task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=3, num_tasks=3, num_ranks=2, num_transformer_submodules=1
  )
  wrapped = peft.get_peft_model(copy.deepcopy(model), peft_config).eval()
  encoder = wrapped.prompt_encoder["default"]
  with torch.no_grad():
    for tensor in (encoder.embedding.weight, encoder.prefix_task_cols, encoder.prefix_task_rows):
      tensor.normal_()
  wrapped.save_pretrained(tmp_path / "theirs")
  settings, params = mpt_module.read_peft(tmp_path / "theirs", config)
  assert (settings.length, settings.num_tasks, settings.num_ranks) == (3, 3, 2)
  rng = np.random.default_rng(0)
  enc, targets = padded_batch(rng, 3, 7, 100, [7, 4, 2]), padded_batch(rng, 3, 5, 100, [5, 5, 5])
  dec_in, task_ids = shift_right(targets), np.array([2, 0, 1])

  def ours(params):
    adapters = settings.adapters(params, config, jnp.asarray(task_ids))
    return np.asarray(jitted.apply(pt.T5(config), {"params": frozen}, enc, dec_in, targets, adapters=adapters))

  theirs = _peft_logits(wrapped, enc, targets, task_ids)
  np.testing.assert_allclose(ours(params), theirs, rtol=1e-5, atol=1e-5)
  # Ours, exported, in PEFT: the same logits (distinct parameters: the tasks' factors scaled).
  mine = {**params, "task_rows": params["task_rows"] * 0.5}
  settings.export_peft(mine, config, tmp_path / "ours", base_model_name_or_path="tiny-t5")
  loaded = peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "ours").eval()
  np.testing.assert_allclose(ours(mine), _peft_logits(loaded, enc, targets, task_ids), rtol=1e-5, atol=1e-5)
  # PEFT's seq2seq default (2 submodules) prepends P more rows to the decoder's input, which our T5 has no site for.
  adapter_config = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
  (tmp_path / "theirs" / "adapter_config.json").write_text(
    json.dumps({**adapter_config, "num_transformer_submodules": 2})
  )
  with pytest.raises(ValueError, match="num_transformer_submodules=1"):
    mpt_module.read_peft(tmp_path / "theirs", config)
  with pytest.raises(ValueError, match="MULTITASK_PROMPT_TUNING adapters for SEQ_2_SEQ_LM"):
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text('{"peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM"}')
    (lora / "adapter_model.safetensors").write_bytes(b"")
    mpt_module.read_peft(lora, config)
