"""Firmware projects for real boards (codegen.boards.generate_board_project, `generate --board`).

Every board's project is generated for the model holding every op at every bit-width and for a
zoo CNN exported by the real pipeline (digits), and built from a clean folder with its own
Makefile and arm-none-eabi-gcc; the image must fit the chip's flash and RAM as the linker script
declares them, with the vector table at the start of flash. The NUCLEO-F446RE image also boots in
QEMU's netduinoplus2 (an STM32F405: same core, USART2 and memory map) and prints PASS, or FAIL when
a golden output is wrong. Unknown boards and a target of another core are refused in one line.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from codegen.boards import BoardProject, board_names, board_target, generate_board_project, load_board
from codegen.generate import MARKER
from edgejpq.artifact import QuantizedModel, save_model
from edgejpq.cli import app
from edgejpq.cost.target import load_target
from edgejpq.errors import EdgejpqError

from needs import need_programs
from random_models import coverage_model

pytestmark = pytest.mark.qemu

BOARDS = ("nucleo-f446re", "nucleo-f746zg", "nucleo-f767zi", "nucleo-g071rb")
QEMU_F4 = "netduinoplus2"  # STM32F405: Cortex-M4F, flash at 0x08000000, SRAM at 0x20000000, USART2 at 0x40004400
QEMU_SECONDS = 30.0


@pytest.fixture(scope="session", autouse=True)
def tools() -> None:
    need_programs()


def _digits_cnn() -> tuple[QuantizedModel, np.ndarray]:
    """zoo:cnn exported at 4 bits by the real pipeline, with 4 quantized digits as golden inputs."""
    import torch

    from edgejpq.data import load_dataset
    from edgejpq.graph import build_float_graph
    from edgejpq.plan import uniform_plan
    from edgejpq.quant.integerize import export_model, quantize_input
    from edgejpq.zoo import build_model

    torch.manual_seed(0)
    ds = load_dataset("digits")
    shape = tuple(ds.x_test.shape[1:])
    graph = build_float_graph(build_model("zoo:cnn", shape, 10), shape)
    model, _ = export_model(graph, uniform_plan(graph, 4), ds.x_train[:256], name="digits_cnn")
    return model, quantize_input(model, ds.x_test[:4])


@pytest.fixture(scope="session")
def models() -> dict[str, tuple[QuantizedModel, np.ndarray | None]]:
    return {"coverage": (coverage_model(), None), "digits_cnn": _digits_cnn()}


def _make(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-C", str(folder), *args], capture_output=True, text=True)


@pytest.fixture(scope="session")
def built(models, tmp_path_factory) -> dict[tuple[str, str], BoardProject]:
    """Every board × model project, generated into a fresh folder and built with `make` (two at a time)."""
    root = tmp_path_factory.mktemp("boards")

    def build(board: str, key: str) -> BoardProject:
        model, golden = models[key]
        project = generate_board_project(model, board, root / f"{board}-{key}", golden_inputs=golden)
        assert not (project.out_dir / "build").exists()
        result = _make(project.out_dir)
        assert result.returncode == 0, f"{board} {key}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        return project

    jobs = [(board, key) for board in BOARDS for key in models]
    with ThreadPoolExecutor(2) as pool:
        projects = list(pool.map(lambda job: build(*job), jobs))
    return dict(zip(jobs, projects))


def _link_regions(link_ld: Path) -> dict[str, tuple[int, int]]:
    regions = re.findall(r"^\s*(\w+)\s*\([rwx]+\)\s*:\s*ORIGIN\s*=\s*(0x[0-9A-Fa-f]+),\s*LENGTH\s*=\s*(\d+)",
                         link_ld.read_text(), re.M)
    return {name: (int(origin, 16), int(length)) for name, origin, length in regions}


def _sections(elf: Path) -> dict[str, tuple[int, int]]:
    """Allocated sections of an ELF: name → (address, size), from `arm-none-eabi-size -A`."""
    out = subprocess.run(["arm-none-eabi-size", "-A", str(elf)], capture_output=True, text=True, check=True).stdout
    sections = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[2].isdigit() and int(parts[2]) != 0:
            sections[parts[0]] = (int(parts[2]), int(parts[1]))
    return sections


def test_known_boards_and_their_targets() -> None:
    assert set(BOARDS) <= set(board_names())
    for name in board_names():
        board = load_board(name)
        target = board_target(board)
        assert target.core == board.core
        assert board.name in {b.name for b in target.boards}
        entry = next(b for b in target.boards if b.name == board.name)
        assert board.openocd_target in entry.flash.notes  # one flashing recipe, in both files
        if target.boards[0].name == board.name:  # the board the target's numbers come from: the same memory
            assert (target.memory.flash_bytes, target.memory.ram_bytes) == (board.flash.size, board.ram.size)
        else:
            assert (target.memory.flash_bytes, target.memory.ram_bytes) >= (board.flash.size, board.ram.size)
    assert {load_board(b).core for b in BOARDS} == {"cortex-m4", "cortex-m7", "cortex-m0plus"}


@pytest.mark.parametrize("board", BOARDS)
def test_project_builds_and_fits(built, board: str) -> None:
    spec = load_board(board)
    target = board_target(spec)
    for key in ("coverage", "digits_cnn"):
        project = built[(board, key)]
        folder = project.out_dir
        assert project.kernels == target.kernels == ("portable" if spec.core == "cortex-m0plus" else "dsp")
        for suffix in (".elf", ".bin", ".hex"):
            assert (folder / "build" / f"{project.name}{suffix}").stat().st_size > 0
        assert (folder / MARKER).is_file() and (folder / "model" / MARKER).is_file()
        makefile = (folder / "Makefile").read_text()
        assert " ".join(spec.cflags(target)) in makefile and "-std=c99 -Wall -Wextra -Werror" in makefile
        assert ("-mfpu=fpv5-sp-d16" in makefile) == (board == "nucleo-f746zg")  # its FPU has no doubles
        readme = (folder / "README.md").read_text()
        assert spec.openocd_target in readme and "make flash" in readme and spec.console.uart in readme

        regions = _link_regions(folder / "link.ld")
        assert regions == {"FLASH": (spec.flash.base, spec.flash.size), "RAM": (spec.ram.base, spec.ram.size)}
        sections = _sections(project.elf)
        flash_used = ram_used = 0
        for name, (address, size) in sections.items():
            region = next((r for r, (base, length) in regions.items() if base <= address < base + length), None)
            assert region is not None, f"{board} {key}: section {name} at {address:#x} is outside flash and RAM"
            base, length = regions[region]
            assert address + size <= base + length, f"{board} {key}: section {name} overflows {region}"
            flash_used += size if region == "FLASH" or name == ".data" else 0
            ram_used += size if region == "RAM" else 0
        assert 0 < flash_used <= spec.flash.size and 0 < ram_used <= spec.ram.size

        nm = subprocess.run(["arm-none-eabi-nm", str(project.elf)], capture_output=True, text=True, check=True)
        symbols = {parts[2]: int(parts[0], 16) for parts in map(str.split, nm.stdout.splitlines()) if len(parts) == 3}
        assert symbols["ejq_vectors"] == spec.flash.base  # the vector table the chip boots from
        assert f"{project.name}_invoke" in symbols and "ejq_cycles_now" in symbols
        assert ("SysTick_Handler" in symbols) and (symbols["SysTick_Handler"] != symbols["Default_Handler"]) == (
            spec.core == "cortex-m0plus")  # SysTick counts cycles only where the core has no DWT counter


def _run_in_qemu(elf: Path) -> str:
    """Boot an STM32F4 image on netduinoplus2 with USART2 on stdout; the text up to PASS, FAIL or FAULT."""
    need_programs()
    qemu = shutil.which("qemu-system-arm")
    assert qemu is not None
    command = [qemu, "-M", QEMU_F4, "-display", "none", "-monitor", "none", "-serial", "null", "-serial", "stdio",
               "-kernel", str(elf)]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    received = b""
    deadline = time.monotonic() + QEMU_SECONDS
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline and not re.search(rb"^(PASS|FAIL|FAULT).*\n", received, re.M):
                if selector.select(timeout=0.5):
                    chunk = os.read(process.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    received += chunk
    finally:
        process.kill()
        process.wait()
    lines = received.decode("ascii", "replace").replace("\r\n", "\n").splitlines()
    return "\n".join(lines)


@pytest.mark.parametrize("key", ["coverage", "digits_cnn"])
def test_f446re_image_passes_in_qemu(built, key: str) -> None:
    project = built[("nucleo-f446re", key)]
    text = _run_in_qemu(project.elf)
    assert f"model {project.name}" in text and "on NUCLEO-F446RE" in text, text
    assert "PASS 4 golden samples bit-exact" in text, text
    assert text.count(": bit-exact") == 4
    # QEMU's DWT does not count: the firmware says so instead of printing 0 cycles
    assert "cycles per inference: not available" in text, text


def test_f446re_image_reports_a_wrong_output(built, tmp_path: Path) -> None:
    project = built[("nucleo-f446re", "coverage")]
    folder = tmp_path / "broken"
    shutil.copytree(project.out_dir, folder)
    golden = folder / "model" / f"{project.name}_golden.c"
    text = golden.read_text()
    start = text.index(f"{project.name}_golden_outputs")
    head, sample = text[start:].split("/* sample 1 */\n", 1)
    first = re.match(r"\s*(-?\d+)", sample)
    assert first is not None
    value = int(first.group(1))
    changed = sample.replace(first.group(1), str(value + 1 if value < 127 else value - 1), 1)
    golden.write_text(text[:start] + head + "/* sample 1 */\n" + changed)
    result = _make(folder)
    assert result.returncode == 0, result.stderr[-2000:]
    output = _run_in_qemu(folder / "build" / f"{project.name}.elf")
    assert "sample 0: bit-exact" in output and "sample 1: FAIL at output byte 0: expected" in output, output
    assert output.splitlines()[-1] == "FAIL"


def test_cli_generate_board(tmp_path: Path) -> None:
    path = tmp_path / "m.ejq"
    save_model(coverage_model(), path)
    out = tmp_path / "fw"
    result = CliRunner().invoke(app, ["generate", str(path), "-o", str(out), "--board", "nucleo-g071rb", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output.strip().splitlines()[-1])
    assert payload["board"] == "nucleo-g071rb" and payload["target"] == "cortex-m0plus"
    assert payload["elf"] == str(out.absolute() / "build" / "coverage.elf")
    for name in ("Makefile", "README.md", "main.c", "ejq_board.c", "ejq_board.h", "startup.c", "link.ld",
                 "model/coverage_model.c", "model/coverage_golden.c", MARKER):
        assert (out / name).is_file() and name in payload["files"]
    # generating again replaces the previous project
    again = CliRunner().invoke(app, ["generate", str(path), "-o", str(out), "--board", "nucleo-f446re"])
    assert again.exit_code == 0, again.output
    assert "NUCLEO-F446RE" in (out / "README.md").read_text()


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    return lines[0]


def test_unknown_board_and_wrong_core_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.ejq"
    save_model(coverage_model(), path)
    runner = CliRunner()
    line = _one_line_error(runner.invoke(app, ["generate", str(path), "-o", str(tmp_path / "a"),
                                               "--board", "nucleo-h743zi"]))
    assert "unknown board 'nucleo-h743zi'" in line and all(board in line for board in BOARDS)
    line = _one_line_error(runner.invoke(app, ["generate", str(path), "-o", str(tmp_path / "b"),
                                               "--board", "nucleo-g071rb", "--target", "cortex-m4"]))
    assert "nucleo-g071rb" in line and "cortex-m0plus" in line and "cortex-m4" in line and "--target" in line
    line = _one_line_error(runner.invoke(app, ["generate", str(path), "-o", str(tmp_path / "c"),
                                               "--target", "cortex-m4"]))
    assert "--board" in line
    assert not any((tmp_path / name).exists() for name in "abc")
    with pytest.raises(EdgejpqError, match="has a cortex-m4 core but target cortex-m7"):
        generate_board_project(coverage_model(), "nucleo-f446re", tmp_path / "d", target=load_target("cortex-m7"))


def test_model_too_large_for_the_board(tmp_path: Path) -> None:
    model = coverage_model()
    huge = replace(model, layout=replace(model.layout, arena_bytes=64 * 1024))
    with pytest.raises(EdgejpqError, match=r"needs at least \d+ bytes of RAM on the NUCLEO-G071RB .* has 36864"):
        generate_board_project(huge, "nucleo-g071rb", tmp_path / "g0")
    assert not (tmp_path / "g0").exists()
    # the same model fits the F446RE's 128 KiB
    generate_board_project(huge, "nucleo-f446re", tmp_path / "f4")


def test_cli_generate_serial_board_project_builds(tmp_path: Path) -> None:
    path = tmp_path / "m.ejq"
    save_model(coverage_model(), path)
    out = tmp_path / "fw"
    result = CliRunner().invoke(app, ["generate", str(path), "-o", str(out), "--board", "nucleo-f446re", "--serial",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert "EJQ_HELLO_FLAG_BOOT" in (out / "main.c").read_text()
    built = subprocess.run(["make", "-s", "-C", str(out)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    assert (out / "build" / "coverage.elf").is_file()
    refused = CliRunner().invoke(app, ["generate", str(path), "-o", str(tmp_path / "x"), "--serial"])
    assert refused.exit_code == 2 and "--board" in refused.output
