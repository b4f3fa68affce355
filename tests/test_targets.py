"""Target specs: every shipped YAML loads and agrees with the kernels; bad files are refused
naming the file, the dotted key and the reason; table look-ups and budgets."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from edgejpq.cost import target as target_module
from edgejpq.cost.target import (ELEMENTWISE_KINDS, OP_KINDS, REQUIRED_PRECISIONS, TargetSpec, list_targets,
                                 load_target, target_names)
from edgejpq.errors import EdgejpqError
from edgejpq.resources import targets_dir, templates_dir

pytestmark = pytest.mark.unit

SHIPPED = sorted(targets_dir().glob("*.yaml"))


def m4_data() -> dict[str, Any]:
    return yaml.safe_load((targets_dir() / "cortex-m4.yaml").read_text())


def write(tmp_path: Path, data: Any, name: str = "my-board.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def refused(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> str:
    data = m4_data()
    edit(data)
    path = write(tmp_path, data)
    with pytest.raises(EdgejpqError) as info:
        load_target(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# --------------------------------------------------------------------------- shipped targets


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_target_loads(path: Path) -> None:
    spec = load_target(path.stem)
    assert isinstance(spec, TargetSpec)
    assert spec.name == path.stem
    assert spec.path == str(path)
    assert 0 < spec.model_flash_budget < spec.memory.flash_bytes
    assert 0 < spec.model_ram_budget < spec.memory.ram_bytes
    for kind in OP_KINDS:
        for bits in (8, 4, 2):
            assert spec.cycles_per_mac(kind, bits) > 0
    assert spec.qemu is not None, "every shipped target runs in QEMU"
    assert spec.boards, "every shipped target names the board its numbers come from"
    assert spec.boards[0].vendor_board in spec.description
    if not spec.latency.calibrated:
        assert spec.latency.source.startswith("initial estimate"), spec.latency.source
    else:  # written by `edgejpq calibrate`, with its provenance
        assert spec.latency.source.startswith("calibrated by `edgejpq calibrate"), spec.latency.source
        provenance = spec.latency.calibration
        assert provenance is not None and provenance.kernels == spec.kernels and provenance.measurements > 0
        assert spec.qemu.machine in provenance.emulator
    assert spec.kernels == ("dsp" if spec.isa.dsp else "portable")


def test_shipped_names_are_unique_match_file_stems_and_include_the_default() -> None:
    specs = list_targets()
    names = [spec.name for spec in specs]
    assert len(names) == len(set(names)) == len(SHIPPED)
    assert names == target_names()
    assert sorted(names) == sorted(p.stem for p in SHIPPED)
    assert "cortex-m4" in names
    assert {"cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33"} <= set(names)


def _kernel_families() -> set[str]:
    """Kernel families the C kernel API declares (ejq_kernels.h), in the code-size table's names."""
    header = (templates_dir() / "kernels" / "ejq_kernels.h").read_text()
    families = {"conv2d": "conv2d", "dwconv2d": "depthwise_conv2d", "fc": "fully_connected"}
    names = set()
    for function in re.findall(r"^void (ejq_\w+)\(", header, flags=re.M):
        weighted = re.fullmatch(r"ejq_(conv2d|dwconv2d|fc)_s8_w(\d)", function)
        if weighted:
            names.add(f"{families[weighted.group(1)]}_w{weighted.group(2)}")
        elif function in ("ejq_maxpool_s8", "ejq_avgpool_s8"):
            names.add("max_pool" if "max" in function else "avg_pool")
        elif function.startswith("ejq_concat_"):
            names.add("concat")
        else:
            names.add(function.removeprefix("ejq_").removesuffix("_s8"))
    return names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_code_size_lists_every_kernel_family_of_the_c_api(path: Path) -> None:
    spec = load_target(str(path))
    families = _kernel_families()
    assert {"conv2d_w8", "depthwise_conv2d_w2", "fully_connected_w4", "max_pool", "add", "concat", "copy"} <= families
    assert set(spec.code_size.per_kernel_bytes) == families


