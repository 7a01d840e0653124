"""Configuration: checked dataclasses per model family, training run and fine-tuning recipe; YAML and overrides."""

from lmforge.config.fields import Checked
from lmforge.config.finetune import FinetuneConfig, FinetuneRun, TaskConfig, load_finetune_config
from lmforge.config.models import FAMILIES, BertConfig, GPTConfig, T5Config
from lmforge.config.overrides import YAML_ERRORS, apply_override, build_section, read_yaml
from lmforge.config.run import DataConfig, RunConfig, TrainConfig, load_config, sections_of, shipped_configs

__all__ = [
    "FAMILIES",
    "YAML_ERRORS",
    "BertConfig",
    "Checked",
    "DataConfig",
    "FinetuneConfig",
    "FinetuneRun",
    "GPTConfig",
    "RunConfig",
    "T5Config",
    "TaskConfig",
    "TrainConfig",
    "apply_override",
    "build_section",
    "load_config",
    "load_finetune_config",
    "read_yaml",
    "sections_of",
    "shipped_configs",
]
