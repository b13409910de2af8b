"""A manifest that is not a file: one read from standard input (``-`` on the command line).

A file's location gives a batch three things: relative image paths and the default
output folder resolve from the manifest's folder, and the ledger lives beside it
(``NAME.ledger.sqlite``). Text from stdin has no location, so it stands for a file in
the current directory, named after the batch:

- ``<cwd>/<slug(name)>.yaml`` when the manifest sets ``name``, else ``<cwd>/stdin.yaml``;
- so its ledger is ``<cwd>/<slug(name)>.ledger.sqlite`` and its default output folder
  ``<cwd>/out/<slug(name)>``, exactly as for a file saved there under that name.

Invariants: the same text fed again from the same folder stands for the same file and
finds the same ledger; an edited manifest (same ``name``) continues its batch, as an
edited file would. Problems in the text are located as ``<stdin>:line:column``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from runner.errors import UsageError
from runner.manifest.output_names import slug
from runner.manifest.yaml_source import parse
from runner.stdin import STDIN_LABEL

#: the stem of the file an unnamed stdin manifest stands for
STDIN_STEM = "stdin"


@dataclass(frozen=True)
class ManifestText:
    """A manifest's text with no file of its own (see the module docstring)."""

    data: bytes
    #: the folder it stands in: the current directory when it was read
    folder: Path
    #: how messages name it
    label: str = STDIN_LABEL

    def path_for(self, name: str | None) -> Path:
        """The file a manifest with this batch ``name`` stands for."""
        stem = slug(name, STDIN_STEM) if name and name.strip() else STDIN_STEM
        return self.folder / f"{stem}.yaml"

    @functools.cached_property
    def path(self) -> Path:
        """The file it stands for, from its ``name`` alone: for commands that only need
        the ledger's place, not the whole manifest checked."""
        doc = parse(self.data).data
        name = doc.get("name") if isinstance(doc, dict) else None
        return self.path_for(name if isinstance(name, str) else None)


def read_manifest_stream(stream: BinaryIO, *, folder: Path, max_bytes: int) -> ManifestText:
    """All of ``stream`` as a manifest standing in ``folder``; refuses more than
    ``max_bytes`` (read one byte past it, never the whole of an endless pipe)."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UsageError(
            f"the manifest on {STDIN_LABEL} is over {max_bytes // 1_000_000} MB",
            hint="split the batch into several manifests",
        )
    return ManifestText(data, folder.absolute())
