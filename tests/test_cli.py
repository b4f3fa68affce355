"""The console command end to end, and its one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.host_c

EDGEJPQ = Path(sys.executable).parent / "edgejpq"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGEJPQ), *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_user_error(proc: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines[0].startswith("error:"), proc.stderr
    import re

    assert re.search(pattern, " ".join(lines)), proc.stderr


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """train → export → generate on digits, via the console script."""
    root = tmp_path_factory.mktemp("cli")
    assert EDGEJPQ.exists(), "the edgejpq console script is not installed"
    proc = run("train", "--model", "zoo:cnn", "--data", "digits", "--epochs", "4", "--lr", "0.01",
               "-o", str(root / "float.pt"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert last_json(proc)["test_accuracy"] > 0.5
    plan = root / "plan.json"
    proc = run("export", "--model", str(root / "float.pt"), "--plan", "uniform:4", "--data", "digits",
               "-o", str(root / "digits.ejq"), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = last_json(proc)
    assert abs(summary["accuracy_integer"] - summary["accuracy_fake_quant"]) <= 0.02
    proc = run("generate", str(root / "digits.ejq"), "-o", str(root / "fw"), "--json")
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "model": root / "digits.ejq", "fw": root / "fw", "plan": plan}


def test_emulate_is_bit_exact_and_reports_json(pipeline):
    out = pipeline["root"] / "outputs.npy"
    proc = run("emulate", str(pipeline["model"]), "--data", "digits", "--save-outputs", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = last_json(proc)
    assert summary["bit_exact"] is True
    assert summary["samples"] == 360
    assert 0.5 < summary["accuracy"] <= 1.0
    assert summary["arena_bytes"] > 0 and summary["weight_bytes"] > 0
    saved = np.load(out)
    assert saved.dtype == np.int8 and saved.shape[0] == 360
    assert "bit-exact" in proc.stdout  # the summary table


def test_generated_folder_make_test_passes(pipeline):
    proc = subprocess.run(["make", "-s", "-C", str(pipeline["fw"]), "test"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_inspect(pipeline):
    proc = run("inspect", str(pipeline["model"]), "--json")
    assert proc.returncode == 0, proc.stderr
    assert any(layer["bits"].startswith("w4") for layer in last_json(proc)["layers"])


def test_help_has_examples():
    for command in ("train", "export", "generate", "emulate", "inspect"):
        proc = run(command, "--help")
        assert proc.returncode == 0 and "Example" in proc.stdout, command


def test_missing_model_file(tmp_path):
    assert_user_error(run("emulate", str(tmp_path / "nope.ejq"), "--data", "digits"), r"nope\.ejq: no such model file")


def test_corrupted_model_file(pipeline, tmp_path):
    bad = tmp_path / "bad.ejq"
    data = bytearray(pipeline["model"].read_bytes())
    bad.write_bytes(bytes(data[: len(data) - 100]))
    assert_user_error(run("generate", str(bad), "-o", str(tmp_path / "fw")), r"bad\.ejq: .*(truncated|corrupt)")
    assert not (tmp_path / "fw").exists()


def test_unsupported_layer_names_it(tmp_path):
    source = tmp_path / "net.py"
    source.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(1, 4, 3)\n"
        "        self.act = nn.GELU()\n"
        "        self.fc = nn.Linear(4, 10)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))\n")
    proc = run("export", "--model", f"{source}:Net", "--plan", "uniform:8", "--data", "digits",
               "-o", str(tmp_path / "m.ejq"))
    assert_user_error(proc, r"'act'.*GELU")
    assert not (tmp_path / "m.ejq").exists()


def test_export_of_an_untrained_model_spec_is_the_same_model_every_run(tmp_path):
    # its initial weights come from seed 0, not from torch's generator, which each process seeds at random
    for i in range(2):
        (tmp_path / str(i)).mkdir()
    hashes = [last_json(run("export", "--model", "zoo:cnn", "--plan", "uniform:8", "--data", "digits",
                            "-o", str(tmp_path / str(i) / "m.ejq"), "--json"))["hash"] for i in range(2)]
    assert hashes[0] == hashes[1]


def test_unwritable_output_folder(pipeline):
    # /proc refuses new files even for root, so this holds on CI (root) and laptops alike
    proc = run("export", "--model", "zoo:cnn", "--plan", "uniform:8", "--data", "digits", "-o", "/proc/m.ejq")
    assert_user_error(proc, r"/proc.*(not writable|cannot write)")


def test_output_folder_missing(pipeline, tmp_path):
    assert_user_error(run("export", "--model", "zoo:cnn", "--plan", "uniform:8", "--data", "digits",
                          "-o", str(tmp_path / "no" / "such" / "m.ejq")), r"does not exist")


def test_output_is_not_a_folder(pipeline, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(run("generate", str(pipeline["model"]), "-o", str(blocker / "fw")), str(blocker.name))


def test_generate_refuses_to_overwrite_a_foreign_folder(pipeline, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert_user_error(run("generate", str(pipeline["model"]), "-o", str(foreign)), "mine")
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert shutil.which("cc")


@pytest.mark.slow
def test_search_sweep_writes_one_run_per_budget_and_a_pareto_plot(pipeline, tmp_path):
    out = tmp_path / "sweep"
    proc = run("search", "--model", str(pipeline["root"] / "float.pt"), "--data", "digits", "--flash", "20KiB,28KiB",
               "--epochs", "1", "--finetune-epochs", "1", "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    payload = last_json(proc)
    assert [p["label"] for p in payload["sweep"]] == ["flash-20KiB", "flash-28KiB"]
    for point, budget in zip(payload["sweep"], (20 * 1024, 28 * 1024)):
        assert point["flash_bytes"] <= budget and point["budgets"] == {"flash_bytes": budget}
        folder = out / point["label"]
        for name in ("plan.json", "model.ejq", "report.md", "training.png", "summary.json"):
            assert (folder / name).is_file(), name
        assert json.loads((folder / "summary.json").read_text())["cost"]["weight_bytes"] == point["weight_bytes"]
    assert payload["sweep"][0]["weight_bytes"] < payload["sweep"][1]["weight_bytes"]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "sweep.json").read_text()) == payload["sweep"]


@pytest.mark.parametrize("options, pattern", [
    (["--flash", "9KiB,13KiB", "--strength", "1,2"], r"sweep one option at a time: --flash and --strength"),
    (["--flash", "9KiB,9KiB"], r"--flash 9KiB,9KiB: a value is listed twice"),
    (["--latency-ms", "fast"], r"--latency-ms 'fast': expected a number"),
    (["--method", "two-stage", "--strength", "1"],
     r"method two-stage prunes to a budget: give one \(--flash, --weights, --ram or --latency-ms\)"),
    (["--weights", "six kilobytes"], r"--weights 'six kilobytes': expected a size such as 65536, 64KiB or 1.5MiB"),
    (["--weights", "4KiB,6KiB", "--flash", "8KiB,9KiB"], r"sweep one option at a time: --flash and --weights"),
    (["--objective", "code"], r"--objective 'code': use flash, weights, ram or latency"),
    (["--method", "greedy"], r"method 'greedy': use joint, uniform or two-stage"),
    (["--method", "uniform", "--bits", "3"], r"uniform bits 3: use 8, 4 or 2"),
    (["--method", "uniform", "--bits", "4,8"], r"--bits 4,8: --method uniform takes one bit-width"),
    (["--bits", "3,8"], r"bit-widths 3,8: use some of 2, 4, 8"),
    (["--bits", "four"], r"--bits 'four': expected bit-widths such as 8 or 2,4,8"),
])
def test_search_refuses_bad_options_before_any_work(tmp_path, options, pattern):
    proc = run("search", "--model", "zoo:cnn", "--data", "digits", *options, "-o", str(tmp_path / "s"))
    assert_user_error(proc, pattern)
    assert not (tmp_path / "s").exists()
