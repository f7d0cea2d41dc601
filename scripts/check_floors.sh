#!/usr/bin/env bash
# Installs the lowest versions pyproject.toml allows (scripts/floors.txt) into a fresh virtualenv and
# runs the quick tests plus the real 1- and 2-process launches of the digits recipe against them.
# Run it from the repository root before a release or after changing a lower bound:
#   bash scripts/check_floors.sh            # venv in .venv-floors (torch 2.11 from PyPI: ~4.6 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-floors}"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -c scripts/floors.txt -e '.[test]'
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
from pathlib import Path
pins = dict(line.split("==") for line in Path("scripts/floors.txt").read_text().splitlines()
            if line and not line.startswith("#"))
wrong = {name: md.version(name) for name, version in pins.items() if md.version(name).split("+")[0] != version}
assert not wrong, f"not the floor versions: {wrong}"
print("floor versions installed:", ", ".join(f"{k} {v}" for k, v in pins.items()))
PY
export HF_DATASETS_OFFLINE=1
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "not slow"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "tests/test_digits_e2e.py::test_cpu_yaml_default_run" \
  "tests/test_digits_e2e.py::test_cpu_2proc_yaml_one_group_one_set_of_bars"
