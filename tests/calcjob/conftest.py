"""Fixtures of the CalcJob-path tests: a 60-row dataset, the installed ``voltnet-train`` code on localhost, a Slurm
computer for submit-script regression tests (no Slurm needed), and QE-style ``generate_calc_job`` /
``generate_workchain`` factories that build processes without running them."""
from __future__ import annotations

import csv
import pathlib
import shutil
import sys

import pytest
from aiida import orm

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
#: The shared MP CSV of the brief; the in-repo 150-row slice of it is used when it is absent.
SHARED_CSV = pathlib.Path('/work/shared/data/mp_insertion_electrodes/electrodes.csv')
REPO_CSV = pathlib.Path(__file__).parents[1] / 'aiida' / 'fixtures' / 'electrodes_150.csv'
N_ROWS = 60


def voltnet_train_executable() -> str:
    """``voltnet-train`` of this interpreter's environment (the console script of the installed package)."""
    candidate = pathlib.Path(sys.executable).parent / 'voltnet-train'
    if candidate.is_file():
        return str(candidate)
    found = shutil.which('voltnet-train')
    if not found:
        pytest.skip('the voltnet-train console script is not installed (pip install -e .)')
    return found


@pytest.fixture(scope='session')
def csv_60(tmp_path_factory) -> pathlib.Path:
    """The first 60 data rows of the shared MP CSV (or of the in-repo slice) as a CSV file."""
    source = SHARED_CSV if SHARED_CSV.is_file() else REPO_CSV
    with source.open(newline='', encoding='utf-8-sig') as handle:
        reader = csv.DictReader(handle)
        rows = [row for _, row in zip(range(N_ROWS), reader)]
        fieldnames = reader.fieldnames
    path = tmp_path_factory.mktemp('csv') / 'electrodes_60.csv'
    with path.open('w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope='session')
def dataset_60(aiida_profile, csv_60):
    """A stored ``ElectrodeDataset`` of the 60 rows (built directly, no process)."""
    from aiida_voltnet.data.dataset import ElectrodeDataset
    from aiida_voltnet.ml.records import read_electrodes_csv

    with csv_60.open(newline='') as handle:
        records = read_electrodes_csv(handle, source=csv_60.name)
    return ElectrodeDataset(records, source='csv').store()


@pytest.fixture
def train_code(aiida_code_installed):
    """``voltnet-train`` of this venv as an ``InstalledCode`` on ``localhost`` (core.local + core.direct)."""
    return aiida_code_installed(label='voltnet-train', filepath_executable=voltnet_train_executable(),
                                default_calc_job_plugin='voltnet.train')


@pytest.fixture
def slurm_code(aiida_computer):
    """An ``InstalledCode`` on a ``core.slurm`` computer: enough to write a submit script, nothing is submitted."""
    computer = aiida_computer(label='gpu-cluster', hostname='gpu-cluster.example.org', scheduler_type='core.slurm',
                              transport_type='core.local')
    try:
        return orm.load_code('voltnet-train-gpu@gpu-cluster')
    except Exception:  # noqa: BLE001 - not created yet
        return orm.InstalledCode(label='voltnet-train-gpu', computer=computer,
                                 filepath_executable='/opt/voltnet/venv/bin/voltnet-train',
                                 default_calc_job_plugin='voltnet.train').store()


@pytest.fixture
def generate_calc_job(tmp_path):
    """``(folder_path, calcinfo, process)`` of ``process.presubmit`` for ``process_class(**inputs)``; writes
    ``_aiidasubmit.sh`` and the sandbox into ``tmp_path`` without uploading or submitting anything."""
    from aiida.common.folders import Folder
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    def factory(process_class, inputs):
        runner = get_manager().get_runner()
        process = instantiate_process(runner, process_class, **inputs)
        (tmp_path / 'sandbox').mkdir(exist_ok=True)
        folder = Folder(str(tmp_path / 'sandbox'))
        calcinfo = process.presubmit(folder)
        return pathlib.Path(folder.abspath), calcinfo, process

    return factory


@pytest.fixture
def generate_workchain():
    """Instantiate a work chain (no run) with ``inputs``, as aiida-quantumespresso's fixture of that name does."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    def factory(process_class, inputs):
        return instantiate_process(get_manager().get_runner(), process_class, **inputs)

    return factory


@pytest.fixture
def fake_child():
    """A stored, finished ``CalcJobNode`` of ``voltnet.train`` with a given exit status (and retrieved files)."""
    from aiida.common.links import LinkType
    from aiida.engine import ProcessState

    def factory(exit_status: int, computer, retrieved_files: dict[str, bytes] | None = None,
                outputs: dict | None = None):
        node = orm.CalcJobNode(computer=computer, process_type='aiida.calculations:voltnet.train')
        node.set_option('resources', {'num_machines': 1})
        node.set_process_state(ProcessState.FINISHED)
        node.set_exit_status(exit_status)
        node.store()
        if retrieved_files is not None:
            retrieved = orm.FolderData()
            for name, content in retrieved_files.items():
                retrieved.base.repository.put_object_from_bytes(content, name)
            retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label='retrieved')
            retrieved.store()
        for label, output in (outputs or {}).items():
            output.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label=label)
            output.store()
        return node

    return factory


def records_50(csv_path):
    from aiida_voltnet.ml.records import read_electrodes_csv

    with csv_path.open(newline='') as handle:
        return read_electrodes_csv(handle, source=csv_path.name)[:50]


@pytest.fixture(scope='session')
def interrupted_checkpoint(csv_60, tmp_path_factory) -> pathlib.Path:
    """The checkpoint directory of a 2-member ``voltnet`` training on 50 rows stopped after its first member."""
    from aiida_voltnet.ml.models import train_voltage_model
    from aiida_voltnet.ml.training import TrainingCheckpoint, TrainingInterrupted

    directory = tmp_path_factory.mktemp('interrupted') / 'checkpoint'
    checkpoint = TrainingCheckpoint(directory, {'test': 'interrupted'}, stop_after_members=1)
    with pytest.raises(TrainingInterrupted):
        train_voltage_model(records_50(csv_60), model='voltnet', members=2, device='cpu', checkpoint=checkpoint)
    return directory


def checkpoint_files(directory: pathlib.Path, prefix: str = 'checkpoint/') -> dict[str, bytes]:
    """The files of a checkpoint directory as ``{prefix + name: content}``."""
    return {f'{prefix}{path.name}': path.read_bytes() for path in sorted(directory.iterdir())}
