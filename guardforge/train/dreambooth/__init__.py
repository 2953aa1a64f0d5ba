"""DreamBooth: a subject's few photos + class-prior preservation, trained with Lightning, exported for A1111."""

from guardforge.train.dreambooth.config import (
    DreamBoothConfig,
    TrainProgress,
    load_config,
)

__all__ = ["DreamBoothConfig", "TrainProgress", "load_config"]
