"""Yxanul: an experiment platform for efficient small-LM pretraining (Ray, MLflow, Transformer Engine)."""

from yxanul.config import ExperimentConfig, load_config
from yxanul.errors import YxanulError

__all__ = ["ExperimentConfig", "YxanulError", "load_config"]
__version__ = "0.1.0"
