#!/usr/bin/env bash
# Checks the Python client, clients/python, end to end:
#
#   bash clients/python/scripts/ci.sh
#
# 1. creates (or reuses) a virtualenv outside the repository,
#    ${TALLY_PY_VENV:-$HOME/.cache/tally-pyenv}, and installs the package with
#    its pinned dev extra into it (nothing global is touched);
# 2. checks that the committed gRPC stubs are what the pinned generators make
#    from proto/tally/v1 (scripts/gen_protos.py --check);
# 3. ruff (lint and format check), mypy --strict on the package;
# 4. pytest, against a real `tally serve`: $TALLY_BIN, else
#    ${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}/debug/tally (built beforehand;
#    this script never runs cargo);
# 5. builds the wheel into a temporary directory and checks it ships the stubs
#    and py.typed.
#
# Needs python3 (>= 3.10) with venv and pip, and PyPI.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$HERE"
VENV="${TALLY_PY_VENV:-$HOME/.cache/tally-pyenv}"
PYTHON_BIN="${PYTHON:-python3}"

say() { printf '\n== %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
  || { echo "ci.sh: $VENV has Python < 3.10; remove it or set TALLY_PY_VENV" >&2; exit 1; }

say "installing tally-x402[dev] into $VENV"
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[dev]"

say "generated stubs match proto/"
"$PY" scripts/gen_protos.py --check

say "ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

say "mypy --strict"
"$VENV/bin/mypy"

say "pytest"
TALLY_BIN="${TALLY_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}/debug/tally}"
export TALLY_BIN
if [ ! -x "$TALLY_BIN" ]; then
  echo "ci.sh: no tally binary at $TALLY_BIN (build it first, or set TALLY_BIN)" >&2
  exit 1
fi
"$PY" -m pytest -q -p no:cacheprovider

say "wheel"
DIST="$(mktemp -d)"
trap 'rm -rf "$DIST"' EXIT
"$PY" -m build --wheel --outdir "$DIST" . >"$DIST/build.log" 2>&1 \
  || { cat "$DIST/build.log" >&2; exit 1; }
rm -rf "$HERE/build"  # setuptools' scratch directory
"$PY" - "$DIST" <<'PYEOF'
import pathlib, sys, zipfile

[wheel] = pathlib.Path(sys.argv[1]).glob("tally_x402-0.1.0-*.whl")
names = set(zipfile.ZipFile(wheel).namelist())
required = {"tally_x402/py.typed", "tally_x402/proto/__init__.py"}
for proto in ("iou", "ingest", "query", "admin", "settlement"):
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
        required.add(f"tally_x402/proto/{proto}{suffix}")
missing = sorted(required - names)
if missing:
    sys.exit(f"ci.sh: the wheel lacks {missing}")
print(f"{wheel.name}: {len(names)} files, stubs and py.typed included")
PYEOF
say "python client: all checks passed"
