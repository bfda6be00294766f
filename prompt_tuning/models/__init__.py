"""T5 models and configurations."""

from prompt_tuning.models.configs import CONFIGS, T5Config, get_config
from prompt_tuning.models.t5 import T5, init_params, param_logical_axes, param_shapes

__all__ = ["CONFIGS", "T5", "T5Config", "get_config", "init_params", "param_logical_axes", "param_shapes"]
