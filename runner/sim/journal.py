"""The simulator's state file: one JSON line per change to the books, replayed on start.

For ``pixrun run --simulate``, whose in-process simulator dies with the run: the next
run's simulator must know every task the last one accepted, or the client's resume
would meet a provider that forgot what it charged for.

Invariants:
- A record is appended with one ``write`` on an ``O_APPEND`` descriptor before the
  answer that depends on it is sent. No fsync: a killed process loses nothing the OS
  has (a power cut may, which a rehearsal can afford).
- Reading skips a torn last line (a kill in the middle of a write), never raises on it.
- Upload bytes live beside the file (``<state file>.uploads/<name>``), written and
  renamed into place before their record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from runner.errors import UsageError


class Journal:
    """Append-only records of one state file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.uploads_dir = path.with_name(path.name + ".uploads")
        self._fd: int | None = None

    def records(self) -> Iterator[dict[str, Any]]:
        """Every complete record, oldest first (none when the file does not exist)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise UsageError(f"cannot read the simulator state file {self.path}: {exc}") from exc
        for number, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                if not data.endswith(b"\n") and line == data.rsplit(b"\n", 1)[-1]:
                    return  # torn by a kill mid-write: the change never happened
                raise UsageError(
                    f"{self.path}:{number}: not a simulator state record",
                    hint="remove the file to start the simulator afresh",
                ) from exc
            if isinstance(record, dict):
                yield record

    def append(self, record: Mapping[str, Any]) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
        os.write(self._fd, line.encode("utf-8"))

    def store_upload(self, name: str, data: bytes) -> None:
        """The bytes of an upload, under their final name only once complete."""
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        final = self.uploads_dir / name
        if final.exists():
            return
        partial = final.with_name(f".{name}.{os.getpid()}.part")
        partial.write_bytes(data)
        partial.replace(final)

    def read_upload(self, name: str) -> bytes | None:
        try:
            return (self.uploads_dir / name).read_bytes()
        except OSError:
            return None

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
