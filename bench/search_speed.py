"""Wall time of the joint search against uniform 8-bit QAT, measured side by side.

The issue's third Pareto target: search plus fine-tuning takes at most 1.5x the wall time of the
uniform 8-bit QAT on the same number of epochs. Whole runs (bench/pareto.py) share the machine
with whatever else runs, so their wall times compare badly; this measures the three kinds of
epoch interleaved, round after round, on one slice of the training set, so every kind sees the
same load:
  uniform-8  quantization-aware training of the uniform 8-bit plan (what bench/pareto.py's
             uniform points run for all their epochs);
  search     the joint search (sampled choices, cost model, budget penalty);
  finetune   quantization-aware fine-tuning of the plan the search reached in its first round
             (not repaired to the budget: the cost of a batch barely depends on that).
Each epoch of a run is one pass over the slice through edgejpq's own Trainer (its per-epoch check
on `--eval-samples` test images and exact cost included). The ratio is that of the protocol:
(search_epochs x search + finetune_epochs x finetune) / ((search_epochs + finetune_epochs) x uniform-8),
from the median seconds per batch. Prints a table and, last, one JSON line.

    python bench/search_speed.py [--model resnet8] [--float-checkpoint F.pt] [--budget 0.47] [--rounds 3]
                                 [--pin-input] [--bits 2,8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from edgejpq.artifact import atomic_write_bytes
from edgejpq.cli import bit_widths
from edgejpq.cost.target import load_target
from edgejpq.data import calibration_subset, load_dataset
from edgejpq.errors import EdgejpqError
from edgejpq.graph import build_float_graph
from edgejpq.plan import uniform_plan
from edgejpq.quant.integerize import calibrate
from edgejpq.search.cost import CostModel
from edgejpq.search.groups import channel_groups
from edgejpq.search.run import Budgets, Evaluator, SearchConfig, Trainer, pinned_layers
from edgejpq.search.space import SearchableGraph
from edgejpq.train import load_float_checkpoint
from edgejpq.zoo import build_model

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet8")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--target", default="cortex-m4")
    parser.add_argument("--float-checkpoint", type=Path, default=None,
                        help="a float model of --model on --data (default: untrained weights)")
    parser.add_argument("--budget", type=float, default=0.47, help="flash budget, fraction of uniform 8-bit")
    parser.add_argument("--batches", type=int, default=40, help="batches per measured epoch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--search-epochs", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=6)
    parser.add_argument("--pin-input", action="store_true",
                        help="search with the layers that read the input pinned at the widest of --bits "
                             "(search --pin-input)")
    parser.add_argument("--bits", default="2,4,8", help="the bit-widths the search may use (search --bits)")
    parser.add_argument("--eval-samples", type=int, default=170,
                        help="test images checked after each measured epoch (a full Fashion-MNIST epoch of 469 "
                             "batches checks 2,000: 170 keeps that share at 40 batches)")
    args = parser.parse_args()
    try:
        choices = bit_widths(args.bits)  # the CLI's parser and SearchConfig's check: refused before any work
        SearchConfig(choices=choices)
    except EdgejpqError as error:
        parser.error(str(error))
    console = Console(width=160)
    ds = load_dataset(args.data)
    if args.float_checkpoint is not None:
        net, _ = load_float_checkpoint(args.float_checkpoint)
    else:
        net = build_model(f"zoo:{args.model}", ds.input_shape, ds.num_classes, seed=0)
    graph = build_float_graph(net, ds.input_shape)
    target = load_target(args.target)
    calib = calibration_subset(ds, 1000, seed=0)
    evaluator = Evaluator(graph, calibrate(graph, calib), target)
    full = uniform_plan(graph, 8)
    budget = Budgets(flash_bytes=int(args.budget * evaluator.cost(full).flash_bytes))
    config = SearchConfig(budgets=budget, eval_samples=args.eval_samples, pin_input=args.pin_input, choices=choices)
    pinned = pinned_layers(graph, config)
    n = args.batches * config.batch_size
    sliced = replace(ds, x_train=ds.x_train[:n], y_train=ds.y_train[:n])
    trainer = Trainer(sliced, target, config, evaluator, None)
    groups = channel_groups(graph)

    uniform = SearchableGraph(graph, groups)
    uniform.prepare_finetune(full, calib, batch_norm=config.batch_norm)
    joint = SearchableGraph(graph, groups, choices=choices, pinned=pinned)
    cost_model = CostModel(joint, target, evaluator.model(full), evaluator.ranges)
    finetune: SearchableGraph | None = None
    finetune_plan = None
    seconds: dict[str, list[float]] = {"uniform-8": [], "search": [], "finetune": []}
    for r in range(args.rounds):
        for kind in seconds:
            start = time.perf_counter()
            if kind == "uniform-8":
                trainer.run(uniform, "finetune", 1, search=False, cost_model=None)
            elif kind == "search":
                trainer.run(joint, "search", 1, search=True, cost_model=cost_model)
            else:
                if finetune is None:
                    finetune_plan = joint.discrete_plan()
                    finetune = SearchableGraph(joint.trained_graph(), groups, choices=choices, pinned=pinned)
                    finetune.prepare_finetune(finetune_plan, calib, batch_norm=config.batch_norm)
                trainer.run(finetune, "finetune", 1, search=False, cost_model=None)
            seconds[kind].append((time.perf_counter() - start) / args.batches)
            console.print(f"round {r + 1}/{args.rounds} {kind}: {1000 * seconds[kind][-1]:.0f} ms per batch")
    per_batch = {kind: statistics.median(values) for kind, values in seconds.items()}
    epochs = args.search_epochs + args.finetune_epochs
    ratio = (args.search_epochs * per_batch["search"] + args.finetune_epochs * per_batch["finetune"]) / (
        epochs * per_batch["uniform-8"])
    table = Table(title=f"search speed: {args.model} on {args.data}, {target.name}, "
                        f"{args.batches} batches of {config.batch_size} per epoch, {args.rounds} rounds")
    for column in ("epoch kind", "median ms per batch", "each round (ms)"):
        table.add_column(column)
    for kind, values in seconds.items():
        table.add_row(kind, f"{1000 * per_batch[kind]:.0f}", " ".join(f"{1000 * v:.0f}" for v in values))
    console.print(table)
    console.print(f"joint ({args.search_epochs} search + {args.finetune_epochs} fine-tune) over uniform-8 QAT "
                  f"({epochs} epochs), bits {args.bits}{' with ' + ', '.join(pinned) + ' pinned' if pinned else ''}: "
                  f"{ratio:.2f} (target <= 1.5)")
    payload = {"benchmark": "search_speed", "model": args.model, "data": args.data, "target": target.name,
               "batches": args.batches, "rounds": args.rounds, "search_epochs": args.search_epochs,
               "finetune_epochs": args.finetune_epochs, "bits": list(choices), "pinned": pinned,
               "per_batch_seconds": per_batch, "rounds_seconds": seconds,
               "finetune_plan": None if finetune_plan is None else finetune_plan.summary(),
               "joint_over_uniform8": round(ratio, 3), "torch_threads": torch.get_num_threads()}
    OUT.mkdir(exist_ok=True)
    widths = "" if choices == SearchConfig.choices else "_bits" + "".join(map(str, choices))
    name = f"search_speed_{args.model}{widths}{'_pinned' if pinned else ''}.json"
    atomic_write_bytes(OUT / name, json.dumps(payload, indent=1).encode())
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
