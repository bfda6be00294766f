"""Shared test set-up: quiet TensorFlow, CPU only, the reference artifacts, and what several test files reuse: the
command line run in this process (`_cli`) and one tiny trained run (`trained_run`). A test that runs a model outside
a training or decoding step calls it through tests/jitted.py (`jitted.apply(model, variables, ...)`): compiled once,
rather than op by op."""

import contextlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's programs are tiny models run for a few steps, so compiling them is most of their time: LLVM's cheap
# settings take about a fifth off the suite's CPU time (test_packing and test_lora: 259 -> 205 CPU seconds), and the
# numbers the tests compare do not change (float32 either way; every equality and parity test passes). XLA:CPU's
# older elemental emitters instead of its fusion emitters, and LLVM's code in one piece rather than split for
# parallel compilation (both workers already keep both cores busy), compile test_packing's three-method train step
# in 0.6-0.8 CPU seconds instead of 2.7-3.0, with the same loss to the last bit. Here before JAX starts, and
# inherited by the processes the tests start (`xla_flags` adds the simulated devices to it).
FAST_COMPILE_XLA_FLAGS = (
  "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  " --xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"
)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_XLA_FLAGS}".strip()

import pytest  # noqa: E402

# ../shared/reference beside the project root: real artifacts made by other
# tools (T5X, SentencePiece). A user's checkout has no ../shared; CI always does.
REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


# The test files that take longest, longest first (their wall time in `make test` on 2 cores, 2026-12-06: 2.5 minutes
# down to about 20 seconds).
# `make test` hands whole files to its two workers in collection order (--dist loadfile --no-loadscope-reorder):
# these start first and the short files fill in behind them, so the workers finish within a short file of each
# other, instead of one starting a long file when the other is nearly done. A new long file belongs here.
LONGEST_FILES_FIRST = (
  "test_sweeps_runs.py",
  "test_storage_gcs.py",
  "test_serve.py",
  "test_demo.py",
  "test_method_invariants.py",
  "test_packing.py",
  "test_plan.py",
  "test_readme.py",
  "test_faults_sweeps.py",
  "test_method_resume.py",
  "test_data_tasks.py",
  "test_faults_checkpoints.py",
  "test_precision.py",
  "test_trainer.py",
  "test_demo_build.py",
  "test_compilation_cache.py",
  "test_benchmarks_accelerator.py",
  "test_lora.py",
  "test_faults.py",
  "test_t5.py",
  "test_multitask.py",
  "test_methods.py",
  "test_length_buckets.py",
  "test_notebook.py",
  "test_notebook_colab.py",
  "test_site_contract.py",
  "test_ensembles.py",
  "test_cli.py",
  "test_decoding.py",
)


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests keep their order


@pytest.fixture(scope="module", autouse=True)
def _gin_cleared_between_files():
  """No gin setting outlives its test file: a command run in-process leaves its bindings (VOCABULARY_PATH,
  MODEL_SIZE, ...), which would otherwise reach the next file's configurables on the same xdist worker."""
  import gin

  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture
def clean_gin():
  """An empty gin configuration before and after the test (for files whose tests configure gin themselves:
  `pytestmark = pytest.mark.usefixtures("clean_gin")`)."""
  import gin

  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_in_tmp(tmp_path_factory):
  """JAX's persistent compilation cache under pytest's temporary folder (not the user's ~/.cache), for the commands
  the tests start and for the tests' own process: a program compiled once (the same tiny model's train and eval
  steps, built again test after test) is read back instead of compiled again. One folder for both xdist workers
  (what one compiled, the other reads). PROMPT_TUNING_COMPILATION_CACHE=off switches it off (set, it is
  respected)."""
  from jax.experimental.compilation_cache import compilation_cache as jax_cache

  from prompt_tuning import compilation_cache

  os.environ.setdefault(compilation_cache.ENV, str(_shared_tmp(tmp_path_factory) / "jax_compilation_cache"))
  if compilation_cache.enable() is not None:
    jax_cache.reset_cache()  # JAX decides once per process whether it uses the cache: decide again, with a folder


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
  """gs://BUCKET on one real GCS emulator process for the session (tests/gcs_emulator.py); tensorstore and gcsfs
  are pointed at it for the session."""
  import gcs_emulator as emulator

  proc, url = emulator.start(tmp_path_factory.mktemp("gcs_emulator") / "server.log")
  previous = {name: os.environ.get(name) for name in emulator.env(url)}
  os.environ.update(emulator.env(url))
  try:
    yield f"gs://{emulator.BUCKET}"
  finally:
    for name, value in previous.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value
    emulator.stop(proc)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
  if not REFERENCE_DIR.is_dir():
    pytest.skip(f"reference artifacts not found at {REFERENCE_DIR} (they sit beside the project in CI)")
  return REFERENCE_DIR


@pytest.fixture(scope="session")
def vocabulary(reference_dir):
  """The real T5 SentencePiece vocabulary (32,000 pieces + 100 sentinels)."""
  seqio = pytest.importorskip("seqio")
  return seqio.SentencePieceVocabulary(str(reference_dir / "t5_spm_32000.model"), extra_ids=100)


@pytest.fixture(scope="session")
def embedding(reference_dir):
  """A real-vocabulary-sized embedding table, float32 [32128, 4]."""
  import numpy as np

  return np.load(reference_dir / "tiny_embeddings_32128x4.npy")