def test_a_user_yaml_path_loads(tmp_path: Path) -> None:
    data = m4_data()
    data["name"] = "my-board"
    data["clock_hz"] = 168_000_000
    path = write(tmp_path, data, "boards.yaml")
    spec = load_target(str(path))
    assert spec.name == "my-board"  # a user's file may be named apart from its name key
    assert spec.clock_hz == 168_000_000
    assert spec.path == str(path)
    assert spec.seconds(168_000_000) == pytest.approx(1.0)


def test_unknown_name_lists_the_available_targets() -> None:
    with pytest.raises(EdgejpqError, match=r"unknown target 'cortex-m9': available cortex-m0plus, .*cortex-m4"):
        load_target("cortex-m9")


def test_missing_user_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(EdgejpqError, match=r"nope\.yaml: no such target file"):
        load_target(str(tmp_path / "nope.yaml"))


def test_shipped_file_name_must_equal_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = m4_data()
    data["name"] = "cortex-m4f"
    write(tmp_path, data, "cortex-m4.yaml")
    monkeypatch.setattr(target_module, "targets_dir", lambda: tmp_path)
    with pytest.raises(EdgejpqError, match=r"cortex-m4\.yaml: key name: a shipped target's name must equal"):
        load_target("cortex-m4")


# --------------------------------------------------------------------------- refusals


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    return edit


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node[part]
        del node[last]
    return edit


BAD = [
    ("unknown top-level key", _set("frequency", 5), r"key frequency: unknown key \(allowed here: schema_version, name"),
    ("unknown nested key", _set("memory.eeprom_bytes", 4096),
     r"key memory\.eeprom_bytes: unknown key \(allowed here: flash_bytes, ram_bytes"),
    ("unknown key in a list item", _set("boards.0.flash.speed", 4),
     r"key boards\[0\]\.flash\.speed: unknown key \(allowed here: method, notes\)"),
    ("wrong type", _set("clock_hz", "fast"), r"key clock_hz: Input should be a valid integer \(got 'fast'\)"),
    ("number as a string", _set("clock_hz", "180000000"), r"key clock_hz: Input should be a valid integer"),
    ("negative clock", _set("clock_hz", -1), r"key clock_hz: Input should be greater than 0 \(got -1\)"),
    ("zero cycles per MAC", _set("latency.cycles_per_mac.conv2d.w8a8", 0),
     r"key latency\.cycles_per_mac\.conv2d\.w8a8: Input should be greater than 0"),
    ("non-numeric table entry", _set("latency.cycles_per_mac.fully_connected.w2a8", "slow"),
     r"key latency\.cycles_per_mac\.fully_connected\.w2a8: Input should be a valid number"),
    ("missing table entry", _delete("latency.cycles_per_mac.conv2d.w4a8"),
     r"key latency\.cycles_per_mac\.conv2d\.w4a8: required entry is missing"),
    ("bits not in the table", _set("latency.cycles_per_mac.conv2d.w3a8", 4.0),
     r"key latency\.cycles_per_mac\.conv2d\.w3a8: not a precision key"),
    ("missing op kind", _delete("latency.cycles_per_mac.depthwise_conv2d"),
     r"key latency\.cycles_per_mac\.depthwise_conv2d: required key is missing"),
    ("missing elementwise kind", _delete("latency.elementwise_cycles_per_element.pool"),
     r"key latency\.elementwise_cycles_per_element\.pool: required entry is missing"),
    ("unknown elementwise kind", _set("latency.elementwise_cycles_per_element.softmax", 9.0),
     r"key latency\.elementwise_cycles_per_element\.softmax: unknown kind"),
    ("missing top-level key", _delete("latency"), r"key latency: required key is missing"),
    ("bad core", _set("core", "cortex-a53"), r"key core: Input should be 'cortex-m0plus'"),
    ("bad kernel set", _set("kernels", "neon"), r"key kernels: Input should be 'portable' or 'dsp'"),
    ("bad flash method", _set("boards.0.flash.method", "jtag-magic"), r"key boards\[0\]\.flash\.method: Input should be"),
    ("reserved exceeds flash", _set("memory.flash_reserved_bytes", 600_000),
     r"key memory\.flash_reserved_bytes: must be less than flash_bytes \(524288\)"),
    ("dsp on a core without it", lambda d: (d.update(core="cortex-m3"), d["compiler"].update(cflags=["-mcpu=cortex-m3"])),
     r"key isa\.dsp: a cortex-m3 has no DSP extension"),
    ("dsp kernels without dsp", lambda d: (d["isa"].update(dsp=False)), r"key kernels: the dsp kernel set needs isa\.dsp"),
    ("-mcpu disagrees with core", _set("compiler.cflags", ["-mcpu=cortex-m7", "-O2"]),
     r"key compiler\.cflags: must hold exactly one -mcpu=cortex-m4"),
    ("schema version", _set("schema_version", 2), r"key schema_version: this edgejpq reads version 1, the file says 2"),
    ("qemu address out of range", _set("qemu.ram_base", 1 << 33), r"key qemu\.ram_base: Input should be less than"),
    ("kernel name not an identifier", _set("code_size.per_kernel_bytes.conv 2d", 100),
     r"key code_size\.per_kernel_bytes\.conv 2d: kernel and object names are identifiers"),
    ("share of an unknown kernel", _set("code_size.kernel_shares.softmax", ["dsp_dw"]),
     r"key code_size\.kernel_shares\.softmax: not a kernel of code_size\.per_kernel_bytes"),
    ("share of an unknown object", _set("code_size.kernel_shares.conv2d_w8", ["dsp_fft"]),
     r"key code_size\.kernel_shares\.conv2d_w8: 'dsp_fft' is not an object of code_size\.shared_bytes"),
    ("duplicate board", lambda d: d["boards"].append(copy.deepcopy(d["boards"][0])),
     r"key boards\[1\]\.name: board 'nucleo-f446re' is listed twice"),
    ("path is not a key", _set("path", "/elsewhere.yaml"), r"key path: unknown key"),
]


