"""The tables `bench/run.py` prints: one value column per server (side), ratio columns between
sides, and the targets those ratios are held to.

Sides are Portway with security on (a bearer token, as docker uses it), Portway with security
off, and distribution; a run has two or three of them. The targets against distribution apply
to the first Portway side (security on when it runs); the security on/off target applies to
the ratio between the two Portway sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rows import ROWS, Row


@dataclass(frozen=True)
class Side:
    key: str  # the Target's name and the results' key
    label: str  # column head


@dataclass(frozen=True)
class Ratio:
    """The ratio `num`/`den` of two sides' values, held to the row's target of `kind`."""

    head: str
    num: str
    den: str
    kind: str  # "dist": Row.target, "off": Row.vs_off, "": no target

    def target(self, rowdef: Row) -> float | None:
        if self.kind == "dist":
            return rowdef.target
        if self.kind == "off":
            return rowdef.vs_off
        return None


ON = Side("portway-on", "Portway (security on)")
OFF = Side("portway-off", "Portway (security off)")
DIST = Side("distribution", "distribution 2.8")


def layout(security: str, self_check: bool = False) -> tuple[list[Side], list[Ratio]]:
    """The sides and ratio columns of a run with `--security on|off|both`."""
    if self_check:
        twin = Side("distribution-b", "distribution (2nd)")
        return [twin, DIST], [Ratio("ratio", twin.key, DIST.key, "dist")]
    if security == "on":
        return [ON, DIST], [Ratio("on/dist", ON.key, DIST.key, "dist")]
    if security == "off":
        return [OFF, DIST], [Ratio("off/dist", OFF.key, DIST.key, "dist")]
    return [ON, OFF, DIST], [
        Ratio("on/dist", ON.key, DIST.key, "dist"),
        Ratio("off/dist", OFF.key, DIST.key, ""),
        Ratio("on/off", ON.key, OFF.key, "off"),
    ]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def ratio_value(res: dict[str, Any], num: str, den: str) -> float | None:
    p, d = res.get(num), res.get(den)
    if not isinstance(p, dict) or not isinstance(d, dict) or not d["value"]:
        return None
    return float(p["value"]) / float(d["value"])


def judge(res: dict[str, Any], rowdef: Row, ratios: list[Ratio]) -> dict[str, Any]:
    """Every ratio of a row and, where the row has a target for it, whether it is met."""
    out: dict[str, Any] = {"ratios": {}, "met": {}}
    for r in ratios:
        value = ratio_value(res, r.num, r.den)
        out["ratios"][r.head] = value
        goal = r.target(rowdef)
        if goal is not None:
            out["met"][r.head] = None if value is None else rowdef.met(value, goal)
    return out


def render(head: list[str], body: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in body]
        return lines
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _yes(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "no")


def table_lines(
    results: dict[str, dict[str, Any]],
    markdown: bool,
    sides: list[Side],
    ratios: list[Ratio],
) -> list[str]:
    targeted = [r for r in ratios if r.kind]
    head = ["row", "unit", *(s.label for s in sides), *(r.head for r in ratios)]
    for r in targeted:
        head += [f"target {r.head}", "met"]
    body = []
    for name, res in results.items():
        rowdef = ROWS[name]
        cells = [f"{name} ({rowdef.title})" if markdown else name, rowdef.unit]
        for side in sides:
            v = res.get(side.key)
            cells.append(fmt(v["value"], rowdef.unit) if isinstance(v, dict) else "ERR")
        for r in ratios:
            value = res["ratios"].get(r.head)
            cells.append(f"{value:.2f}x" if value is not None else "-")
        for r in targeted:
            goal = r.target(rowdef)
            cells += [rowdef.target_text(goal) if goal is not None else "-"]
            cells += [_yes(res["met"].get(r.head))]
        body.append(cells)
    return render(head, body, markdown)


def cost_lines(
    results: dict[str, dict[str, Any]], markdown: bool, sides: list[Side], ratios: list[Ratio]
) -> list[str]:
    """Server CPU per unit of work: what each side spent, whatever else the machine did."""
    head = ["row", "server CPU", *(s.label for s in sides), *(r.head for r in ratios)]
    body = []
    for name, res in results.items():
        rowdef = ROWS[name]
        costs: dict[str, float | None] = {}
        for side in sides:
            v = res.get(side.key)
            costs[side.key] = v.get("cost") if isinstance(v, dict) else None
        if all(c is None for c in costs.values()):
            continue
        cells = [name, rowdef.cost_unit]
        cells += ["-" if costs[s.key] is None else f"{costs[s.key]:.3g}" for s in sides]
        for r in ratios:
            p, d = costs[r.num], costs[r.den]
            cells.append(f"{p / d:.2f}x" if p is not None and d else "-")
        body.append(cells)
    return render(head, body, markdown)
