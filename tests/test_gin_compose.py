"""Gin files compose in any order; a setting that nothing reads is an error; the reference's names are read or refused.

gin/defaults.gin (parsed first by the command line) holds every macro's default, so runs/ files never reset what
models/, models/sizes/, prompts/, a config or the command line set. The reference implementation's order (models,
prompts, sizes, then runs) and ours (runs first) must give the same configuration, macro for macro and binding for
binding, and the same operative configuration once RunConfig and the step count are built.
"""

import re
import sys
from pathlib import Path

import gin
import pytest

from prompt_tuning import gin_config, reference, train
from prompt_tuning.data import class_labels as class_labels_lib

ROOT = Path(__file__).resolve().parents[1]
GIN = ROOT / "gin"
TINY = ["models/t5_1_1.gin", "models/sizes/tiny.gin"]


@pytest.fixture(autouse=True)
def fresh_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _macros(text: str) -> tuple[set[str], set[str]]:
  """(assigned, read) macro names of a gin file's text, comments left out."""
  text = re.sub(r"#.*", "", text)
  assigned = set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", text, re.MULTILINE))
  read = set(re.findall(r"%([A-Z][A-Z0-9_]*)", text))
  return assigned, read


def test_every_macro_a_gin_file_reads_has_its_default_in_defaults_gin():
  defaults, _ = _macros((GIN / "defaults.gin").read_text())
  provided = {"FAMILY", "SIZE"}  # what models/ and models/sizes/ files are for
  for path in GIN.rglob("*.gin"):
    _, read = _macros(path.read_text())
    assert read <= defaults | provided, f"{path.relative_to(GIN)} reads {sorted(read - defaults - provided)}"


def test_runs_files_assign_no_macro():
  for path in (GIN / "runs").glob("*.gin"):
    assigned, _ = _macros(path.read_text())
    allowed = {"PROMPT_LENGTH", "TRAINABLE_PATTERN"} if path.name == "model_finetune.gin" else set()
    assert assigned <= allowed, f"runs/{path.name} assigns {sorted(assigned - allowed)}"


def _configuration(files, bindings=()):
  gin.clear_config()
  gin_config.configure_gin(list(files), list(bindings), [], check_unread=True)
  macros = {name: gin.query_parameter(f"%{name}") for name in gin_config.assigned_macros()}
  return gin.config_str(), {k: repr(v) for k, v in macros.items()}


XXL_ORDERS = {
  "ours": ["runs/prompt_finetune.gin", "models/t5_1_1_lm100k.gin", "models/sizes/xxl.gin", "prompts/class_labels.gin"],
  "reference": [
    "models/t5_1_1_lm100k.gin",
    "prompts/class_labels.gin",
    "models/sizes/xxl.gin",
    "runs/prompt_finetune.gin",
  ],
  "t5x": ["models/t5_1_1_lm100k.gin", "models/sizes/xxl.gin", "runs/prompt_finetune.gin", "prompts/class_labels.gin"],
}
REQUIRED = ["MODEL_DIR = '/tmp/run'", "INITIAL_CHECKPOINT_PATH = '/ckpt'", "MIXTURE_OR_TASK_NAME = 'x'"]


def test_reference_order_and_ours_give_the_same_configuration():
  bindings = [*REQUIRED, "TASK_FEATURE_LENGTHS = {'inputs': 512, 'targets': 16}", "PROMPT_LENGTH = 20"]
  configs = {name: _configuration(files, bindings) for name, files in XXL_ORDERS.items()}
  assert configs["reference"] == configs["ours"] == configs["t5x"]
  _, macros = configs["reference"]
  assert macros["PROMPT_LENGTH"] == "20" and macros["SIZE"] == "'xxl'" and macros["FAMILY"] == "'t5_1_1_lm100k'"


