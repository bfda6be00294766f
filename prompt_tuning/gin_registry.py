"""Everything gin files may name, registered in one place.

Importing this module registers the project's configurables (RunConfig,
train, evaluate, infer, adafactor, the prompt initializers, the tuning
methods, the data hooks) and a few external ones (DecodingSettings, optax
schedules), and keeps the names gin files used before a rename working
(`DEPRECATED_CONFIGURABLES`). `gin_config.configure_gin` imports it before
parsing gin files.
"""

from __future__ import annotations

import logging

import gin
import optax

from prompt_tuning import (  # noqa: F401
  data,
  decoding,
  eval,
  infer,
  methods,
  optim,
  partitioning,
  prompts,
  reference,
  train,
  transfer,
)

gin.external_configurable(decoding.DecodingSettings, module="prompt_tuning.decoding")
for _schedule in ("constant_schedule", "linear_schedule", "cosine_decay_schedule", "warmup_cosine_decay_schedule"):
  gin.external_configurable(getattr(optax, _schedule), module="optax")
gin.external_configurable(optax.adamw, module="optax")
gin.external_configurable(optax.sgd, module="optax")


@gin.configurable(module="prompt_tuning")
def model_size(family: str = gin.REQUIRED, size: str = gin.REQUIRED) -> str:
  """The named size `<family>_<size>` (e.g. t5_1_1_lm100k + xxl), as models/ and models/sizes/ set them."""
  from prompt_tuning.models.configs import get_config

  name = f"{family}_{size}"
  get_config(name)  # raises with close matches when unknown
  return name


# Old parameter of a configurable -> what sets it now: gin refuses the old binding when it parses it (the parameter
# is gone), and `gin_config.configure_gin` adds the new name to that error.
RENAMED_PARAMETERS = {
  "RunConfig.prompt_length": "PROMPT_LENGTH (prompt_tuning.methods.Prompt.length; 0: no prompt)",
  "RunConfig.prompt_init": "PROMPT_INIT (prompt_tuning.methods.Prompt.initializer, e.g. PROMPT_INIT = "
  "@prompt_tuning.prompts.sampled_vocab())",
}

# Old configurable name -> new (`gin_config.move_deprecated_bindings` moves bindings on the old name to the new).
DEPRECATED_CONFIGURABLES = {"prompt_tuning.prefixes.PrefixSettings": "prompt_tuning.methods.PrefixSettings"}


@gin.configurable("PrefixSettings", module="prompt_tuning.prefixes")
def _deprecated_prefix_settings(**settings) -> methods.PrefixSettings:
  """`@prompt_tuning.prefixes.PrefixSettings()`, the prefix method's name before it joined `prompt_tuning.methods`:
  the method, with a warning naming the new name."""
  logging.getLogger(__name__).warning(
    "gin: prompt_tuning.prefixes.PrefixSettings is deprecated; use prompt_tuning.methods.PrefixSettings."
  )
  return methods.PrefixSettings(**settings)
