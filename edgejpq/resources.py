"""Locate the data folders that ship with the package (templates, targets).

In a source checkout they are the top-level `firmware_templates/` and `targets/`; a wheel
installs them under `edgejpq/_data/` (see pyproject.toml, force-include).
"""

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder `name` ("firmware_templates" or "targets"), installed or in the checkout."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"edgejpq data folder {name!r} not found next to {_PACKAGE_DIR}")


def templates_dir() -> Path:
    return data_dir("firmware_templates")


def targets_dir() -> Path:
    return data_dir("targets")
