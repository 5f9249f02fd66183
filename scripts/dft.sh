#!/usr/bin/env bash
# Quantum ESPRESSO for the DFT verification of aiida-voltnet (voltnet.verify / voltnet.screen): Debian's
# `quantum-espresso` (pw.x 6.7) and `quantum-espresso-data` (the PSLibrary UPF files in /usr/share/espresso/pseudo
# from which `voltnet dft-setup` and the tests build the aiida-pseudo family voltnet/debian/PBEsol). Nothing is
# downloaded from anywhere else. Idempotent: installed packages are left alone. Needs root (apt-get).
#
#   bash scripts/dft.sh
set -euo pipefail

say() { printf '[dft] %s\n' "$*"; }
PSEUDO_DIR=/usr/share/espresso/pseudo
NEEDED=(Li.pbesol-s-kjpaw_psl.0.2.1.UPF Co.pbesol-spn-rrkjus_psl.0.3.1.UPF Fe.pbesol-spn-kjpaw_psl.1.0.0.UPF
        Ni.pbesol-n-kjpaw_psl.0.1.UPF O.pbesol-n-kjpaw_psl.0.1.UPF)

have_all() {
    command -v pw.x >/dev/null 2>&1 || return 1
    local name
    for name in "${NEEDED[@]}"; do [ -f "$PSEUDO_DIR/$name" ] || return 1; done
}

if have_all; then
    say "pw.x ($(command -v pw.x)) and the PBEsol UPF files in $PSEUDO_DIR are installed"
else
    command -v apt-get >/dev/null 2>&1 || { echo '[dft] ERROR: pw.x missing and no apt-get to install it' >&2; exit 1; }
    say 'apt-get update'
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    say 'apt-get install -y quantum-espresso quantum-espresso-data'
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq quantum-espresso quantum-espresso-data
    have_all || { echo "[dft] ERROR: after the install, pw.x or a UPF file of ${NEEDED[*]} is still missing" >&2; exit 1; }
fi
# pw.x is an OpenMPI program; OpenMPI refuses root unless told (the pw.x code of `voltnet dft-setup` sets the same).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
banner="$(cd "$(mktemp -d)" && echo | timeout 60 pw.x 2>&1 || true)"  # pw.x leaves CRASH files in its cwd
say "$(grep -m1 -o 'Program PWSCF v[^ ]*' <<<"$banner" || echo 'pw.x did not print its version')"
