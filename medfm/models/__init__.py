"""Encoders per modality, projections, and the multimodal model.

Importing this package registers the built-in encoders in ``ENCODERS``.
"""

from medfm.models import ecg, resnet, text, vision, volume  # noqa: F401  (registration side effects)
from medfm.models.config import ModelConfig, load_model_config
from medfm.models.multimodal import MultimodalModel, create_model

__all__ = ["ModelConfig", "MultimodalModel", "create_model", "load_model_config"]