@pytest.fixture(scope="module")
def tiny_decoder_model():
  """(config, params) of a random tiny T5 1.0 with an untied output layer whose pad logit is pinned at 0, below the
  best of the random others, so greedy decoding never emits pad mid-sequence."""
  import jax

  import prompt_tuning as pt

  config = pt.get_config("t5_1_0_tiny", vocab_size=64, mlp_activations=("gelu", "linear"), logits_via_embedding=False)
  params = pt.init_params(config, jax.random.key(3))
  params["decoder"]["logits_dense"]["kernel"] = params["decoder"]["logits_dense"]["kernel"].at[:, 0].set(0.0)
  return config, params


@pytest.fixture(scope="module")
def batch():
  """(encoder tokens [3, 7], decoder inputs [3, 5], targets [3, 5]) over a 64-token vocabulary, with padding in
  rows 1 (encoder) and 2 (targets). Modules that need another batch define their own."""
  import numpy as np

  rng = np.random.default_rng(0)
  enc = rng.integers(2, 64, (3, 7))
  enc[1, 4:] = 0
  targets = rng.integers(2, 64, (3, 5))
  targets[2, 3:] = 0
  return enc, np.pad(targets[:, :-1], ((0, 0), (1, 0))), targets


@pytest.fixture
def _cli(capfd):
  """`prompt-tuning ARGS` in this process (tests/cli_runs.py): `_cli(*args, check=True, extra_path=None)` returns
  its Result; with `check`, a failed command, or one that printed an ERROR line, fails the test."""
  from cli_runs import run_cli

  def run(*args, check=True, extra_path=None):
    out = run_cli(capfd, *args, extra_path=extra_path)
    if check:
      assert out.returncode == 0, f"{args[0]} failed:\n{out.stderr[-4000:]}"
      assert "ERROR" not in out.stderr and "ERROR" not in out.stdout, out.stderr[-3000:]
    return out

  return run


@dataclass(frozen=True)
class TrainedRun:
  """A finished 4-step prompt-tuning run of configs/test/prompt_tiny.gin on tests/tiny_task.py's task and the
  reference tiny T5X checkpoint, trained by `prompt-tuning train` with a checkpoint every step, the newest 2 kept
  (checkpoints 3 and 4, numpy_checkpoints/checkpoint_3 and _4).

  Shared by every test of the session (and both xdist workers): read `model_dir`, never write to it; a test that
  resumes, evaluates into or damages a run works on `copy(tmp_path)`.
  """

  model_dir: Path
  log: str  # what the train command printed (stderr)
  flags: tuple[str, ...]  # the command line's flags that trained it, less --gin.MODEL_DIR

  def copy(self, folder: Path) -> Path:
    """A writable copy of the run in `folder`/run (its released lock file left out)."""
    from prompt_tuning import locks

    target = Path(folder) / "run"
    shutil.copytree(self.model_dir, target, ignore=shutil.ignore_patterns(locks.LOCK_NAME))
    return target

  @staticmethod
  def config(model_dir, **overrides):
    """The run's settings as the `RunConfig` the command line builds from `flags`, for `model_dir`."""
    import tiny_task

    return tiny_task.run_config(model_dir, **{"keep_checkpoints": 2, **overrides})


def _shared_tmp(tmp_path_factory) -> Path:
  """The session's temporary folder that every xdist worker of this session sees (a worker's own is below it)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def trained_run(reference_dir, tmp_path_factory) -> TrainedRun:
  """The session's one tiny trained run (TrainedRun): trained once, by whichever worker asks first, under a file
  lock; the other worker reads it from disk."""
  import fcntl

  import gin
  import tiny_task

  from prompt_tuning import cli

  tiny_task.register()  # in this process too: tests resume and evaluate the run on its task
  root = _shared_tmp(tmp_path_factory) / "trained_run"
  root.mkdir(exist_ok=True)
  flags = (
    "--gin_file=test/prompt_tiny.gin",
    f"--gin.INITIAL_CHECKPOINT_PATH='{tiny_task.T5X_TINY}'",
    f"--gin.MIXTURE_OR_TASK_NAME='{tiny_task.TASK}'",
    "--gin.CHECKPOINT_EVERY=1",
    "--gin.RunConfig.keep_checkpoints=2",
  )
  model_dir, log_file = root / "run", root / "train.log"
  with open(root / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not log_file.is_file():
      shutil.rmtree(model_dir, ignore_errors=True)
      saved_cache = os.environ.get("PROMPT_TUNING_COMPILATION_CACHE")
      os.environ["PROMPT_TUNING_COMPILATION_CACHE"] = "off"  # as tests/cli_runs.py: the tests' cache stays
      stderr = io.StringIO()
      gin.clear_config()
      try:
        with contextlib.redirect_stderr(stderr):
          code = cli.main(["train", *flags, f"--gin.MODEL_DIR='{model_dir}'"])
      finally:
        gin.clear_config()
        if saved_cache is None:
          os.environ.pop("PROMPT_TUNING_COMPILATION_CACHE")
        else:
          os.environ["PROMPT_TUNING_COMPILATION_CACHE"] = saved_cache
      assert code == 0, f"the shared tiny run failed to train:\n{stderr.getvalue()[-4000:]}"
      log_file.write_text(stderr.getvalue())  # last: its presence marks a finished run
  return TrainedRun(model_dir, log_file.read_text(), flags)
