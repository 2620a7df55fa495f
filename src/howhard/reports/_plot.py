"""The figure conventions every report shares (siblings of this package use it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_plot(fig: Any, ax: Any, path: str | Path) -> Path:
    """Grid, legend, tight layout; write ``path`` (PNG, 120 dpi) and free the figure."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (imported here, not at import time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
