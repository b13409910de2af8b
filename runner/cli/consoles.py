"""Every rich Console the CLI prints through is made here, so one setting reaches all.

- Colour: none at all with ``--no-color`` or a non-empty ``NO_COLOR`` (no-color.org):
  no colour, bold or any other style escape, even where ``FORCE_COLOR`` makes rich
  treat a pipe as a terminal (rich's own NO_COLOR keeps bold and dim). ``--no-color``
  sets ``NO_COLOR`` in the environment, so Consoles made later and programs pixrun
  starts see it too.
- Width: on a terminal, the terminal's. Elsewhere (a pipe, a file) rich would lay
  everything out in 80 columns and cut or fold long values; :func:`print_full` prints
  tables at the width their values need instead, so ``pixrun report | grep`` sees
  every shot id and error whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.measure import Measurement

#: wider than any line pixrun prints: what "unbounded" means when measuring
_UNBOUNDED = 1_000_000


def colour_off() -> bool:
    """Whether colour is off: ``--no-color`` given, or ``NO_COLOR`` set to anything."""
    return os.environ.get("NO_COLOR", "") != ""


def turn_colour_off() -> None:
    """``--no-color``: for every Console made from now on, and for child processes."""
    os.environ["NO_COLOR"] = "1"


def make_console(*, stderr: bool = False, **settings: Any) -> Console:
    """A Console as every command uses them: no highlighting of numbers and paths, and
    no colour at all when colour is off."""
    settings.setdefault("highlight", False)
    if colour_off():
        settings["color_system"] = None
    return Console(stderr=stderr, **settings)


@contextmanager
def _width(console: Console, width: int) -> Iterator[None]:
    before = console.width
    console.width = width
    try:
        yield
    finally:
        console.width = before


def print_full(console: Console, renderable: RenderableType) -> None:
    """Print ``renderable`` with no value cut or folded when ``console`` is not a terminal.

    On a terminal rich lays it out in the terminal's width, as usual. Elsewhere each
    part (each renderable of a :class:`Group`) is printed at the width it needs, never
    narrower than the console: a table as wide as its longest values, while parts that
    fill whatever width they get (a panel, a rule, a progress bar) keep the console's.
    Lines lose the padding rich puts after a table's last column.
    """
    if console.is_terminal:
        console.print(renderable)
        return
    parts = renderable.renderables if isinstance(renderable, Group) else [renderable]
    options = console.options.update_width(_UNBOUNDED)
    for part in parts:
        needed = Measurement.get(console, options, part).maximum
        # a part that fills any width it is given keeps the console's
        width = console.width if needed >= _UNBOUNDED else max(console.width, needed)
        with _width(console, width), console.capture() as captured:
            console.print(part)
        lines = captured.get().split("\n")
        console.file.write("\n".join(line.rstrip() for line in lines))
    console.file.flush()