@pytest.mark.parametrize(
  "method_file", ["prompts/mpt.gin", "prompts/multitask_prompt.gin", "prompts/per_layer_prompt.gin"]
)
def test_a_method_that_replaces_the_prompt_composes_with_runs_in_either_order(method_file):
  """The method file moves the prompt to its own method whether runs/ comes before or after it (it sets the
  PROMPT_METHOD macro, which runs/run_config.gin reads, instead of binding RunConfig.prompt beside runs/'s)."""
  bindings = [*REQUIRED, "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 4}", "NUM_TASKS = 2"]
  for files in (["test/prompt_tiny.gin", method_file], [method_file, "test/prompt_tiny.gin"]):
    gin.clear_config()
    gin_config.configure_gin(files, bindings, [])
    cfg = train.RunConfig()
    assert cfg.prompt is None, files
    assert len(cfg.methods) == 1 and type(cfg.methods[0]).__name__ != "Prompt", files
  gin.clear_config()


@pytest.mark.parametrize("command", ["runs/prompt_eval.gin", "runs/prompt_infer.gin"])
def test_a_runs_file_after_a_config_resets_nothing(command):
  """The README's `--gin_file=prompt_xxl.gin --gin_file=runs/prompt_eval.gin`: the issue's MODEL_SIZE=None,
  NUM_PARTITIONS=1, MAX_ENCODER_LENGTH=None and a required TASK_FEATURE_LENGTHS came from this order."""
  after = _configuration(["prompt_xxl.gin", command], REQUIRED)
  before = _configuration([command, "prompt_xxl.gin"], REQUIRED)
  assert after == before
  gin.clear_config()
  gin_config.configure_gin(["prompt_xxl.gin", command], REQUIRED, [], check_unread=True)
  assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == {"inputs": 512, "targets": 16}
  assert gin.query_parameter("%MAX_ENCODER_LENGTH") == 612
  assert gin.query_parameter("%NUM_PARTITIONS").selector == "gin.macro"  # %MODEL_PARALLEL, not 1
  assert gin.query_parameter("%MODEL_PARALLEL") == 8
  assert gin.query_parameter("RunConfig.model_size").scoped_selector == "MODEL_SIZE/gin.macro"


def test_operative_configs_are_equal_across_orders(reference_dir):
  """The full operative config (what RunConfig and train's step count really read) is the same in both orders."""
  task = _tiny_task(reference_dir)
  bindings = [
    "MODEL_DIR = '/tmp/run'",
    f"INITIAL_CHECKPOINT_PATH = '{reference_dir / 't5x_t5_1_1_tiny' / 'checkpoint_3'}'",
    f"MIXTURE_OR_TASK_NAME = '{task}'",
    "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 4}",
    f"VOCABULARY_PATH = '{reference_dir / 't5_spm_32000.model'}'",
    "CLASS_LABELS = ['no', 'yes']",
    "PROMPT_LENGTH = 3",
  ]
  operative = []
  for files in (
    ["runs/prompt_finetune.gin", *TINY, "prompts/class_labels.gin"],
    ["models/t5_1_1.gin", "prompts/class_labels.gin", "models/sizes/tiny.gin", "runs/prompt_finetune.gin"],
  ):
    gin.clear_config()
    gin_config.configure_gin(files, bindings, [], check_unread=True)
    cfg = train.RunConfig()
    assert cfg.model_size == "t5_1_1_tiny" and cfg.prompt.length == 3
    assert gin.get_bindings("train")["num_train_steps"] is not None
    assert reference.train_steps() == 30000  # called as train's binding calls it: with its gin bindings
    operative.append(gin.operative_config_str())
  assert operative[0] == operative[1]
  assert "RunConfig.model_size = 't5_1_1_tiny'" in operative[0] or "t5_1_1_tiny" in operative[0]


def _tiny_task(reference_dir) -> str:
  sys.path.insert(0, str(Path(__file__).parent))
  try:
    import tiny_task
  finally:
    sys.path.pop(0)
  return tiny_task.register()


def test_command_line_wins_over_every_file():
  gin.clear_config()
  flags = [*REQUIRED, "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 2}", "NUM_PARTITIONS = 2", "SIZE = 'base'"]
  gin_config.configure_gin(["prompt_xxl.gin", "runs/prompt_eval.gin"], flags, [], check_unread=True)
  assert gin.query_parameter("%NUM_PARTITIONS") == 2 and gin.query_parameter("%SIZE") == "base"
  assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == {"inputs": 8, "targets": 2}


