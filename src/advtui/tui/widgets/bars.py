"""Small text renderers shared by the panels: horizontal bars and sparklines."""

from __future__ import annotations

from typing import Sequence

from rich.text import Text

_SPARKS = "▁▂▃▄▅▆▇█"
_EIGHTHS = " ▏▎▍▌▋▊▉"


def hbar(fraction: float | None, width: int, style: str = "green") -> Text:
    """A bar of ``width`` cells filled to ``fraction`` (eighth-block resolution); grey when
    the value is unknown."""
    if fraction is None:
        return Text("·" * width, style="dim")
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + (_EIGHTHS[part] if part and full < width else "")
    text = Text(filled, style=style)
    text.append(" " * (width - len(filled)), style="on grey15")
    return text


def level_style(fraction: float | None) -> str:
    if fraction is None:
        return "dim"
    return "red" if fraction >= 0.9 else ("yellow" if fraction >= 0.7 else "green")


def sparkline(values: Sequence[float | None], width: int, top: float | None = None) -> Text:
    """The last ``width`` values as block characters scaled to ``top`` (or their maximum)."""
    values = [v for v in values if v is not None][-width:]
    if not values:
        return Text(" " * width)
    high = top if top else max(max(values), 1e-9)
    chars = "".join(_SPARKS[min(len(_SPARKS) - 1, max(0, int(v / high * (len(_SPARKS) - 1) + 0.5)))] for v in values)
    return Text(chars.rjust(width), style="cyan")
