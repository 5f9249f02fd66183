#!/usr/bin/env bash
# Idempotent development/CI environment for aiida-voltnet: a `.venv` at the repository root with torch (CPU) and
# the package installed editable with its test extras. Safe to run again: pip only installs what is missing.
#
#   bash scripts/bootstrap.sh            # PYTHON=python3.11 bash scripts/bootstrap.sh to pick the interpreter
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VOLTNET_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="torch==2.13.0"

say() { printf '[bootstrap] %s\n' "$*"; }

cd "$ROOT"
if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV with $($PYTHON --version 2>&1) ($PYTHON -m venv)"
    "$PYTHON" -m venv "$VENV"
else
    say "virtual environment $VENV exists ($("$VENV/bin/python" --version 2>&1))"
fi
PY="$VENV/bin/python"

# torch first, pinned: on these machines pip's find-links (/opt/wheels) holds the CPU wheel 2.13.0+cpu, which
# satisfies `torch==2.13.0`. Refuse a CUDA build: it would pull gigabytes of nvidia-* wheels onto a CPU machine.
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.__version__.split("+")[0] == "2.13.0" else 1)' 2>/dev/null; then
    say "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
else
    say "pip install $TORCH_SPEC (CPU wheel)"
    "$PY" -m pip install --no-input "$TORCH_SPEC"
fi
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)')"
if "$PY" -c 'import sys, torch; sys.exit(1 if torch.version.cuda else 0)'; then
    say "torch $TORCH_VERSION is a CPU build"
else
    say "ERROR: torch $TORCH_VERSION is a CUDA build; expected the CPU wheel (torch==2.13.0+cpu from pip's" \
        "find-links). Remove it (pip uninstall torch) and check 'pip config list'." >&2
    exit 1
fi

# Skip the editable install (about 30 s) when pyproject.toml is unchanged since the last successful one and the
# package still imports from this checkout; BOOTSTRAP_FORCE=1 always reinstalls.
STAMP="$VENV/.aiida-voltnet-bootstrap"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) $ROOT"
HAVE="$(cat "$STAMP" 2>/dev/null || true)"
LOCATION="$("$PY" -c 'import aiida_voltnet, os; print(os.path.dirname(os.path.dirname(os.path.abspath(aiida_voltnet.__file__))))' 2>/dev/null || true)"
if [ "${BOOTSTRAP_FORCE:-0}" != 1 ] && [ "$HAVE" = "$WANT" ] && [ "$LOCATION" = "$ROOT" ] \
        && "$PY" -c 'import pytest, pgtest' 2>/dev/null; then
    say "aiida-voltnet already installed editable from $ROOT with this pyproject.toml (BOOTSTRAP_FORCE=1 to redo)"
else
    say "pip install -e '.[tests]'"
    "$PY" -m pip install --no-input -e '.[tests]'
    printf '%s\n' "$WANT" > "$STAMP"
fi

# versions from the installed metadata: importing aiida would create its configuration folder (~/.aiida) as a side
# effect, with a bare Python warning
say "done: $("$PY" -c 'from importlib.metadata import version as v; print(", ".join(f"{n} {v(n)}" for n in ("aiida-core", "aiida-voltnet", "torch")))')"
say "activate with: . $VENV/bin/activate"
