"""Exception family of gdlesion.

Every error a user can cause (a bad file, a bad option, a registration that
cannot work) is raised as a :class:`GdLesionError` subclass with a one-line
message naming the file or value and the problem. The command-line interface
turns these into a red line and a non-zero exit code; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "GdLesionError",
    "InputError",
    "RegistrationError",
    "SegmentationError",
    "OutputError",
    "ClinicalDataError",
    "BatchError",
]


class GdLesionError(ValueError):
    """Base class of every error gdlesion raises on purpose."""


class InputError(GdLesionError):
    """An input file or option is missing, unreadable or not usable."""


class RegistrationError(GdLesionError):
    """Rigid registration of the pre scan onto the post scan failed."""


class SegmentationError(GdLesionError):
    """Lesion detection cannot run on these images (e.g. no brain found)."""


class OutputError(GdLesionError):
    """An output cannot be written without losing something the user has."""


class ClinicalDataError(GdLesionError):
    """A clinical table is malformed (missing column, duplicate visit, bad date)."""


class BatchError(GdLesionError):
    """A batch cannot start (no sessions found, output locked, ambiguous layout)."""
