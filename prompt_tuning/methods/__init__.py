"""Tuning methods, one module each; see `base.Method` for what every method gives.

- `prompt.Prompt`: a soft prompt joined to the input (Lester et al., 2021);
- `prefix.PrefixSettings`: key/value prefixes at every attention layer, through an MLP folded after
  training (Li & Liang, 2021);
- `ia3.IA3`: learned rescaling of attention keys/values and feed-forward activations (Liu et al., 2022);
- `lora.LoRA`: low-rank deltas of the attention's query and value projections (Hu et al., 2021);
- `per_layer_prompt.PerLayerPrompt`: a prompt at the input of every encoder layer, replacing or added to the
  prompt positions' hidden states (deep prompt tuning);
- `multitask_prompt.MultiTaskPrompt`: a shared prompt and a per-task part (the reference implementation's
  multi-task prompts: add, concat, concat_features, project);
- `mpt.MultitaskPromptTuning`: MPT, the shared prompt times a rank-r per-task factor (Wang et al., 2023); PEFT's
  MPT adapters both ways;
- `attempt.ATTEMPT`: a target prompt plus a per-example attention mixture of frozen source prompts from a prompt
  library (Asai et al., 2022).

Adding a method is one module here (a `Method` subclass, gin-configurable, imported below so it is
registered) and one gin file in gin/prompts/; `base` says what a method declares, and
`prompt_tuning.models.adapters` the sites it may feed.
"""

from prompt_tuning.methods.attempt import ATTEMPT
from prompt_tuning.methods.base import Limits, Method, PromptError, method_class, registered, trainable_pattern
from prompt_tuning.methods.ia3 import IA3
from prompt_tuning.methods.lora import LoRA
from prompt_tuning.methods.mpt import MultitaskPromptTuning
from prompt_tuning.methods.multitask_prompt import MultiTaskPrompt
from prompt_tuning.methods.per_layer_prompt import PerLayerPrompt
from prompt_tuning.methods.prefix import PrefixSettings
from prompt_tuning.methods.prompt import Prompt

__all__ = [
  "ATTEMPT",
  "IA3",
  "Limits",
  "LoRA",
  "Method",
  "MultiTaskPrompt",
  "MultitaskPromptTuning",
  "PerLayerPrompt",
  "PrefixSettings",
  "Prompt",
  "PromptError",
  "method_class",
  "registered",
  "trainable_pattern",
]
