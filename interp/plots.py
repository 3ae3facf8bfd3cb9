"""Layer x head heatmaps of patching scores (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any


def heatmap(scores: Any, path: str | Path, title: str = "", checked: Any = None) -> Path:
    """Write a diverging layer x head heatmap of ``scores`` [L, H] to ``path`` (atomically).

    Heads where ``checked`` (an [L, H] array, NaN = unchecked) has a value are outlined.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .run import _atomic_write

    s = np.asarray(scores, dtype=float)
    n_layers, n_heads = s.shape
    lim = float(np.nanmax(np.abs(s))) or 1.0
    fig, ax = plt.subplots(figsize=(2.0 + 0.45 * n_heads, 1.5 + 0.22 * n_layers))
    im = ax.imshow(s, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    if checked is not None:
        for layer, head in zip(*np.where(~np.isnan(np.asarray(checked, dtype=float)))):
            ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, lw=0.8, ec="k"))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(0, n_layers, max(1, n_layers // 15)))
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label="AtP (metric change)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic_write(Path(path), buf.getvalue())
    return Path(path)
