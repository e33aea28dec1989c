"""The ``cada`` command: a thin typer app; every command fills a config and calls one library function.

One module per group of commands (inspect, judge, training, study, attack); :mod:`cada.cli.app` holds the app itself.
"""

from __future__ import annotations

import sys

from cada.cli import inspect, judge, training, study, attack  # noqa: F401, I001  (each registers its commands, in this order)
from cada.cli.app import app, err
from cada.errors import CadaError

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 1."""
    try:
        app()
    except CadaError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


