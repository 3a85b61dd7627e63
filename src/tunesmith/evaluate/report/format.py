"""Numbers, estimates and escaping as the report shows them; `require` turns bad report data into a UsageError."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

from tunesmith.errors import UsageError


def esc(value: Any) -> str:
    """Escape any value for HTML text or a double-quoted attribute."""
    if value is None:
        return ""
    return html.escape(str(value), quote=True)


def finite(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def num(x: Any, *, signed: bool = False) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if not isinstance(x, numbers.Real):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    sign = "+" if signed else ""
    ax = abs(x)
    if isinstance(x, numbers.Integral):
        x = int(x)
    else:
        x = float(x)
    if isinstance(x, int) and ax < 10**6:
        return f"{x:{sign}d}"
    if ax >= 1000:
        return f"{x:{sign},.0f}"
    if ax >= 100:
        return f"{x:{sign}.1f}"
    return f"{x:{sign}.2f}"


def as_estimate(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping) and "mean" in value:
        return {k: value.get(k) for k in ("mean", "lo", "hi", "n")}
    return None


def format_estimate(value: Any, *, signed: bool = False) -> str:
    """``0.53 [0.44, 0.62] (n=90)``; ``—`` for null. Accepts an Estimate or its dict."""
    est = as_estimate(value)
    if est is None:
        return "—" if value is None else str(value)
    text = num(est["mean"], signed=signed)
    if est.get("lo") is not None and est.get("hi") is not None:
        text += f" [{num(est['lo'], signed=signed)}, {num(est['hi'], signed=signed)}]"
    if est.get("n") is not None:
        text += f" (n={est['n']})"
    return text


def format_p(p: Any) -> str:
    if p is None:
        return "—"
    if not finite(p):
        return str(p)
    if p < 0.001:
        return "&lt;0.001"
    if p < 0.01:
        return f"{p:.3f}"
    return f"{p:.2f}"


def format_created(created: Any) -> str:
    if created is None or created == "":
        return "—"
    if finite(created):
        return _dt.datetime.fromtimestamp(float(created), tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return str(created)


def value_text(value: Any) -> str:
    """A rubric / score value as text (escaped by the caller)."""
    est = as_estimate(value)
    if est is not None:
        return format_estimate(est)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Real):
        return num(value)
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return "—" if value is None else str(value)


def require(cond: bool, message: str) -> None:
    if not cond:
        raise UsageError(f"report data: {message}", hint="see ReportData in tunesmith.evaluate.report.data")



_ENGINE_NAMES = {"llamacpp": "llama.cpp"}


def engine_text(engine: Mapping[str, Any]) -> str:
    """"llama.cpp, f16 (model-f16.gguf) with GGUF adapter adapter-f16.gguf" or "transformers, float32": the
    file names only, since a report travels without the run directory its paths point into."""
    from pathlib import PurePath

    name = str(engine.get("engine") or "transformers")
    parts = [_ENGINE_NAMES.get(name, name)]
    detail = engine.get("quant") or engine.get("dtype")
    if name == "transformers" and engine.get("quant"):
        detail = f"weight-only {engine['quant']}"
    if detail:
        parts.append(str(detail) + (f" ({PurePath(str(engine['file'])).name})" if engine.get("file") else ""))
    text = ", ".join(parts)
    if engine.get("lora"):
        text += f" with GGUF adapter {PurePath(str(engine['lora'])).name}"
    return text
