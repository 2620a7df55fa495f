"""Reports of evaluations, comparisons and routing evaluations: Markdown, plots and JSON.

The computations (`howhard.evaluate`, `howhard.compare`, `howhard.routing`) return dataclasses;
this package turns them into text and figures. JSON goes through one function, `json_ready`,
so no report carries NaN or Infinity (which are not JSON): an undefined number is ``null``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from howhard.reports.comparison import comparison_markdown, comparison_plot
from howhard.reports.evaluation import evaluation_markdown, evaluation_plot
from howhard.reports.menu import (
    menu_evaluation_markdown,
    menu_evaluation_plot,
    menu_markdown,
    menu_plot,
)
from howhard.reports.routing import routing_markdown, routing_plot

__all__ = [
    "comparison_markdown",
    "comparison_plot",
    "evaluation_markdown",
    "evaluation_plot",
    "json_ready",
    "menu_evaluation_markdown",
    "menu_evaluation_plot",
    "menu_markdown",
    "menu_plot",
    "routing_markdown",
    "routing_plot",
    "write_report",
]


def json_ready(x: Any) -> Any:
    """``x`` as plain JSON data: dataclasses as dicts, tuples and arrays as lists, numpy scalars
    as Python numbers, and every non-finite float (NaN, ±Infinity: undefined) as None."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_ready(v) for v in x]
    return x


def write_report(
    out_dir: str | os.PathLike[str], md: str, data: Any, draw: Callable[[Path], Any]
) -> Path:
    """Write ``out_dir``/report.md (``md`` and a link to the plot), report.json
    (``json_ready(data)``, indented) and plot.png (``draw(path)``); returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(md + "\n![plot](plot.png)\n")
    (out / "report.json").write_text(json.dumps(json_ready(data), indent=2, allow_nan=False) + "\n")
    draw(out / "plot.png")
    return out