@pytest.mark.parametrize("edit, pattern", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_values_are_refused_naming_file_and_dotted_key(tmp_path: Path, edit: Any, pattern: str) -> None:
    message = refused(tmp_path, edit)
    assert re.search(pattern, message), message


def test_refusal_names_the_line_of_the_key(tmp_path: Path) -> None:
    text = (targets_dir() / "cortex-m4.yaml").read_text().replace("clock_hz: 180000000", "clock_hz: -180")
    line = next(n for n, row in enumerate(text.splitlines(), 1) if row.startswith("clock_hz:"))
    path = tmp_path / "m4.yaml"
    path.write_text(text)
    with pytest.raises(EdgejpqError, match=rf"key clock_hz: .*\(line {line}\)$"):
        load_target(str(path))


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("schema_version: 1\nname: broken\nmemory: {flash_bytes: 1\n  ram_bytes: [\n")
    with pytest.raises(EdgejpqError, match=rf"^{re.escape(str(path))}, line \d+, column \d+: YAML syntax error"):
        load_target(str(path))


def test_duplicate_yaml_key_is_refused_with_its_line(tmp_path: Path) -> None:
    text = (targets_dir() / "cortex-m4.yaml").read_text() + "clock_hz: 1\n"
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    last = len(text.splitlines())
    with pytest.raises(EdgejpqError, match=rf"line {last}, column 1: YAML syntax error: key 'clock_hz' appears twice"):
        load_target(str(path))


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, ["cortex-m4"])
    with pytest.raises(EdgejpqError, match=r"must be a YAML mapping"):
        load_target(str(path))


# --------------------------------------------------------------------------- look-ups and budgets


def test_cycles_per_mac_reads_the_table() -> None:
    spec = load_target("cortex-m4")
    table = m4_data()["latency"]["cycles_per_mac"]
    for kind in OP_KINDS:
        for key in REQUIRED_PRECISIONS:
            bits = int(key[1])
            assert spec.cycles_per_mac(kind, bits) == table[kind][key]
            assert spec.cycles_per_mac(kind, bits, activation_bits=8) == table[kind][key]
    assert spec.cycles_per_mac("conv2d", 0) == 0.0  # a pruned channel has no MACs
    for kind in ELEMENTWISE_KINDS:
        assert spec.elementwise_cycles(kind) == spec.latency.elementwise_cycles_per_element[kind]


