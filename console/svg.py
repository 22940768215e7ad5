"""Directed graphs (a run's DAG, a version's lineage) as inline SVG, laid out here: layers by longest path from
the sources, left to right, each layer ordered by its predecessors' positions. No script and nothing fetched."""
from dataclasses import dataclass
from html import escape

COLORS = {"ran": "#2e7d32", "cached": "#5c7cba", "FAILED": "#c62828", "running": "#ef8f00", "canceled": "#757575",
          "new": "#757575", "artifact": "#8d6e63", "deleted": "#bdbdbd"}
WIDTH, HEIGHT, GAP_X, GAP_Y = 172, 46, 30, 14


@dataclass
class Node:
    key: str
    title: str
    subtitle: str
    kind: str                # a COLORS key: the execution's state, or artifact / deleted
    href: str | None = None


def layers(nodes: list[Node], edges: list[tuple[str, str]]) -> list[list[Node]]:
    by_key = {n.key: n for n in nodes}
    preds: dict[str, list[str]] = {n.key: [] for n in nodes}
    for a, b in edges:
        if a in by_key and b in by_key:
            preds[b].append(a)
    depth: dict[str, int] = {}

    def depth_of(key: str, seen: frozenset = frozenset()) -> int:
        if key not in depth:
            # A cycle cannot come from ML Metadata's events; guard anyway rather than recurse forever.
            depth[key] = 1 + max((depth_of(p, seen | {key}) for p in preds[key] if p not in seen), default=-1)
        return depth[key]

    grouped: dict[int, list[Node]] = {}
    for n in nodes:
        grouped.setdefault(depth_of(n.key), []).append(n)
    ordered, position = [], {}
    for d in sorted(grouped):
        layer = sorted(grouped[d], key=lambda n: (sum(position.get(p, 0) for p in preds[n.key])
                                                  / max(len(preds[n.key]), 1), n.title))
        position.update({n.key: i for i, n in enumerate(layer)})
        ordered.append(layer)
    return ordered


def render(nodes: list[Node], edges: list[tuple[str, str]], label: str) -> str:
    """An <svg> of the graph; each node a box (coloured by kind, a link when it has an href), each edge an arrow."""
    placed = layers(nodes, edges)
    rows = max((len(layer) for layer in placed), default=0)
    width = len(placed) * (WIDTH + GAP_X) - GAP_X + 20
    height = rows * (HEIGHT + GAP_Y) - GAP_Y + 20
    at = {}
    for i, layer in enumerate(placed):
        offset = (rows - len(layer)) * (HEIGHT + GAP_Y) / 2  # each layer centred vertically
        for j, n in enumerate(layer):
            at[n.key] = (10 + i * (WIDTH + GAP_X), 10 + offset + j * (HEIGHT + GAP_Y))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" role="img" aria-label="{escape(label)}" '
             f'width="{max(width, 0)}" height="{max(height, 0)}" viewBox="0 0 {max(width, 0)} {max(height, 0)}" '
             'font-family="sans-serif" font-size="11.5">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#666"/></marker></defs>']
    for a, b in edges:
        if a in at and b in at:
            (x1, y1), (x2, y2) = at[a], at[b]
            x1, y1, y2 = x1 + WIDTH, y1 + HEIGHT / 2, y2 + HEIGHT / 2
            mid = (x1 + x2) / 2
            parts.append(f'<path class="edge" d="M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} '
                         f'{x2:.0f},{y2:.0f}" fill="none" stroke="#666" marker-end="url(#arrow)"/>')
    for n in nodes:
        x, y = at[n.key]
        color = COLORS.get(n.kind, "#757575")
        box = (f'<g class="node" data-node="{escape(n.title)}" data-kind="{escape(n.kind)}">'
               f'<rect x="{x:.0f}" y="{y:.0f}" width="{WIDTH}" height="{HEIGHT}" rx="6" fill="#fff" '
               f'stroke="{color}" stroke-width="2.5"/>'
               f'<rect x="{x:.0f}" y="{y:.0f}" width="8" height="{HEIGHT}" rx="3" fill="{color}"/>'
               f'<text x="{x + 16:.0f}" y="{y + 19:.0f}" font-weight="bold">{escape(n.title[:24])}</text>'
               f'<text x="{x + 16:.0f}" y="{y + 36:.0f}" fill="#444">{escape(n.subtitle[:28])}</text>'
               f'<title>{escape(n.title)}: {escape(n.subtitle)}</title></g>')
        parts.append(f'<a href="{escape(n.href)}">{box}</a>' if n.href else box)
    return "".join(parts) + "</svg>"
