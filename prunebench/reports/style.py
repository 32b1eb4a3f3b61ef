"""What every report figure shares: one colour per method, PNG encoding."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

METHOD_COLORS = {"dense": "black", "vpp": "tab:red", "dynamicvit": "tab:blue", "tps": "tab:green", "svit": "tab:purple",
                 "evit": "tab:orange", "tome": "tab:brown", "random": "tab:gray", "oracle": "tab:olive"}


def method_color(method: str) -> str:
    """The method's colour in every figure (grey for unknown methods)."""
    return METHOD_COLORS.get(method, "tab:cyan")


def png_bytes(figure: plt.Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