def test_a_command_in_the_same_process_starts_from_its_own_flags_only():
  """A notebook running two configs in one kernel: the second command sees none of the first one's bindings (macros
  are reset by defaults.gin anyway; a configurable's binding that the second config does not make would stay)."""
  import argparse

  parser = argparse.ArgumentParser()
  gin_config.add_gin_flags(parser)
  leaky = "prompt_tuning.prompts.sampled_vocab.num_common"
  first = ["--gin_file=prompt_xxl.gin", *(f"--gin.{b.replace(' = ', '=')}" for b in REQUIRED), f"--gin.{leaky}=12"]
  bindings, rest = gin_config.split_gin_flags(first)
  gin_config.configure_from_flags(parser.parse_args(rest), bindings, check_unread=False)
  assert gin.query_parameter(leaky) == 12
  bindings, rest = gin_config.split_gin_flags(["--gin_file=prompt_xxl.gin"])
  gin_config.configure_from_flags(parser.parse_args(rest), bindings, check_unread=False)
  with pytest.raises(ValueError, match="num_common|has no bound parameters"):
    gin.query_parameter(leaky)


@pytest.mark.parametrize("command", ["runs/prompt_finetune.gin", "runs/prompt_eval.gin", "runs/prompt_infer.gin"])
def test_prompt_combination_reaches_train_eval_and_infer(command):
  """PROMPT_COMBINATION from the command line is the mode the tuned model joins the prompt with, in every entry
  point's run config; an unknown mode is refused naming the known ones."""
  from prompt_tuning import run, validation

  bindings = [*REQUIRED, "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 2}", "PROMPT_COMBINATION = 'suffix'"]
  gin_config.configure_gin(["test/prompt_tiny.gin", command], bindings, [], check_unread=True)
  cfg = run.RunConfig()
  assert cfg.prompt_combination == "suffix"
  assert run.tuned_model(cfg, train.plan(cfg)["config"]).prompt_combination == "suffix"
  gin.clear_config()
  gin_config.configure_gin(["test/prompt_tiny.gin", command], [*bindings[:-1], "PROMPT_COMBINATION = 'infix'"], [])
  with pytest.raises((ValueError, validation.SettingError), match="Unknown prompt combination 'infix'; use one of"):
    run.RunConfig()


@pytest.mark.parametrize(
  ("flag", "message"),
  [
    ("BATCH_SIZ = 4", "BATCH_SIZ is set but read by nothing in this configuration; did you mean BATCH_SIZE?"),
    ("EVAL_SPLIT = 'test'", "EVAL_SPLIT is set but read by nothing"),  # read by runs/prompt_eval.gin, not train
    ("EVAL_OUTPUT_DIR = '/tmp/x'", "EVAL_OUTPUT_DIR (a t5x / reference setting) is not read here; use MODEL_DIR"),
    ("NUM_HEADS = 64", "NUM_HEADS (a t5x / reference setting) is not read here; use MODEL_SIZE"),
    ("PROMPT_FILE = '/tmp/p.npy'", "PROMPT_FILE is set but read by nothing"),  # no prompts/from_file.gin
  ],
)
def test_a_macro_that_nothing_reads_is_an_error_naming_what_to_set(flag, message):
  with pytest.raises(gin_config.UnreadSettingError) as error:
    gin_config.configure_gin(["test/prompt_tiny.gin"], [*REQUIRED, flag], [], check_unread=True)
  assert message in str(error.value)


def test_class_labels_is_read_only_where_a_file_uses_it():
  with pytest.raises(gin_config.UnreadSettingError, match="CLASS_LABELS is set but read by nothing"):
    gin_config.configure_gin(["test/prompt_tiny.gin"], [*REQUIRED, "CLASS_LABELS = ['a', 'b']"], [], check_unread=True)
  gin.clear_config()
  flags = [*REQUIRED, "CLASS_LABELS = ['a', 'b']"]
  gin_config.configure_gin(["test/prompt_tiny.gin", "prompts/class_labels.gin"], flags, [], check_unread=True)


