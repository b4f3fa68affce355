"""Sweeps of `edgejpq search`: one run per value of one budget or of the strength, one Pareto plot.

`--flash 32KiB,48KiB,64KiB` (or `--weights`, `--ram`, `--latency-ms`, `--strength` with several comma-separated
values; one swept option at a time) runs the search once per value, each into its own run folder
`<output>/<option>-<value>/`, from the same float model, and writes `<output>/sweep.json` and
`<output>/pareto.png` (weight bytes against the integer model's test accuracy).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from edgejpq.artifact import atomic_write_bytes
from edgejpq.errors import EdgejpqError
from edgejpq.search.report import plot_pareto
from edgejpq.search.run import Budgets

@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its budgets and strength, and the folder it writes."""

    label: str  # "flash-16KiB"; "" for a single run
    budgets: Budgets
    strength: float


def _values(option: str, text: str | None) -> list[str]:
    if text is None:
        return []
    values = [v.strip() for v in text.split(",")]
    if any(not v for v in values):
        raise EdgejpqError(f"--{option} {text!r}: an empty value in the list")
    return values


def _float(option: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise EdgejpqError(f"--{option} {text!r}: expected a number") from None
    if value < 0:
        raise EdgejpqError(f"--{option} {text!r}: must not be negative")
    return value


def sweep_points(flash: str | None, weights: str | None, ram: str | None, latency_ms: str | None, strength: str,
                 parse_size: Callable[[str, str], int]) -> list[SweepPoint]:
    """The runs the options ask for: one, or one per value of the single option given as a list."""
    lists = {"flash": _values("flash", flash), "weights": _values("weights", weights), "ram": _values("ram", ram),
             "latency-ms": _values("latency-ms", latency_ms), "strength": _values("strength", strength)}
    swept = [name for name, values in lists.items() if len(values) > 1]
    if len(swept) > 1:
        raise EdgejpqError(f"sweep one option at a time: --{' and --'.join(swept)} both list several values")

    def point(values: dict[str, str], label: str) -> SweepPoint:
        return SweepPoint(label=label, budgets=Budgets(
            flash_bytes=parse_size(values["flash"], "--flash") if "flash" in values else None,
            weight_bytes=parse_size(values["weights"], "--weights") if "weights" in values else None,
            ram_bytes=parse_size(values["ram"], "--ram") if "ram" in values else None,
            latency_ms=_float("latency-ms", values["latency-ms"]) if "latency-ms" in values else None),
            strength=_float("strength", values["strength"]))

    single = {name: values[0] for name, values in lists.items() if values}
    if not swept:
        return [point(single, "")]
    name = swept[0]
    points = [point({**single, name: value}, f"{name}-{re.sub(r'[^A-Za-z0-9.]+', '_', value)}")
              for value in lists[name]]
    labels = [p.label for p in points]
    if len(set(labels)) != len(labels):
        raise EdgejpqError(f"--{name} {','.join(lists[name])}: a value is listed twice")
    return points


def pareto_point(point: SweepPoint, summary: dict[str, Any], method: str) -> dict[str, Any]:
    """The figures of one run that the sweep's table, JSON and plot show."""
    cost = summary["cost"]
    return {"label": point.label, "method": method, "weight_bytes": cost["weight_bytes"],
            "flash_bytes": cost["flash_bytes"], "arena_bytes": cost["arena_bytes"],
            "latency_ms": cost["latency_ms"], "accuracy": summary["accuracy_integer"],
            "accuracy_fake_quant": summary["accuracy_fake_quant"], "seconds": summary["seconds"],
            "strength": point.strength, "budgets": {k: v for k, v in vars(point.budgets).items() if v is not None}}


def write_sweep(output: Path, points: Sequence[dict[str, Any]], title: str) -> None:
    """`sweep.json` and `pareto.png` of a sweep folder (each written atomically)."""
    atomic_write_bytes(output / "sweep.json", json.dumps(list(points), indent=1).encode())
    plot_pareto(points, output / "pareto.png", title)
