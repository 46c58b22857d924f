"""The range checks of numeric values: the one place that words a refused integer or number.

``RunConfig.validate`` (``core.config``) checks a run's fields with them, named as flags
(``batch-size must be at least 1``); ``advtui.options`` checks every other command's options
with them (``--limit must be between 1 and ...``). The two read slightly differently, and the
tests hold both wordings, so the differences are keyword arguments here rather than two copies
of the checks: a field's type error says "an integer", an option's "a whole number"; a run
field with no natural ceiling says "at least", "at most", "positive" or "0 or more", an
option names its interval (and its unit). NaN and infinities are always refused.
"""

from __future__ import annotations

import math
from typing import Any

from advtui.core.errors import ConfigError

# An integer range reaching this has no ceiling worth naming (2**31 - 1: what every tensor
# size and count fits in); a float range reaching MAX_RATE neither (rates and weights past a
# million only ever train to NaN).
MAX_INT = 2**31 - 1
MAX_RATE = 1e6


def check_int(label: str, value: Any, low: int, high: int, *, noun: str = "an integer", what: str | None = None,
              names_ceiling: bool = True) -> int:
    """``value`` if it is an integer (not a bool, not 3.0) in [low, high]; else one ConfigError
    line: "LABEL must be NOUN", or "LABEL must be between LOW and HIGH" (``what`` replaces that
    sentence). A range open above (``high >= MAX_INT``) reads "at least LOW", and a value past
    it "at most HIGH" (or, without ``names_ceiling``, the whole range)."""
    if type(value) is not int:
        raise ConfigError(f"{label} must be {noun}, got {value!r}")
    if not low <= value <= high:
        if high >= MAX_INT and (value < low or names_ceiling):
            bound = f"at least {low}" if value < low else f"at most {high}"
        else:
            bound = f"between {low} and {high}"
        raise ConfigError(f"{what or label + ' must be ' + bound}, got {value}")
    return value


def check_float(label: str, value: Any, low: float, high: float, *, open_low: bool = False, open_high: bool = False,
                unit: str = "", open_ended_words: bool = False) -> float:
    """``value`` if it is a finite int or float in the interval (``open_low``/``open_high``
    exclude its ends); else one ConfigError line: "LABEL must be in [LOW, HIGH]UNIT, got V".
    With ``open_ended_words``, a range with no ceiling worth naming (``high >= MAX_RATE``)
    reads "positive" or "0 or more" below and "at most HIGH" above, and the value is shown as
    given (else with ``:g``)."""
    if type(value) not in (int, float):
        raise ConfigError(f"{label} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{label} must be a finite number, got {value}")
    too_low = value <= low if open_low else value < low
    too_high = value >= high if open_high else value > high
    if too_low or too_high:
        interval = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}{unit}"
        if not open_ended_words:
            raise ConfigError(f"{label} must be {interval}, got {value:g}")
        if high >= MAX_RATE:
            bound = ("positive" if open_low else "0 or more") if too_low else f"at most {high:g}"
        else:
            bound = interval
        raise ConfigError(f"{label} must be {bound}, got {value}")
    return float(value)