def test_cycles_per_mac_names_the_missing_entry() -> None:
    spec = load_target("cortex-m4")
    with pytest.raises(EdgejpqError, match=r"cortex-m4\.yaml: key latency\.cycles_per_mac\.conv2d\.w3a8: no entry"):
        spec.cycles_per_mac("conv2d", 3)
    with pytest.raises(EdgejpqError, match=r"key latency\.cycles_per_mac\.depthwise_conv2d\.w8a4: no entry"):
        spec.cycles_per_mac("depthwise_conv2d", 8, activation_bits=4)
    with pytest.raises(EdgejpqError, match=r"key latency\.cycles_per_mac\.lstm: no such op kind"):
        spec.cycles_per_mac("lstm", 8)


def test_an_extra_precision_entry_is_usable(tmp_path: Path) -> None:
    data = m4_data()
    data["latency"]["cycles_per_mac"]["conv2d"]["w4a4"] = 2.5
    spec = load_target(str(write(tmp_path, data)))
    assert spec.cycles_per_mac("conv2d", 4, activation_bits=4) == 2.5


def test_budgets_subtract_reserved_bytes(tmp_path: Path) -> None:
    data = m4_data()
    data["memory"] = {"flash_bytes": 100_000, "ram_bytes": 20_000, "flash_reserved_bytes": 12_345,
                      "ram_reserved_bytes": 2_000}
    spec = load_target(str(write(tmp_path, data)))
    assert spec.model_flash_budget == 100_000 - 12_345
    assert spec.model_ram_budget == 18_000
    m4 = load_target("cortex-m4")
    assert m4.model_flash_budget == 512 * 1024 - m4.memory.flash_reserved_bytes
    assert m4.model_ram_budget == 128 * 1024 - m4.memory.ram_reserved_bytes


def test_kernel_bytes_falls_back_to_the_default() -> None:
    spec = load_target("cortex-m0plus")
    assert spec.kernel_bytes("conv2d_w8") == spec.code_size.per_kernel_bytes["conv2d_w8"]
    assert spec.kernel_bytes("softmax") == spec.code_size.default_kernel_bytes


def test_shared_kernel_objects_count_once() -> None:
    spec = load_target("cortex-m4")
    shared = spec.code_size.shared_bytes
    assert set(spec.kernel_shares("conv2d_w8")) == {"dsp_dw", "dsp_im2col", "dsp_rq"}
    assert spec.kernel_shares("depthwise_conv2d_w4") == ("dsp_dw",) and spec.kernel_shares("add") == ()
    one = spec.kernels_code_bytes({"conv2d_w8"})
    assert one == spec.kernel_bytes("conv2d_w8") + sum(shared.values())
    both = spec.kernels_code_bytes({"conv2d_w8", "conv2d_w4", "depthwise_conv2d_w2"})
    assert both == one + spec.kernel_bytes("conv2d_w4") + spec.kernel_bytes("depthwise_conv2d_w2")


def test_summary_row_for_the_targets_table() -> None:
    row = load_target("cortex-m4").summary_row()
    assert row["target"] == "cortex-m4"
    assert row["clock"] == "180 MHz"
    assert row["flash"] == "512 KiB" and row["RAM"] == "128 KiB"
    assert row["QEMU"] == "mps2-an386"
    assert row["latency"] == "calibrated"  # by `edgejpq calibrate` in QEMU (see its latency.calibration)
    assert all(isinstance(v, str) for v in row.values())
    rows = [spec.summary_row() for spec in list_targets()]
    assert all(r.keys() == row.keys() for r in rows)
    summary = load_target("cortex-m4").summary()
    assert summary["clock_hz"] == 180_000_000 and summary["model_ram_budget"] < summary["ram_bytes"]


def test_target_spec_is_frozen() -> None:
    spec = load_target("cortex-m4")
    with pytest.raises(AttributeError):
        spec.clock_hz = 1  # type: ignore[misc]


def test_several_problems_report_the_first_and_count_the_rest(tmp_path: Path) -> None:
    message = refused(tmp_path, lambda d: d.update(clock_hz=-5, kernels="neon"))
    assert re.search(r"key clock_hz: Input should be greater than 0 \(got -5\) \(line \d+\); and 1 more problem$",
                     message), message
