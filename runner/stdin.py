"""``-`` as a manifest argument: the manifest on standard input.

Only names, in a module light enough for every command to import (``runner.manifest``
pulls in the whole loader); how such a manifest is read and where it stands is in
runner/manifest/source.py.
"""

from __future__ import annotations

from pathlib import Path

#: the command-line argument that means "read the manifest from standard input"
STDIN_ARG = "-"
#: how problems and messages name a manifest read from stdin
STDIN_LABEL = "<stdin>"


def is_stdin(path: Path | str | None) -> bool:
    """Whether a manifest argument asks for standard input."""
    return path is not None and str(path) == STDIN_ARG