def test_reference_aliases_are_read_through_ours():
  flags = [
    *REQUIRED,
    "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 4}",
    "RANDOM_SEED = 7",
    "EVAL_PERIOD = 5",
    "SHUFFLE_TRAIN_EXAMPLES = False",
    "TRAIN_STEPS_RELATIVE = 9",
  ]
  gin_config.configure_gin(["runs/prompt_finetune.gin", *TINY, "prompts/random.gin"], flags, [], check_unread=True)
  cfg = train.RunConfig()
  assert cfg.seed == 7 and cfg.shuffle is False
  assert gin.query_parameter("train.eval_every").scoped_selector == "EVAL_EVERY/gin.macro"
  assert gin.query_parameter("%EVAL_PERIOD") == 5
  assert reference.train_steps() == 9  # with train.num_train_steps' bindings: TRAIN_STEPS_RELATIVE wins
  # A config that sets our name (test/prompt_tiny.gin: EVAL_EVERY = 0) leaves t5x's unread: an error, not a no-op.
  gin.clear_config()
  with pytest.raises(gin_config.UnreadSettingError, match="EVAL_PERIOD is set but read by nothing"):
    gin_config.configure_gin(["test/prompt_tiny.gin"], [*REQUIRED, "EVAL_PERIOD = 5"], [], check_unread=True)


@pytest.mark.parametrize(
  "old_style",
  [
    # A user's copy of configs/test/prefix_tiny.gin from before the rename: the library's new reference, old binding.
    "include 'test/prefix_tiny.gin'\nprompt_tuning.prefixes.PrefixSettings.mlp_width = 6\n",
    # A whole file in the old names.
    "include 'test/prompt_tiny.gin'\nPROMPT_LENGTH = 0\nRunConfig.prefix = @prompt_tuning.prefixes.PrefixSettings()\n"
    "prompt_tuning.prefixes.PrefixSettings.length = %PREFIX_LENGTH\n"
    "prompt_tuning.prefixes.PrefixSettings.mlp_width = 6\n",
  ],
)
def test_the_prefix_methods_old_gin_name_is_read_with_a_deprecation_warning(tmp_path, caplog, old_style):
  """gin files name the prefix method prompt_tuning.methods.PrefixSettings, like the other methods; a file in the old
  name, prompt_tuning.prefixes.PrefixSettings, still configures the same method, and the log names the new name."""
  from prompt_tuning import methods, run

  config = tmp_path / "old_prefix.gin"
  config.write_text(old_style)
  with caplog.at_level("WARNING"):
    gin_config.configure_gin([str(config)], [*REQUIRED, "PREFIX_LENGTH = 3"], [], check_unread=True)
    prefix = run.RunConfig().prefix
  assert type(prefix) is methods.PrefixSettings and (prefix.length, prefix.mlp_width) == (3, 6)
  warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
  assert warnings and all("prompt_tuning.methods.PrefixSettings" in w for w in warnings), caplog.text


def test_a_command_line_binding_nothing_calls_is_reported(reference_dir):
  flags = [*REQUIRED, "infer.split = 'test'", "train.log_every = 3"]
  gin_config.configure_gin(["test/prompt_tiny.gin"], flags, [], check_unread=True)
  gin.get_configurable(train.train)  # train.* is read when train runs; here only its argument is fetched
  train.RunConfig()
  lines = []
  assert gin_config.warn_unread_bindings(flags, print_fn=lines.append) == ["infer.split", "train.log_every"]
  assert lines[0] == (
    "warning: --gin.infer.split was set but read by nothing in this run (its configurable was not called)"
  )
  # A configurable called through a macro (`MIXTURE_OR_TASK_NAME = @f()`, called in the macro's scope) read it.
  gin.clear_config()
  flags = ["MIXTURE_OR_TASK_NAME = @prompt_tuning.demo_data.register_demo_task_index_task()"]
  flags += ["prompt_tuning.demo_data.register_demo_task_index_task.task = 'wordnet_hypernymy'", *REQUIRED[:2]]
  gin_config.configure_gin(["demo/prompt.gin", "prompts/mpt.gin"], [*flags, "NUM_TASKS = 4"], [], check_unread=True)
  assert train.RunConfig().mixture_or_task_name == "task_index_wordnet_hypernymy"
  assert gin_config.unread_bindings(flags) == []


