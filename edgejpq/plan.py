"""PrecisionPlan (`plan.json`): per layer, the bit-width of every output channel (0 = pruned).

It is the contract between the search and everything after it, and a user may write or edit it
by hand. Layers are named by the model's module names (`features.0`, `stack2.conv1`). Shorthand
specs build uniform plans: `uniform:8`, `uniform:4`, `uniform:2`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from edgejpq.artifact import atomic_write_bytes
from edgejpq.errors import EdgejpqError
from edgejpq.graph import FloatGraph

FORMAT = "edgejpq.precision_plan"
SCHEMA_VERSION = 1
CHANNEL_BITS = (0, 2, 4, 8)
ACTIVATION_BITS = (8,)


@dataclass(frozen=True)
class LayerPlan:
    bits: tuple[int, ...]  # one entry per output channel of the float layer, 0 = pruned
    activation_bits: int = 8

    @property
    def kept(self) -> int:
        return sum(1 for b in self.bits if b)


@dataclass(frozen=True)
class PrecisionPlan:
    layers: Mapping[str, LayerPlan]

    def to_json(self) -> str:
        body = {"format": FORMAT, "schema_version": SCHEMA_VERSION,
                "layers": {name: {"bits": list(lp.bits), "activation_bits": lp.activation_bits}
                           for name, lp in self.layers.items()}}
        return json.dumps(body, indent=1)

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_bytes(Path(path), self.to_json().encode())

    def summary(self) -> dict[str, dict[str, int]]:
        """Per layer: kept channels and how many channels have each bit-width."""
        return {name: {"channels": len(lp.bits), "kept": lp.kept,
                       **{f"w{b}": sum(1 for x in lp.bits if x == b) for b in CHANNEL_BITS}}
                for name, lp in self.layers.items()}


def uniform_plan(graph: FloatGraph, bits: int) -> PrecisionPlan:
    if bits not in CHANNEL_BITS[1:]:
        raise EdgejpqError(f"uniform plan bits must be one of {CHANNEL_BITS[1:]}, got {bits}")
    return PrecisionPlan({layer.name: LayerPlan((bits,) * layer.out_channels) for layer in graph.weighted})


def load_plan(spec: str, graph: FloatGraph) -> PrecisionPlan:
    """A plan from `uniform:B` or a plan.json path, validated against the model's layers."""
    if spec.startswith("uniform:"):
        value = spec.split(":", 1)[1]
        if not value.isdigit():
            raise EdgejpqError(f"plan {spec!r}: expected uniform:8, uniform:4 or uniform:2")
        return uniform_plan(graph, int(value))
    path = Path(spec)
    if not path.is_file():
        raise EdgejpqError(f"plan {spec}: no such file (use a plan.json path or uniform:8|4|2)")
    try:
        body = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgejpqError(f"{path}: not a readable JSON plan ({exc})") from None
    return load_plan_body(body, graph, where=str(path))


def load_plan_body(body: object, graph: FloatGraph, where: str) -> PrecisionPlan:
    """Validate a parsed plan.json body against the model's layers."""
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise EdgejpqError(f"{where}: field format must be {FORMAT!r}")
    if body.get("schema_version") != SCHEMA_VERSION:
        raise EdgejpqError(f"{where}: field schema_version is {body.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    layers = body.get("layers")
    if not isinstance(layers, dict):
        raise EdgejpqError(f"{where}: field layers must be an object of layer name → {{bits, activation_bits}}")
    parsed = {}
    for name, entry in layers.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("bits"), list):
            raise EdgejpqError(f"{where}: layers.{name}.bits must be a list of per-channel bit-widths")
        bits = entry["bits"]
        bad = [b for b in bits if b not in CHANNEL_BITS or isinstance(b, bool)]
        if bad:
            raise EdgejpqError(f"{where}: layers.{name}.bits holds {bad[0]!r}; allowed {CHANNEL_BITS}")
        act = entry.get("activation_bits", 8)
        if act not in ACTIVATION_BITS:
            raise EdgejpqError(f"{where}: layers.{name}.activation_bits is {act!r}; supported {ACTIVATION_BITS}")
        parsed[name] = LayerPlan(tuple(int(b) for b in bits), int(act))
    plan = PrecisionPlan(parsed)
    check_plan_matches(plan, graph, where=where)
    return plan


def check_plan_matches(plan: PrecisionPlan, graph: FloatGraph, where: str = "plan") -> None:
    names = [layer.name for layer in graph.weighted]
    unknown = sorted(set(plan.layers) - set(names))
    if unknown:
        raise EdgejpqError(f"{where}: layer {unknown[0]!r} is not a conv/linear layer of the model "
                           f"(its layers: {', '.join(names)})")
    for layer in graph.weighted:
        if layer.name not in plan.layers:
            raise EdgejpqError(f"{where}: layer {layer.name!r} has no entry")
        bits = plan.layers[layer.name].bits
        if len(bits) != layer.out_channels:
            raise EdgejpqError(f"{where}: layers.{layer.name}.bits has {len(bits)} entries, the layer has "
                               f"{layer.out_channels} output channels")
        if not any(bits):
            raise EdgejpqError(f"{where}: layer {layer.name!r} prunes every channel")
        if layer.output == graph.output and not all(bits):
            raise EdgejpqError(f"{where}: layer {layer.name!r} produces the model output; its channels cannot be pruned")
