"""nst-batch: batch neural style transfer (Gatys et al.) with real VGG19 weights."""

__version__ = "0.1.0"

from nst_batch.engine.losses import LossConfig
from nst_batch.engine.optimize import OptimConfig, Progress
from nst_batch.errors import ConfigError, ImageError, NstError, WeightsError
from nst_batch.stylize import ModelConfig, StylizeConfig, StylizeResult, stylize

__all__ = [
    "ConfigError",
    "ImageError",
    "LossConfig",
    "ModelConfig",
    "NstError",
    "OptimConfig",
    "Progress",
    "StylizeConfig",
    "StylizeResult",
    "WeightsError",
    "__version__",
    "stylize",
]
