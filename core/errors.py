"""The project's error types and the range checks every config dataclass uses.

Every error a user can cause (a bad value, a missing or damaged file, a mismatch between a dataset and a task)
derives from :class:`MfpError`: the command line prints it as one line and exits 2. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class MfpError(Exception):
    """An error the user can fix; its message names the file, key or value and what to do."""


class ConfigError(MfpError, ValueError):
    """A configuration value that is missing, of the wrong type or out of range."""


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number (``inf`` only with ``allow_inf``) within
    ``[low, high]`` (an open end with ``low_open`` / ``high_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = f"in {lo or '(-inf'}, {hi or 'inf)'}"
        raise ConfigError(f"{name} must be {where}, got {value}")


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else (f"<= {high}" if low is None else f"in [{low}, {high}]")
        raise ConfigError(f"{name} must be {bounds}, got {value}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices`` (listed in the message)."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"unknown {name} '{value}'; known: {', '.join(str(c) for c in choices)}")
