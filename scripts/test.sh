#!/usr/bin/env bash
# Install what the tests need, then run every test tier (unit, host_c, slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The installed `pytest` (not `python -m pytest`, which would put the checkout first on sys.path)
# so the tests exercise the installed package, templates and targets included.
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
