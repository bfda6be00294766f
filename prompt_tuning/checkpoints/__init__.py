"""Checkpoint readers and writers for the frozen T5 backbone.

    from prompt_tuning.checkpoints import load_pretrained, save_hf_pretrained
    config, params = load_pretrained(path)      # T5X (legacy or orbax) or Hugging Face, detected from the path
    config = pretrained_config(path)            # the same config, from metadata only (to compute shardings)
    config, params = load_pretrained(path, shardings=tree)   # jax.Arrays; each process reads its blocks only
    save_hf_pretrained(out_dir, config, params)

Modules: `pretrained` (the entry points and format detection), `t5x`,
`huggingface` and `hf_names` (the formats), `remote` (gs:// through
tensorstore), `hub` (Hugging Face Hub ids), `architecture` (configs vs.
shapes), `param_tree` (validation before reading, block reads), `errors`.
"""

from prompt_tuning.checkpoints.errors import CheckpointError
from prompt_tuning.checkpoints.pretrained import (
  Format,
  detect_format,
  load_pretrained,
  pretrained_config,
  save_hf_pretrained,
)

__all__ = ["CheckpointError", "Format", "detect_format", "load_pretrained", "pretrained_config", "save_hf_pretrained"]
