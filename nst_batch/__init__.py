"""nst-batch: batch neural style transfer (Gatys et al.) with real VGG19 weights."""

from nst_batch.config import OutputConfig, StylizeConfig
from nst_batch.engine.losses import LossConfig
from nst_batch.engine.model import ModelConfig
from nst_batch.engine.optimize import OptimConfig, Progress
from nst_batch.errors import (
    ConfigError,
    ImageError,
    ManifestError,
    NstError,
    VideoError,
    WeightsError,
)
from nst_batch.jobs.run import StylizeResult, stylize
from nst_batch.manifest import ManifestConfig, Report, RunCallbacks, Shard, run_manifest
from nst_batch.params import PRESETS, build_config
from nst_batch.version import __version__
from nst_batch.video.run import VideoConfig, VideoResult, stylize_video
from nst_batch.video.score import VideoScores, score_video

__all__ = [
    "PRESETS",
    "ConfigError",
    "ImageError",
    "LossConfig",
    "ManifestConfig",
    "ManifestError",
    "ModelConfig",
    "NstError",
    "OptimConfig",
    "OutputConfig",
    "Progress",
    "Report",
    "RunCallbacks",
    "Shard",
    "StylizeConfig",
    "StylizeResult",
    "VideoConfig",
    "VideoError",
    "VideoResult",
    "VideoScores",
    "WeightsError",
    "__version__",
    "build_config",
    "run_manifest",
    "score_video",
    "stylize",
    "stylize_video",
]
