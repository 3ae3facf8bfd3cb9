"""Layer x head heatmaps of head scores (matplotlib, Agg backend, imported lazily).

One panel helper draws every layer x head map (``gar patch`` heatmaps, the ``gar heads`` True /
False panels), so they share colour scale conventions and outlines.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable, Sequence


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def head_panel(fig: Any, ax: Any, scores: Any, outlined: Iterable[tuple[int, int]] = (), title: str = "",
               label: str | None = None, lw: float = 0.8) -> None:
    """One diverging layer x head map of ``scores`` [L, H] (symmetric colour range around 0),
    with the ``outlined`` (layer, head) cells boxed."""
    import numpy as np

    plt = pyplot()
    s = np.asarray(scores, dtype=float)
    n_layers, n_heads = s.shape
    lim = (float(np.nanmax(np.abs(s))) if np.isfinite(s).any() else 0.0) or 1.0
    im = ax.imshow(s, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    for layer, head in outlined:
        ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, lw=lw, ec="k"))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(0, n_layers, max(1, n_layers // 15)))
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label=label)


def save_png(fig: Any, path: str | Path) -> Path:
    """Render ``fig`` to PNG and write it atomically (no half-written image), then close it."""
    from .core.outputs import atomic_write

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    atomic_write(Path(path), buf.getvalue())
    return Path(path)


def heatmap(scores: Any, path: str | Path, title: str = "", checked: Any = None) -> Path:
    """Write a diverging layer x head heatmap of ``scores`` [L, H] to ``path`` (atomically).

    Heads where ``checked`` (an [L, H] array, NaN = unchecked) has a value are outlined.
    """
    import numpy as np

    n_layers, n_heads = np.asarray(scores).shape
    fig, ax = pyplot().subplots(figsize=(2.0 + 0.45 * n_heads, 1.5 + 0.22 * n_layers))
    outlined: Sequence[tuple[int, int]] = ()
    if checked is not None:
        outlined = list(zip(*np.where(~np.isnan(np.asarray(checked, dtype=float)))))
    head_panel(fig, ax, scores, outlined, title, label="AtP (metric change)")
    return save_png(fig, path)


__all__ = ["head_panel", "heatmap", "pyplot", "save_png"]
