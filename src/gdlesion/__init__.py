"""gdlesion: gadolinium-enhancing lesion quantification from pre/post-contrast T1 MRI."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    BatchError,
    ClinicalDataError,
    GdLesionError,
    InputError,
    OutputError,
    RegistrationError,
    SegmentationError,
)
from .io import Volume, load_volume, save_volume

try:
    __version__ = version("gdlesion")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "GdLesionError",
    "InputError",
    "RegistrationError",
    "SegmentationError",
    "OutputError",
    "ClinicalDataError",
    "BatchError",
    "Volume",
    "load_volume",
    "save_volume",
]
