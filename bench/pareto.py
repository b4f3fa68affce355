"""Pareto front on Fashion-MNIST: joint search against uniform 8/4/2-bit QAT and two-stage.

Protocol (issue "Joint channel pruning and channel-wise mixed-precision search"):
  float pre-training  --pretrain-epochs (6), Adam 1e-3, cosine
  uniform 8/4/2       QAT for --uniform-epochs (4) from the float model
  joint, two-stage    --search-epochs + --finetune-epochs (at most 8 together) from the same
                      float model, at flash budgets that are fractions of the uniform 8-bit
                      model's flash (--budgets; none: no flash budget), and optionally a
                      budget on the weight bytes alone, a fraction of its weight bytes
                      (--weight-budget)
Every point is the exported integer model: weight bytes of the .ejq and accuracy of the
integer reference over the whole test set (the host C is bit-exact with it; the tests prove
that, and --emulate re-checks every point through the host C). Prints a table, writes
bench/out/pareto_<model>.png and .json, and prints one JSON line last.

    python bench/pareto.py --model resnet8 [--budgets 0.35,0.47] [--emulate] [--float-checkpoint F.pt]

The points of one protocol can be measured by several processes (one core each) and merged:

    python bench/pareto.py --model resnet8 --methods uniform --float-checkpoint F.pt --out a.json
    python bench/pareto.py --model resnet8 --methods joint,two-stage --float-checkpoint F.pt --out b.json
    python bench/pareto.py --model resnet8 --combine a.json,b.json

Files of several seeds (their protocols equal but for --seed) merge too: the verdict is then
given per seed and on the mean of the seeds (accuracy and weight bytes of each label averaged
over the seeds that all measured it), the plot shows those means.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

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
from edgejpq.search.report import plot_pareto
from edgejpq.search.run import Budgets, Evaluator, SearchConfig, run_search
from edgejpq.train import evaluate, load_float_checkpoint, save_float_checkpoint, train_float
from edgejpq.zoo import build_model

OUT = Path(__file__).parent / "out"
SPLIT = ("search_epochs", "finetune_epochs")  # per point: the protocol fixes only their sum's bound
MET = "weight_reduction_target_met (>= 0.70 within 0.5 pt)"  # the accuracy-size target, in the verdict
METHODS = ("uniform", "uniform-8", "uniform-4", "uniform-2", "joint", "two-stage")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet8")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--target", default="cortex-m4")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--uniform-epochs", type=int, default=4)
    # ResNet-8 joint @ 0.47: 3 + 5 gave 91.14%, 2 + 6 gave 91.30% (the fine-tuning was still gaining);
    # @ 0.44, seeds 0 / 1: 1 + 7 gave 90.56 / 90.77%, 2 + 6 90.86 / 91.13%. DS-CNN joint @ 0.66, seeds 0 / 1:
    # 1 + 7 gave 89.30 / 89.51%, 2 + 6 88.64 / 88.73%: the README's DS-CNN points pass
    # --search-epochs 1 --finetune-epochs 7 (the default stays 2 + 6, edgejpq search's)
    parser.add_argument("--search-epochs", type=int, default=SearchConfig.search_epochs)
    parser.add_argument("--finetune-epochs", type=int, default=SearchConfig.finetune_epochs)
    parser.add_argument("--budgets", default="0.35,0.47",
                        help="flash budgets as fractions of uniform 8-bit's flash (search --flash), one point each; "
                             "none: no flash budget (then give --weight-budget)")
    parser.add_argument("--weight-budget", type=float, default=None,
                        help="a budget on the packed weights alone on every point, as a fraction of uniform 8-bit's "
                             "weight bytes (search --weights: kernel code does not count against it)")
    parser.add_argument("--bits", default="2,4,8", help="the bit-widths joint and two-stage may use (search --bits)")
    parser.add_argument("--methods", default="uniform,joint,two-stage",
                        help=f"comma-separated, from {', '.join(METHODS)} (uniform: all three widths)")
    parser.add_argument("--emulate", action=argparse.BooleanOptionalAction, default=True,
                        help="run every point's test set through the host C and check it bit-exact (default)")
    parser.add_argument("--distill", type=float, default=0.0,
                        help="every method's distillation share of the task loss (search --distill)")
    parser.add_argument("--learn-steps", action=argparse.BooleanOptionalAction, default=True,
                        help="fine-tuning trains the weight steps (search --learn-steps), in every method")
    parser.add_argument("--pin-input", action=argparse.BooleanOptionalAction, default=SearchConfig.pin_input,
                        help="joint and two-stage keep the input layers at the widest bit-width (search --pin-input)")
    parser.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=SearchConfig.batch_norm,
                        help="fine-tuning puts a batch norm back after every convolution (search --batch-norm), in "
                             "every method")
    parser.add_argument("--trial-batches", type=int, default=SearchConfig.trial_batches,
                        help="joint and two-stage: weight-training steps each candidate of the variant exchange "
                             "gets before it is judged (search --trial-batches)")
    parser.add_argument("--lr", type=float, default=SearchConfig.lr,
                        help="every method's Adam learning rate of the weights after pre-training (search --lr)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float-checkpoint", type=Path, default=None,
                        help="reuse this float model if it exists (its pre-training time is read from it), "
                             "else pre-train and save it there")
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON to write (default bench/out/pareto_<model>.json)")
    parser.add_argument("--combine", default=None,
                        help="comma-separated JSONs of earlier runs of one protocol: merge their points, "
                             "print the table and verdict, write the JSON and plot")
    args = parser.parse_args()
    try:
        args.bits = bit_widths(args.bits)  # the CLI's parser and SearchConfig's check: refused before any training
        SearchConfig(choices=args.bits)
    except EdgejpqError as error:
        parser.error(str(error))
    try:
        args.budgets = [None] if args.budgets == "none" else [float(f) for f in args.budgets.split(",")]
    except ValueError:
        parser.error(f"--budgets {args.budgets!r}: expected fractions such as 0.35,0.47, or none")
    if args.budgets == [None] and args.weight_budget is None and not args.combine and {"joint", "two-stage"} & set(
            args.methods.split(",")):
        parser.error("--budgets none: give --weight-budget, or the search has no budget")
    OUT.mkdir(exist_ok=True)
    console = Console(width=200)
    out = args.out or OUT / f"pareto_{args.model}.json"
    if args.combine:
        payload = _combine([Path(f) for f in args.combine.split(",")])
    else:
        payload = _measure(args, console, out)
    _report(payload, console, out)


def _measure(args: argparse.Namespace, console: Console, out: Path) -> dict:
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    ds = load_dataset(args.data)
    target = load_target(args.target)
    if args.float_checkpoint is not None and args.float_checkpoint.exists():
        net, meta = load_float_checkpoint(args.float_checkpoint)
        if meta["model_spec"] != f"zoo:{args.model}" or meta["data_spec"] != args.data or \
                len(meta["history"]) != args.pretrain_epochs:
            raise SystemExit(f"{args.float_checkpoint}: a float model of {meta['model_spec']} on {meta['data_spec']} "
                             f"after {len(meta['history'])} epochs, not the one this protocol asks for")
        float_seconds = float(meta["history"][-1].get("seconds", float("nan")))
        console.print(f"float model from {args.float_checkpoint} ({float_seconds:.0f} s of pre-training)")
    else:
        net = build_model(f"zoo:{args.model}", ds.input_shape, ds.num_classes, seed=args.seed)
        start = time.perf_counter()
        history = train_float(net, ds, epochs=args.pretrain_epochs, lr=1e-3, seed=args.seed,
                              on_epoch=lambda e, loss, acc: console.print(
                                  f"float epoch {e}: loss {loss:.4f} test {100 * acc:.2f}%"))
        float_seconds = time.perf_counter() - start
        if args.float_checkpoint is not None:
            history[-1]["seconds"] = round(float_seconds, 1)
            save_float_checkpoint(args.float_checkpoint, net, model_spec=f"zoo:{args.model}", data_spec=args.data,
                                  input_shape=ds.input_shape, num_classes=ds.num_classes, history=history)
    float_acc = evaluate(net, ds.x_test, ds.y_test)
    graph = build_float_graph(net, ds.input_shape)
    # the budgets are fractions of the uniform 8-bit model's flash or weight bytes, which its plan alone fixes
    calib = calibrate(graph, calibration_subset(ds, 1000, seed=args.seed))
    uniform8 = Evaluator(graph, calib, target).cost(uniform_plan(graph, 8))
    protocol = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                if k not in ("out", "combine", "methods", "budgets", "weight_budget", "bits", "emulate", "trial_batches",
                             "pin_input", *SPLIT)}
    payload = {"benchmark": "pareto", "model": args.model, "data": args.data, "target": target.name,
               "float_accuracy": float_acc, "pretrain_seconds": round(float_seconds, 1), "protocol": protocol,
               "uniform8_flash_bytes": uniform8.flash_bytes, "complete": False, "points": []}

    bits = ",".join(map(str, args.bits))

    def record(method: str, label: str, config: SearchConfig) -> None:
        result = run_search(graph, ds, target, config, on_epoch=lambda r: console.print(
            f"  {label} {r.stage} {r.epoch}: acc {100 * r.test_accuracy:.2f}% flash {r.flash_bytes} B "
            f"({r.seconds:.0f} s)"))
        point = {"method": method, "label": label, "weight_bytes": result.model.weight_bytes,
                 "flash_bytes": result.cost.flash_bytes, "arena_bytes": result.cost.arena_bytes,
                 "latency_ms": round(result.cost.latency_ms, 3), "accuracy": result.accuracy_integer,
                 "accuracy_fake_quant": result.accuracy_fake_quant, "epochs": len(result.history),
                 "seconds": round(result.seconds, 1), "variant_exchanges": result.variant_exchanges,
                 "budget_flash_bytes": config.budgets.flash_bytes, "budget_weight_bytes": config.budgets.weight_bytes,
                 "seed": args.seed, "plan": result.plan.summary(),
                 **({k: getattr(args, k) for k in SPLIT} | {"bits": bits, "trial_batches": config.trial_batches,
                                                            "pin_input": config.pin_input}
                    if method != "uniform" else {})}
        if args.emulate:
            from edgejpq.emulate.host import emulate_host
            from edgejpq.quant.integerize import quantize_input

            with tempfile.TemporaryDirectory() as tmp:
                emulation = emulate_host(result.model, quantize_input(result.model, ds.x_test), Path(tmp))
            point["host_c_bit_exact"] = emulation.bit_exact
        console.print(f"{label}: { {k: v for k, v in point.items() if k != 'plan'} }")
        payload["points"].append(point)
        atomic_write_bytes(out, json.dumps(payload, indent=1).encode())  # a cut-short run keeps what it measured

    for width in (8, 4, 2):
        if "uniform" in methods or f"uniform-{width}" in methods:
            record("uniform", f"uniform-{width}", SearchConfig(method="uniform", bits=width, search_epochs=0,
                                                             finetune_epochs=args.uniform_epochs, seed=args.seed,
                                                             distill=args.distill, learn_steps=args.learn_steps,
                                                             batch_norm=args.batch_norm,
                                                             lr=args.lr))
    widths = ("" if args.bits == SearchConfig.choices else f" bits {bits}") + (" pinned" if args.pin_input else "")
    weights = None if args.weight_budget is None else int(args.weight_budget * uniform8.weight_bytes)
    for fraction in args.budgets:
        budget = Budgets(flash_bytes=None if fraction is None else int(fraction * uniform8.flash_bytes),
                         weight_bytes=weights)
        at = ("" if fraction is None else f"@{fraction:.2f}") + (
            "" if weights is None else f" weights {args.weight_budget:.2f}")
        for method in ("joint", "two-stage"):
            if method in methods:
                record(method, f"{method}{at} {args.search_epochs}+{args.finetune_epochs}{widths}",
                       SearchConfig(method=method, search_epochs=args.search_epochs,
                                    finetune_epochs=args.finetune_epochs, budgets=budget, seed=args.seed,
                                    choices=args.bits, distill=args.distill, learn_steps=args.learn_steps,
                                    batch_norm=args.batch_norm, pin_input=args.pin_input,
                                    trial_batches=args.trial_batches, lr=args.lr))
    payload["complete"] = True
    return payload


def _combine(files: list[Path]) -> dict:
    """One payload from the JSONs of several processes that ran parts of the same protocol."""
    parts = [json.loads(f.read_text()) for f in files]
    for part in parts:  # a point records its own search / fine-tune split (older files: in the protocol)
        split = {k: part["protocol"].pop(k) for k in SPLIT if k in part["protocol"]}
        part["protocol"].setdefault("distill", 0.0)  # files from before --distill trained on the labels only
        part["protocol"].setdefault("learn_steps", False)  # and before --learn-steps kept the least-error steps
        part["protocol"].setdefault("batch_norm", False)  # and before --batch-norm fine-tuned the folded graph
        part["protocol"].setdefault("lr", 1e-3)  # and before --lr trained at 1e-3
        for point in part["points"]:
            point.setdefault("seed", part["protocol"]["seed"])  # points record their seed since 2026-11-28
            # (a merged file's protocol lists its seeds; its points have theirs)
            if point["method"] != "uniform":
                point.update({**split, **{k: point[k] for k in SPLIT if k in point}})
                point.setdefault("trial_batches", 0)  # points from before the exchange's trials judged untrained
                point.setdefault("pin_input", False)  # and before the input layers were pinned at the widest bits
                if " " not in point["label"]:
                    point["label"] += f" {point['search_epochs']}+{point['finetune_epochs']}"
                if point["pin_input"] and not point["label"].endswith(" pinned"):  # labelled so since 2026-11-28
                    point["label"] += " pinned"
    first = parts[0]
    for f, part in zip(files, parts):
        for key in ("model", "data", "target", "protocol", "uniform8_flash_bytes"):
            mine, theirs = (_but_seed(p.get(key)) if key == "protocol" else p.get(key) for p in (part, first))
            if mine != theirs:
                raise SystemExit(f"{f}: its {key} {mine!r} differs from {files[0]}'s {theirs!r}")
        if not part.get("complete"):
            print(f"warning: {f} is from a run that did not finish; using the points it measured")
    seeds = sorted({point["seed"] for part in parts for point in part["points"]})
    protocol = {**first["protocol"], "seed": seeds[0] if len(seeds) == 1 else seeds}
    return {**first, "protocol": protocol, "complete": all(p.get("complete") for p in parts),
            "combined_from": [str(f) for f in files], "points": [point for part in parts for point in part["points"]]}


def _but_seed(protocol: dict) -> dict:
    return {k: v for k, v in protocol.items() if k != "seed"}


def _report(payload: dict, console: Console, out: Path) -> None:
    points = payload["points"]
    emulate = any("host_c_bit_exact" in p for p in points)
    table = Table(title=f"Pareto front: {payload['model']} on {payload['data']}, {payload['target']} (float "
                        f"{100 * payload['float_accuracy']:.2f}%, pre-training {payload['pretrain_seconds']:.0f} s)")
    columns = ["label", "seed", "weight_bytes", "flash_bytes", "budget_flash_bytes", "budget_weight_bytes",
               "accuracy", "arena_bytes", "latency_ms", "epochs", "seconds"] + (["host_c_bit_exact"] if emulate else [])
    for column in columns:
        table.add_column(column)
    table.add_column("channels at 0/2/4/8 bits")
    for p in points:
        layers = p.get("plan", {}).values()
        channels = "/".join(str(sum(layer[f"w{b}"] for layer in layers)) for b in (0, 2, 4, 8)) if layers else "-"
        table.add_row(*(f"{100 * p[c]:.2f}%" if c == "accuracy" else str(p.get(c)) for c in columns), channels)
    console.print(table)
    by_seed: dict[int, list[dict]] = {}
    for p in points:
        by_seed.setdefault(p["seed"], []).append(p)  # _measure and _combine give every point its seed
    if len(by_seed) == 1:
        payload["verdict"], shown = _verdict(points), points
        for key, value in (payload["verdict"] or {"verdict": "needs the uniform-8 point"}).items():
            console.print(f"{key}: {value}")
    else:
        shown = _mean_over_seeds(by_seed)
        per_seed = {str(seed): _verdict(seed_points) for seed, seed_points in sorted(by_seed.items())}
        payload["verdict"] = {"per_seed": per_seed, "mean_of_seeds": _verdict(shown),
                              "target_met_on_every_seed": all(v is not None and v[MET] for v in per_seed.values())}
        rows = {**{f"seed {seed}": v for seed, v in per_seed.items()},
                "mean of seeds": payload["verdict"]["mean_of_seeds"]}
        summary = Table(title="verdict per seed and on the mean of the seeds")
        keys = next((list(v) for v in rows.values() if v is not None), [])
        for column in ("", *keys):
            summary.add_column(column)
        for name, verdict in rows.items():
            summary.add_row(name, *(str(verdict[k]) for k in keys) if verdict else ("needs the uniform-8 point",))
        console.print(summary)
        console.print(f"target_met_on_every_seed: {payload['verdict']['target_met_on_every_seed']}")
    atomic_write_bytes(out, json.dumps(payload, indent=1).encode())
    plot_pareto(shown, out.with_suffix(".png"), f"{payload['model']} on {payload['data']} ({payload['target']})"
                + ("" if len(by_seed) == 1 else f", mean of seeds {', '.join(map(str, sorted(by_seed)))}"))
    print(json.dumps(payload))


def _seconds_per_epoch(point: dict) -> float:
    return point["seconds"] / max(point["epochs"], 1)


def _mean_over_seeds(by_seed: dict[int, list[dict]]) -> list[dict]:
    """One point per label that every seed measured: its accuracy, weight bytes and seconds averaged over the
    seeds (and over repeats within a seed); the rest (budgets, epochs, pinning) is the label's."""
    labels = [label for label in dict.fromkeys(p["label"] for points in by_seed.values() for p in points)
              if all(any(p["label"] == label for p in points) for points in by_seed.values())]
    means = []
    for label in labels:
        group = [p for points in by_seed.values() for p in points if p["label"] == label]
        means.append({**{k: v for k, v in group[0].items() if k not in ("seed", "plan", "accuracy_fake_quant")},
                      **{k: statistics.fmean(p[k] for p in group) for k in ("accuracy", "weight_bytes", "seconds")},
                      "seeds": sorted({p["seed"] for p in group})})
    return means


