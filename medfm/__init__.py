"""medfm: multimodal medical foundation models.

Encoders for each modality are aligned in one embedding space by contrastive
pretraining; the space then serves zero-shot classification, retrieval and
validation across sites and devices. See docs/ for the user guide.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medfm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