@pytest.mark.parametrize(
  ("steps", "from_checkpoint_step", "path", "expected"),
  [
    (30000, None, "/ckpts/t5_1_1_lm100k_xxl/checkpoint_1100000", 30000),
    (1150000, True, "/ckpts/t5_1_1_lm100k_xxl/checkpoint_1100000", 50000),
    (1150000, False, "/ckpts/t5_1_1_lm100k_xxl/checkpoint_1100000", 1150000),
    (4, None, "/ref/t5x_t5_1_1_tiny/checkpoint_3", 4),  # a tiny checkpoint's step is not a pretrained model's
    (100, None, "/hf/t5-base", 100),
  ],
)
def test_train_steps_counts_tuning_steps_or_from_the_checkpoint_step(steps, from_checkpoint_step, path, expected):
  assert reference.train_steps(steps, from_checkpoint_step, path) == expected


def test_t5x_train_steps_is_refused_with_what_to_set():
  with pytest.raises(ValueError, match=r"Set TRAIN_STEPS=50000 \(or TRAIN_STEPS_FROM_CHECKPOINT_STEP=True"):
    reference.train_steps(1150000, None, "/ckpts/t5_1_1_lm100k_xxl/checkpoint_1100000")
  with pytest.raises(ValueError, match="is not named checkpoint_<step>"):
    reference.train_steps(1150000, True, "/hf/t5-base")


def test_loss_normalizing_factor_ours_accepted_others_refused():
  reference.check_loss_normalizing_factor("NUM_REAL_TARGET_TOKENS")
  for value in (None, 2048.0, "AVERAGE_PER_SEQUENCE"):
    with pytest.raises(ValueError, match="mean over the batch's real target tokens"):
      reference.check_loss_normalizing_factor(value)


def test_loss_normalizing_factor_from_the_command_line_is_checked():
  gin_config.configure_gin(
    ["test/prompt_tiny.gin"], [*REQUIRED, "LOSS_NORMALIZING_FACTOR = None"], [], check_unread=True
  )
  with pytest.raises(ValueError, match="LOSS_NORMALIZING_FACTOR=None is not supported"):
    gin_config.apply_code_read_macros()


def test_class_labels_replace_a_builtin_tasks_labels():
  import prompt_tuning.data  # noqa: F401  (registers the built-in tasks)

  assert class_labels_lib.class_labels_for_task("super_glue_boolq_v102") == ["False", "True"]
  assert class_labels_lib.class_labels_for_task("super_glue_boolq_v102", ["no", "yes"]) == ["no", "yes"]
  gin.clear_config()
  gin_config.configure_gin(
    ["test/prompt_tiny.gin", "prompts/class_labels.gin"],
    [*REQUIRED[:2], "MIXTURE_OR_TASK_NAME = 'super_glue_boolq_v102'", "CLASS_LABELS = ['no', 'yes']"],
    [],
    check_unread=True,
  )
  assert gin.query_parameter("prompt_tuning.data.class_labels_for_task.labels").scoped_selector == (
    "CLASS_LABELS/gin.macro"
  )
  assert prompt_tuning.data.class_labels_for_task("super_glue_boolq_v102") == ["no", "yes"]
  with pytest.raises(ValueError, match="give a non-empty list of label texts"):
    class_labels_lib.class_labels_for_task("super_glue_boolq_v102", "yes")


