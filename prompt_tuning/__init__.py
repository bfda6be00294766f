"""prompt_tuning: prompt tuning and prefix tuning of frozen T5 models in JAX/Flax.

import prompt_tuning as pt
config, params = pt.load_pretrained(path)      # T5X or Hugging Face, detected from the path
logits = pt.T5(config).apply({"params": params}, encoder_input_tokens, decoder_input_tokens, prompt=prompt)
"""

from prompt_tuning.models import CONFIGS, T5, T5Config, get_config, init_params, param_logical_axes, param_shapes


def __getattr__(name):
  # Checkpoint loaders import tensorstore/orbax; load them on first use only.
  if name in ("load_pretrained", "save_hf_pretrained", "CheckpointError"):
    from prompt_tuning import checkpoints

    return getattr(checkpoints, name)
  raise AttributeError(f"module 'prompt_tuning' has no attribute {name!r}")


__all__ = [
  "CONFIGS",
  "T5",
  "T5Config",
  "get_config",
  "init_params",
  "param_logical_axes",
  "param_shapes",
  "load_pretrained",
  "save_hf_pretrained",
  "CheckpointError",
]
