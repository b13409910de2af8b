"""Writing a whole file atomically: a reader sees the old file or the new one, never
half of one (reports, contact sheets, the settings file).

Invariant: the data is on disk (fsync) before the new file takes the old one's name,
and a failed write leaves no temporary file behind. Errors leave as ``OSError``: the
caller knows what the file was for and says so.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _process_umask() -> int:
    """The umask, read once when this module is imported.

    ``os.umask`` can only be read by setting it, and it is process-wide: a thread that
    creates a file between the set and the restore would get the wrong mode. At import
    no other thread of ours runs, and pixrun never changes its umask afterwards.
    """
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


#: the mode a file written for people gets: what ``open()`` would give it
PUBLIC_FILE_MODE = 0o666 & ~_process_umask()


def write_atomically(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` whole or not at all.

    ``mode``: the new file's permissions; None keeps ``mkstemp``'s 0600 (private).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
