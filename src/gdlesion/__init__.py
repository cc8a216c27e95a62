"""gdlesion: gadolinium-enhancing lesion quantification from pre/post-contrast T1 MRI."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    BatchError,
    ClinicalDataError,
    GdLesionError,
    InputError,
    OutputError,
    RegistrationError,
    SegmentationError,
)
from .params import DetectionParams, load_params

if TYPE_CHECKING:
    from .io import Volume, load_volume, save_volume
    from .pipeline import StudyResult, run_study, write_study_outputs
    from .registration import RegistrationResult, register_rigid

#: Names imported from their module on first use: importing gdlesion (e.g. for the CLI) then
#: does not load numpy, nibabel, scipy, scikit-image and pandas before they are needed.
_LAZY = {
    "Volume": "io",
    "load_volume": "io",
    "save_volume": "io",
    "StudyResult": "pipeline",
    "run_study": "pipeline",
    "write_study_outputs": "pipeline",
    "RegistrationResult": "registration",
    "register_rigid": "registration",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


#: The package version; pyproject.toml reads it from here (importlib.metadata is not imported
#: at start-up: it costs about 0.1 s of every ``gdlesion`` command).
__version__ = "0.2.0"

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
