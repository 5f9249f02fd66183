#!/usr/bin/env bash
# The main job of aiida-voltnet: an end-to-end demo on the embedded default (an SQLite-backed AiiDA profile, no
# services). Bootstraps .venv, then runs `voltnet quickstart`: imports the shared MP CSV into AiiDA, trains the
# leak-free model with the `fast` protocol, predicts structure pairs shipped with pymatgen and prints each
# voltage with its provenance. Extra arguments go to `voltnet quickstart` (see `voltnet quickstart --help`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
export PATH="${VOLTNET_VENV:-$ROOT/.venv}/bin:$PATH"  # the venv bootstrap.sh made
exec voltnet quickstart "$@"