def test_mixture_or_task_module_is_imported(tmp_path, monkeypatch, reference_dir):
  (tmp_path / "my_tasks.py").write_text(
    "import seqio\n"
    "from prompt_tuning.data import class_labels\n"
    "MARKER = 'imported'\n"
    "class_labels.register_class_labels('my_module_task', ['x'])\n"
  )
  monkeypatch.syspath_prepend(str(tmp_path))
  flags = [*REQUIRED, "MIXTURE_OR_TASK_MODULE = 'my_tasks'"]
  gin_config.configure_gin(["test/prompt_tiny.gin"], flags, [], check_unread=True)
  gin_config.apply_code_read_macros()
  assert sys.modules["my_tasks"].MARKER == "imported"
  gin.clear_config()
  gin_config.configure_gin(["test/prompt_tiny.gin"], [*REQUIRED, "MIXTURE_OR_TASK_MODULE = 'no_such_tasks'"], [])
  with pytest.raises(ModuleNotFoundError, match="put its folder on PYTHONPATH"):
    gin_config.apply_code_read_macros()


@pytest.mark.parametrize(
  ("reference_file", "ours"),
  [
    ("prompt_tuning/configs/models/t5_1_1_xxl_prompt.gin", "models/t5_1_1.gin"),
    ("prompt_tuning/configs/prompts/from_class_labels.gin", "prompts/class_labels.gin"),
    ("prompt_tuning/configs/runs/prompt_eval.gin", "runs/prompt_eval.gin"),
    ("t5x/configs/runs/finetune.gin", "runs/prompt_finetune.gin"),
  ],
)
def test_a_reference_gin_file_names_ours(reference_file, ours):
  with pytest.raises(FileNotFoundError, match=f"here use --gin_file={re.escape(ours)}"):
    gin_config.configure_gin([reference_file], [], [])


def test_migration_table_names_every_refused_reference_macro():
  table = (ROOT / "docs" / "MIGRATING.md").read_text()
  missing = [name for name in reference.REFERENCE_NAMES if name not in table]
  assert not missing, f"docs/MIGRATING.md does not list {missing}"


# Run configs; configs/sweeps/ holds sweep files (prompt_tuning.sweeps), whose runs test_sweeps.py parses.
CONFIGS = sorted(
  str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.gin") if p.parent.name != "sweeps"
)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_ready_to_run_config_sets_only_macros_it_reads(name):
  """What a config assigns is read by its own run (a config is what users copy, so it must show no dead settings)."""
  text = (ROOT / "configs" / name).read_text()
  flags = [f for f in [*REQUIRED, "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 2}"] if f.split(" =")[0] not in text]
  gin_config.configure_gin([name], flags, [], check_unread=True)


def test_the_prompt_is_a_method_set_by_the_reference_macros_and_its_old_names_say_the_new(tmp_path):
  """PROMPT_LENGTH and PROMPT_INIT (the reference's macros) set the Prompt method's own settings; PROMPT_LENGTH = 0
  leaves it out; RunConfig.prompt_length / prompt_init (this project's names before the prompt became a method) are
  refused naming what sets them now."""
  from prompt_tuning import methods, prompts, run

  bindings = [*REQUIRED, "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}", "PROMPT_LENGTH = 5"]
  init = "PROMPT_INIT = @prompt_tuning.prompts.sampled_vocab()"
  gin_config.configure_gin([*TINY, "runs/prompt_finetune.gin"], [*bindings, init], [], check_unread=True)
  cfg = run.RunConfig()
  assert type(cfg.prompt) is methods.Prompt and cfg.prompt.length == 5
  assert cfg.prompt.initializer.__qualname__.startswith(prompts.sampled_vocab.__qualname__)
  gin.clear_config()
  gin_config.configure_gin(["test/prompt_tiny.gin", "prompts/prefix.gin"], REQUIRED, [], check_unread=True)
  assert [m.name for m in run.tuning_methods(run.RunConfig())] == ["prefix"]
  old = tmp_path / "old.gin"
  old.write_text("include 'test/prompt_tiny.gin'\nRunConfig.prompt_init = @prompt_tuning.prompts.random_uniform()\n")
  for files, extra, new in (([], ["RunConfig.prompt_length = 3"], "PROMPT_LENGTH"), ([str(old)], [], "PROMPT_INIT")):
    gin.clear_config()
    with pytest.raises(ValueError, match=rf"RunConfig.prompt_\w+ is now {new} \(prompt_tuning.methods.Prompt"):
      gin_config.configure_gin(files, [*REQUIRED, *extra], [])
