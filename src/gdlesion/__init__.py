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
from .params import DetectionParams, load_params
from .pipeline import StudyResult, run_study, write_study_outputs
from .registration import RegistrationResult, register_rigid

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
    "DetectionParams",
    "load_params",
    "StudyResult",
    "run_study",
    "write_study_outputs",
    "RegistrationResult",
    "register_rigid",
]

# Heavier entry points (batch, longitudinal, simulate, report) are imported from their modules:
# gdlesion.batch.run_batch, gdlesion.longitudinal.run_longitudinal,
# gdlesion.simulate.simulate_study, gdlesion.report.rebuild_reports.
