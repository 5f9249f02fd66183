"""What DFT verification needs besides aiida-quantumespresso: the pseudopotential family built from Debian's
``quantum-espresso-data`` files, the working-ion metal references, the ion charges, and the LiCoO2/CoO2 and LiNiO2/NiO2
example pairs.

Nothing here downloads anything: the pseudopotentials are the UPF files that Debian's ``quantum-espresso-data``
package installs in ``/usr/share/espresso/pseudo`` (``scripts/dft.sh`` installs the package). Only PBEsol covers a
working ion (Li) together with transition metals and O there, so the family holds Li, Co, Ni, Fe and O; a structure
with any other element is refused by the verification work chain with a clear exit code.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

from aiida import orm

__all__ = (
    'DEBIAN_PSEUDO_DIR', 'DEBIAN_PBESOL_FAMILY', 'DEBIAN_PBESOL_PSEUDOS', 'DEBIAN_PBESOL_CUTOFFS',
    'install_debian_pbesol_family', 'ion_metal_structure', 'ion_charge', 'layered_oxide_pair', 'LAYERED_OXIDES', 'pw_code',
    'missing_pseudos',
)

DEBIAN_PSEUDO_DIR = pathlib.Path(os.environ.get('VOLTNET_PSEUDO_DIR', '/usr/share/espresso/pseudo'))
#: Label of the family made by :func:`install_debian_pbesol_family`.
DEBIAN_PBESOL_FAMILY = 'voltnet/debian/PBEsol'
#: One file per element: PSLibrary PAW/US files of Debian's quantum-espresso-data 6.7.
DEBIAN_PBESOL_PSEUDOS = {
    'Li': 'Li.pbesol-s-kjpaw_psl.0.2.1.UPF',
    'Co': 'Co.pbesol-spn-rrkjus_psl.0.3.1.UPF',
    'Fe': 'Fe.pbesol-spn-kjpaw_psl.1.0.0.UPF',
    'Ni': 'Ni.pbesol-n-kjpaw_psl.0.1.UPF',
    'O': 'O.pbesol-n-kjpaw_psl.0.1.UPF',
}
#: Recommended cutoffs (Ry) per stringency. ``normal``: 45/360 Ry, where LiCoO2/CoO2 voltages agree with 60 Ry to
#: ~0.06 V (shared/notes/qe_offline.md); ``precise``: 60/480 Ry; ``ci``: 30/240 Ry, only to keep a test short (the
#: voltage is then off by a few tenths of a volt). ecutrho = 8 x ecutwfc for these US/PAW files.
DEBIAN_PBESOL_CUTOFFS = {
    'ci': 30.0,
    'normal': 45.0,
    'precise': 60.0,
}


def _cutoffs(elements, wfc: float) -> dict:
    return {element: {'cutoff_wfc': wfc, 'cutoff_rho': 8 * wfc} for element in elements}


def install_debian_pbesol_family(label: str = DEBIAN_PBESOL_FAMILY, directory: os.PathLike | str | None = None):
    """Create (or return, when it exists) the aiida-pseudo ``CutoffsPseudoPotentialFamily`` ``label`` from the Debian
    UPF files, with the cutoffs of :data:`DEBIAN_PBESOL_CUTOFFS` (default stringency ``normal``).

    :raises FileNotFoundError: naming the missing file and the package that ships it.
    """
    from aiida_pseudo.data.pseudo import UpfData
    from aiida_pseudo.groups.family import CutoffsPseudoPotentialFamily

    try:
        return CutoffsPseudoPotentialFamily.collection.get(label=label)
    except Exception:  # noqa: BLE001 - NotExistent: create it below
        pass
    source = pathlib.Path(directory) if directory else DEBIAN_PSEUDO_DIR
    missing = [name for name in DEBIAN_PBESOL_PSEUDOS.values() if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f'pseudopotential file(s) {", ".join(missing)} not found in {source}: install '
                                "Debian's quantum-espresso-data (bash scripts/dft.sh) or set VOLTNET_PSEUDO_DIR")
    with tempfile.TemporaryDirectory() as folder:
        # create_from_folder wants exactly one file per element in the folder.
        for name in DEBIAN_PBESOL_PSEUDOS.values():
            shutil.copy(source / name, folder)
        family = CutoffsPseudoPotentialFamily.create_from_folder(pathlib.Path(folder), label, pseudo_type=UpfData)
    family.description = (f'PSLibrary PBEsol PAW/US pseudopotentials from Debian quantum-espresso-data ({source}); '
                          'made by aiida_voltnet.dft.install_debian_pbesol_family')
    for stringency, wfc in DEBIAN_PBESOL_CUTOFFS.items():
        family.set_cutoffs(_cutoffs(DEBIAN_PBESOL_PSEUDOS, wfc), stringency, unit='Ry')
    family.set_default_stringency('normal')
    return family


def missing_pseudos(family, structure: orm.StructureData) -> list[str]:
    """Elements of ``structure`` that ``family`` has no pseudopotential for."""
    return sorted(set(structure.get_symbols_set()) - set(family.elements))


def ion_metal_structure(ion: str) -> orm.StructureData:
    """The elemental metal of the working ion in its reference crystal structure (ASE's ``bulk``: bcc Li, Na, K,
    Rb, Cs; hcp Mg, Zn, Y; fcc Ca, Al), primitive cell."""
    from ase.build import bulk

    return orm.StructureData(ase=bulk(ion))


def ion_charge(ion: str) -> int:
    """Charge of the working ion in an electrode (pymatgen's common oxidation state: Li 1, Mg 2, Al 3, ...)."""
    from pymatgen.core import Element

    states = Element(ion).common_oxidation_states
    if len(states) != 1 or states[0] <= 0:
        raise ValueError(f'no single positive common oxidation state for working ion {ion}: {states}')
    return int(states[0])


#: Experimental R-3m cells of layered LiMO2 (hexagonal a, c in Å; O z): LiCoO2 (Akimoto et al., J. Solid State
#: Chem. 141, 298 (1998)) and LiNiO2 (Hirano et al., Solid State Ionics 78, 123 (1995)).
LAYERED_OXIDES = {'Co': (2.816, 14.054, 0.2604), 'Ni': (2.878, 14.190, 0.2587)}


def layered_oxide_pair(metal: str = 'Co') -> tuple[orm.StructureData, orm.StructureData]:
    """(charged MO2, discharged LiMO2) primitive cells (3 and 4 atoms) of the R-3m layered oxide of ``metal`` (Co
    or Ni): the experimental LiMO2 cell and the same host with Li removed (unrelaxed)."""
    from pymatgen.core import Lattice, Structure

    try:
        a, c, z = LAYERED_OXIDES[metal]
    except KeyError:
        raise ValueError(f'no layered oxide for {metal!r}; choose one of {", ".join(LAYERED_OXIDES)}') from None
    conventional = Structure.from_spacegroup('R-3m', Lattice.hexagonal(a, c), ['Li', metal, 'O'],
                                             [[0, 0, 0.5], [0, 0, 0], [0, 0, z]])
    discharged = conventional.get_primitive_structure()
    charged = discharged.copy()
    charged.remove_species(['Li'])
    return orm.StructureData(pymatgen=charged), orm.StructureData(pymatgen=discharged)


def pw_code(computer: orm.Computer, label: str = 'pw-debian', executable: str = '/usr/bin/pw.x',
            mpiprocs: int | None = None) -> orm.InstalledCode:
    """An ``InstalledCode`` for Debian's ``pw.x`` (plugin ``quantumespresso.pw``) on ``computer``; loaded when one
    with ``label`` exists there.

    OpenMPI refuses to run as root unless told; the prepend text allows it (harmless for other users).
    """
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    try:
        code = orm.load_code(f'{label}@{computer.label}')
    except NotExistent:
        pass
    except MultipleObjectsError:  # `verdi code create` run twice: which one to use is the user's choice
        pks = orm.QueryBuilder().append(orm.Computer, filters={'id': computer.pk}, tag='computer').append(
            orm.InstalledCode, with_computer='computer', filters={'label': label}, project='id').all(flat=True)
        raise ValueError(f'several codes {label}@{computer.label} (pks {", ".join(map(str, sorted(pks)))}): delete '
                         'all but one (`verdi code delete PK`)') from None
    else:
        if str(code.get_executable()) != str(executable):
            raise ValueError(f'code {code.full_label} exists and runs {code.get_executable()}, not {executable}: '
                             f'delete it (`verdi code delete {code.full_label}`) or create a code of another label')
        return code
    code = orm.InstalledCode(
        label=label, computer=computer, filepath_executable=executable, default_calc_job_plugin='quantumespresso.pw',
        prepend_text='export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1',
        description="Debian's Quantum ESPRESSO pw.x", with_mpi=True if mpiprocs is not None and mpiprocs > 1 else None)
    return code.store()
