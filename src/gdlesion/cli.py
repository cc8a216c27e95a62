"""Command-line interface: thin typer commands that call the public API.

Exit codes: 0 success; 1 a :class:`~gdlesion.errors.GdLesionError` (bad input,
registration failure, locked output...), printed as one red line without a
traceback; 2 command-line usage error (typer); 3 a batch finished but some
sessions failed. Unexpected exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.text import Text

from . import __version__
from .errors import GdLesionError

EXIT_ERROR = 1
EXIT_SESSIONS_FAILED = 3

app = typer.Typer(
    name="gdlesion",
    help="Quantify gadolinium-enhancing lesions in pre/post-contrast T1 MRI.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a GdLesionError into one red line on stderr and exit code 1."""
    try:
        yield
    except GdLesionError as exc:
        # Text, not markup: file names may contain "[...]" that rich would eat.
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None


def _version(value: bool) -> None:
    if value:
        console.print(f"gdlesion {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Quantify gadolinium-enhancing lesions in pre/post-contrast T1 MRI."""


# --- simulate -------------------------------------------------------------------------

# --- inspect --------------------------------------------------------------------------

# --- batch ----------------------------------------------------------------------------

# --- longitudinal ---------------------------------------------------------------------

# --- report ---------------------------------------------------------------------------


def main() -> None:
    """Entry point of the ``gdlesion`` console script."""
    app()