def _verdict(points: list[dict]) -> dict | None:
    """The issue's three targets, measured on these points (None without a uniform 8-bit point)."""
    uniform8 = next((p for p in points if p["label"] == "uniform-8"), None)
    if uniform8 is None:
        return None
    joint = [p for p in points if p["method"] == "joint"]
    two_stage: dict[tuple, float] = {}  # the best two-stage accuracy per budget and pin setting
    for p in points:
        if p["method"] == "two-stage":
            key = (p["budget_flash_bytes"], p.get("budget_weight_bytes"), p.get("pin_input", False))
            two_stage[key] = max(two_stage.get(key, 0.0), p["accuracy"])
    close = [p for p in joint if p["accuracy"] >= uniform8["accuracy"] - 0.005]
    best = min(close, key=lambda p: p["weight_bytes"], default=None)
    # at the same budget (both fit it) and pin setting, the joint model is at least as accurate as any
    # two-stage one (points merged from several runs may hold several splits of the epochs)
    dominates = [p["accuracy"] >= two_stage[key] for p in joint
                 if (key := (p["budget_flash_bytes"], p.get("budget_weight_bytes"), p.get("pin_input", False)))
                 in two_stage]
    return {
        "weight_reduction_at_uniform8_accuracy": None if best is None else round(
            1 - best["weight_bytes"] / uniform8["weight_bytes"], 4),
        MET: best is not None and (1 - best["weight_bytes"] / uniform8["weight_bytes"]) >= 0.70,
        "joint_dominates_two_stage_at_every_budget": all(dominates) if dominates else None,
        "joint_seconds_per_epoch_over_uniform8": None if not joint else round(
            max(_seconds_per_epoch(p) for p in joint) / _seconds_per_epoch(uniform8), 2),
    }


if __name__ == "__main__":
    main()
