"""Charts for the offline reports, model cards and the console: matplotlib figures rendered to inline SVG.

Text is drawn as paths (matplotlib's default svg.fonttype), so a page needs no font, script or image from anywhere;
ids are salted with a constant, so the same figure gives the same bytes (a re-run rewrites nothing that changed)."""
import io

import matplotlib
from matplotlib.figure import Figure

matplotlib.rcParams["svg.hashsalt"] = "tfx-e2e"


def figure(width: float = 6.0, height: float = 3.2) -> Figure:
    """A figure outside pyplot's global state (safe from threads; nothing to close)."""
    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig: Figure) -> str:
    """The figure as an <svg> element to inline in HTML (no XML declaration or DOCTYPE)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]
