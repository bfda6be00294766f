"""Multitask prompt tuning (MPT; Wang et al., 2023, "Multitask Prompt Tuning Enables Parameter-Efficient Transfer
Learning", section 3.1): one prompt shared by every task, each task's prompt being the shared one times (element by
element) a low-rank matrix of the task's own,

    P_k = P* o (u_k v_k^T)        P* [P, D],  u_k [P, r],  v_k [r, D]

(the paper's rank-one W_k = u_k (x) v_k^T; rank r in general, as Hugging Face PEFT's `MultitaskPromptTuningConfig`
`num_ranks`). The task's prompt joins the input as a soft prompt does (`prompt_tuning.combine`).

Trainable tree: {"shared": [P, D], "task_cols": [T, P, r], "task_rows": [T, r, D]}, PEFT's `prompt_embeddings`,
`prefix_task_cols` and `prefix_task_rows`: the shared prompt from `initializer` (a `prompts` initializer, PROMPT_INIT),
the factors by `factor_init`:

- "normal" (the default, PEFT's and the authors' code's): u_k, v_k ~ N(0, factor_stddev^2) (0.02). Every task's
  prompt then starts near zero (u_k v_k^T ~ 4e-4 at rank 1), and the product's gradients are as small: trained from
  scratch on the demo tasks (docs/demo_spot.md, 200 steps over 4 tasks, Adafactor at 0.3) it reaches a per-token
  cross-entropy of 4.50 where "ones" reaches 3.43, and after 800 steps no label task is learned. The paper trains
  the shared prompt by distillation from trained source prompts first (section 3.2), where this matters less.
- "ones" (ours, opt-in): u_k = 1 + e, v_k = (1 + e') / r with e, e' ~ N(0, factor_stddev^2), so u_k v_k^T ~ 1 and
  every task's prompt starts at the shared prompt, as a single prompt-tuning run starts at its initializer (the
  noise keeps the r rank components from staying identical).

`export_peft` / `read_peft` write and read PEFT's MPT adapter folder for the Hugging Face T5 with
`num_transformer_submodules` 1 (PEFT's seq2seq default 2 also prepends P rows to the decoder's input, which our T5
has no site for: refused).

Each row's task comes from the data (`prompt_tuning.inputs`: the sentinel `task_index_` inputs open with; PEFT's
`task_ids`). The serving form and export are every task's prompt P_k, each a plain [P, D] prompt
(`prompt_tuning.methods.task_prompts`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from prompt_tuning import prompts
from prompt_tuning.methods import task_prompts
from prompt_tuning.methods.base import PyTree
from prompt_tuning.models.configs import T5Config

PEFT_TYPE = "MULTITASK_PROMPT_TUNING"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
# Our leaves and PEFT's tensors.
PEFT_NAMES = {"shared": "prompt_embeddings", "task_cols": "prefix_task_cols", "task_rows": "prefix_task_rows"}
FACTOR_INITS = ("normal", "ones")


@gin.configurable(module="prompt_tuning.methods")
@dataclasses.dataclass(frozen=True)
class MultitaskPromptTuning(task_prompts.TaskTableMethod):
  """MPT (module docstring).

  Attributes:
    length: P, the prompt's length (PEFT's `num_virtual_tokens`, PROMPT_LENGTH).
    num_tasks: T (PEFT's `num_tasks`): task_index_ tasks 0 .. T - 1.
    num_ranks: r, the rank of each task's factor (PEFT's `num_ranks`; the paper's 1).
    initializer: the shared prompt's initializer (PROMPT_INIT, e.g. `prompts.sampled_vocab()`).
    factor_stddev: the standard deviation the task factors are drawn with (PEFT's 0.02).
    factor_init: "normal" (PEFT's) or "ones" (each task's prompt starts at the shared one): module docstring.
  """

  length: int
  num_tasks: int
  num_ranks: int = 1
  initializer: prompts.Initializer | None = None
  factor_stddev: float = 0.02
  factor_init: str = "normal"
  name = "mpt"
  leaves = (("input", "prompt"),)  # it feeds the input site; a server takes its per-task prompts as "prompt" rows

  def __post_init__(self):
    if not isinstance(self.length, int) or self.length < 1:
      raise ValueError(f"MultitaskPromptTuning.length must be >= 1, got {self.length!r}; set PROMPT_LENGTH.")
    task_prompts.check_task_count("MultitaskPromptTuning", self.num_tasks)
    if not isinstance(self.num_ranks, int) or self.num_ranks < 1:
      raise ValueError(f"MultitaskPromptTuning.num_ranks must be a positive integer, got {self.num_ranks!r}.")
    if self.initializer is None:
      raise ValueError(
        "MPT's shared prompt needs an initializer: set PROMPT_INIT (e.g. @prompt_tuning.prompts.sampled_vocab())."
      )
    if not self.factor_stddev > 0:
      raise ValueError(f"MultitaskPromptTuning.factor_stddev must be > 0, got {self.factor_stddev!r}.")
    if self.factor_init not in FACTOR_INITS:
      raise ValueError(
        f"MultitaskPromptTuning.factor_init must be one of {FACTOR_INITS}, got {self.factor_init!r}: 'normal' draws "
        "the task factors as PEFT does, 'ones' starts every task's prompt at the shared prompt."
      )

  @property
  def input_length(self) -> int:
    return self.length

  def init(self, rng: jax.Array, backbone: PyTree, config: T5Config) -> PyTree:
    shared_key, cols_key, rows_key = jax.random.split(rng, 3)
    shared = prompts.init_prompt(shared_key, self.initializer, backbone["token_embedder"]["embedding"], self.length)
    cols = jax.random.normal(cols_key, (self.num_tasks, self.length, self.num_ranks), jnp.float32)
    rows = jax.random.normal(rows_key, (self.num_tasks, self.num_ranks, config.emb_dim), jnp.float32)
    cols, rows = cols * self.factor_stddev, rows * self.factor_stddev
    if self.factor_init == "ones":
      cols, rows = 1.0 + cols, (1.0 + rows) / self.num_ranks
    return {"shared": shared, "task_cols": cols, "task_rows": rows}

  def logical_axes(self, shapes: PyTree) -> PyTree:
    # A prompt axis name keeps Adafactor's statistics unfactored (prompt_tuning.optim), as for a soft prompt.
    axes = {
      "shared": PartitionSpec(*prompts.PROMPT_AXES),
      "task_cols": PartitionSpec(None, "prompt", None),
      "task_rows": PartitionSpec(None, None, "prompt_embed"),
      task_prompts.FOLDED: task_prompts.FOLDED_AXES,  # the folded tree (eval, infer: build_inference)
    }
    return {k: v for k, v in axes.items() if k in shapes}

  @staticmethod
  def task_table(params: PyTree) -> jax.Array:
    """Every task's prompt P_k = P* o (u_k v_k^T): [T, P, D], from the trained tree (the folded one as it is)."""
    if task_prompts.FOLDED in params:
      return params[task_prompts.FOLDED]
    factors = jnp.einsum("tpr,trd->tpd", params["task_cols"], params["task_rows"])  # [T, P, D]
    return params["shared"][None] * factors

  def settings(self) -> dict[str, str]:
    return {"num_tasks": str(self.num_tasks), "num_ranks": str(self.num_ranks)}

  def export_peft(
    self, params: PyTree, config: T5Config, folder: str | Path, *, base_model_name_or_path: str | None = None
  ) -> Path:
    """Writes PEFT's MPT adapter folder for the Hugging Face T5 of this backbone: `PeftModel.from_pretrained(hf_t5,
    folder)` called with `task_ids` gives our logits for those tasks.

    Args:
      params: the trained tree (the folded one has lost the factors: refused).
      config: the backbone's architecture.
      folder: the folder to write (created).
      base_model_name_or_path: the Hugging Face model it was trained for, recorded in the config.

    Returns:
      The folder.
    """
    if task_prompts.FOLDED in params:
      raise ValueError(
        "PEFT's MPT adapter holds the shared prompt and the task factors; these are folded per-task prompts. Export "
        "from the training checkpoint's tree (train.build(...).state.trainable['mpt'])."
      )
    tensors = {
      PEFT_NAMES[k]: np.ascontiguousarray(np.asarray(jax.device_get(v), np.float32)) for k, v in params.items()
    }
    adapter_config = {
      "peft_type": PEFT_TYPE,
      "task_type": "SEQ_2_SEQ_LM",
      "num_virtual_tokens": self.length,
      "token_dim": config.emb_dim,
      "num_transformer_submodules": 1,  # the encoder's prompt only (PEFT's 2 prompts the decoder too)
      "num_attention_heads": config.num_heads,
      "num_layers": config.num_encoder_layers,
      "num_tasks": self.num_tasks,
      "num_ranks": self.num_ranks,
      "prompt_tuning_init": "RANDOM",
      "prompt_tuning_init_state_dict_path": None,
      "prompt_tuning_init_task": 0,
      "prompt_tuning_init_text": None,
      "tokenizer_name_or_path": None,
      "tokenizer_kwargs": None,
      "base_model_name_or_path": base_model_name_or_path,
      "revision": None,
      "inference_mode": True,
      "modules_to_save": None,
      "auto_mapping": None,
    }
    from prompt_tuning.checkpoints.peft import write_adapter_folder

    return write_adapter_folder(folder, adapter_config, tensors)


def read_peft(folder: str | Path, config: T5Config) -> tuple[MultitaskPromptTuning, PyTree]:
  """Reads PEFT's MPT adapter folder for a Hugging Face T5: its settings (an `MultitaskPromptTuning` with a
  uniform initializer: the trained tree replaces it) and our trained tree.

  Raises:
    FileNotFoundError: no adapter_config.json or adapter_model.safetensors in `folder`.
    ValueError: another PEFT adapter type, a task type other than SEQ_2_SEQ_LM, or tensors that do not fit the
      config or the backbone.
  """
  folder = Path(folder)
  config_path, weights_path = folder / PEFT_CONFIG, folder / PEFT_WEIGHTS
  for path in (config_path, weights_path):
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found: {folder} is not a PEFT MPT adapter folder (saved with safetensors).")
  adapter = json.loads(config_path.read_text())
  if adapter.get("peft_type") != PEFT_TYPE or adapter.get("task_type") != "SEQ_2_SEQ_LM":
    raise ValueError(
      f"{config_path} is a PEFT {adapter.get('peft_type')!r} adapter for {adapter.get('task_type')!r}; this reads "
      f"{PEFT_TYPE} adapters for SEQ_2_SEQ_LM (T5)."
    )
  from safetensors.numpy import load_file

  if int(adapter.get("num_transformer_submodules") or 2) != 1:
    raise ValueError(
      f"{config_path}: num_transformer_submodules {adapter.get('num_transformer_submodules')} (PEFT's seq2seq "
      "default 2) also prepends P prompt rows to the decoder's input, which this T5 takes no prompt at; train the "
      "PEFT adapter with num_transformer_submodules=1 (the encoder's prompt only, what export_peft writes)."
    )
  tensors = load_file(str(weights_path))
  missing = sorted(set(PEFT_NAMES.values()) - set(tensors))
  if missing:
    raise ValueError(f"{weights_path} lacks {missing}; PEFT's MPT adapter holds {sorted(PEFT_NAMES.values())}.")
  length, tasks, ranks = int(adapter["num_virtual_tokens"]), int(adapter["num_tasks"]), int(adapter["num_ranks"])
  tree = {"shared": tensors["prompt_embeddings"], **{k: tensors[PEFT_NAMES[k]] for k in ("task_cols", "task_rows")}}
  expected = {
    "shared": (length, config.emb_dim),
    "task_cols": (tasks, length, ranks),
    "task_rows": (tasks, ranks, config.emb_dim),
  }
  for key, shape in expected.items():
    if tuple(tree[key].shape) != shape:
      raise ValueError(
        f"{weights_path}: {PEFT_NAMES[key]} has shape {list(tensors[PEFT_NAMES[key]].shape)}; its config and this "
        f"backbone (embedding width {config.emb_dim}) need {list(shape)}."
      )
  settings = MultitaskPromptTuning(length, tasks, ranks, initializer=prompts.random_uniform(0.5))
  return settings, {k: np.asarray(v, np.float32) for k, v in tree.items()}
