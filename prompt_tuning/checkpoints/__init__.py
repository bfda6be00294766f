"""Checkpoint readers and writers for the frozen T5 backbone.

    from prompt_tuning.checkpoints import load_pretrained, save_hf_pretrained
    config, params = load_pretrained(path)      # T5X (legacy or orbax) or Hugging Face, detected from the path
    save_hf_pretrained(out_dir, config, params)

Modules: `pretrained` (the two entry points and format detection), `t5x`,
`huggingface` and `hf_names` (the formats), `architecture` (configs vs.
shapes), `param_tree` (validation before reading), `errors`.
"""

from prompt_tuning.checkpoints.errors import CheckpointError
from prompt_tuning.checkpoints.pretrained import Format, detect_format, load_pretrained, save_hf_pretrained

__all__ = ["CheckpointError", "Format", "detect_format", "load_pretrained", "save_hf_pretrained"]
