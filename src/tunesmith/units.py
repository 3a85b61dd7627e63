"""Durations as people write them in tunesmith.yaml and on the command line (`time_budget: 10m`)."""

from __future__ import annotations

import math
import re
from typing import Any

DURATION_FORMS = "10m, 90s, 1h, 1h30m, 2.5m or 600 (seconds)"

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SECONDS = re.compile(rf"^{_NUMBER}$")
_PARTS = re.compile(rf"^(?:({_NUMBER})h)?(?:({_NUMBER})m)?(?:({_NUMBER})s)?$")


def parse_duration(value: Any) -> float:
    """Seconds from 10m, 90s, 1h, 1h30m, 2.5m or a plain number of seconds (600); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a duration: use {DURATION_FORMS}")
    if isinstance(value, str):
        text = "".join(value.split()).lower()
        parts = _PARTS.match(text)
        if _SECONDS.match(text):
            seconds = float(text)
        elif text and parts and any(parts.groups()):
            h, m, s = (float(p) if p else 0.0 for p in parts.groups())
            seconds = h * 3600 + m * 60 + s
        else:
            raise ValueError(f"{value!r} is not a duration: use {DURATION_FORMS}")
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r} is no time to train in: a budget must be longer than 0 seconds")
    return seconds
