"""The training loop for torch networks: device ``auto``, seeded, early stopping on a validation split carved
from the training rows, and a fast path that keeps the whole (small) data set on the device.

The seed's loop wraps tensors in ``TensorDataset`` + ``DataLoader(shuffle=True)``: for every mini-batch that
indexes rows one by one and re-stacks them with ``default_collate``. Ours draws one permutation per epoch and
slices the device tensors, which gives identical batches' math with far less Python per step; see
``benchmarks/epoch_speed.py``.

:class:`TrainingCheckpoint` makes a training resumable: finished ensemble members and the loop state of the torch
member in training are written periodically (safetensors + JSON, atomically), and a run given the checkpoint
continues where it stopped and ends with the same model as an uninterrupted run (bit for bit on CPU).
"""
from __future__ import annotations

import contextvars
import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

__all__ = ['parse_device', 'resolve_device', 'seed_everything', 'TrainConfig', 'TrainResult', 'train_network',
           'predict_network', 'TrainingDiverged', 'TrainingInterrupted', 'TrainingCheckpoint', 'CheckpointError']

LOGGER = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        super().__init__(f'loss became NaN/inf at epoch {epoch}')


def parse_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a :class:`torch.device`, without asking whether it is present.

    :raises ValueError: for a name torch does not know, or a device kind we do not train on.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f'unknown device {device!r}: use auto, cpu, cuda or cuda:N') from None
    if parsed.type not in ('cpu', 'cuda'):
        raise ValueError(f'device {device!r} is not supported: use auto, cpu, cuda or cuda:N')
    return parsed


def resolve_device(device: str | None = 'auto') -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else through :func:`parse_device`.

    :raises ValueError: for a device torch does not know, or CUDA where torch sees none.
    """
    if device in (None, 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    resolved = parse_device(device)
    if resolved.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {device!r} was asked for but torch sees no CUDA device (use auto or cpu)')
    if resolved.type == 'cuda' and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()  # a cuda:1 on a one-GPU machine failed at the first tensor moved there
        raise ValueError(f'device {device!r} was asked for but torch sees {count} CUDA device(s): '
                         f'cuda:0..cuda:{count - 1}')
    return resolved


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


PRECISIONS = ('fp32', 'bf16')


@dataclass
class TrainConfig:
    epochs: int = 300
    batch_size: int = 512
    lr: float = 5e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.1
    patience: int | None = 40
    seed: int = 0
    device: str = 'auto'
    scheduler: str | None = None  # None or 'cosine'
    min_epochs: int = 0
    #: 'fp32' (default: exact float32 arithmetic) or 'bf16': the forward pass under ``torch.autocast`` with
    #: bfloat16 matrix products (CUDA, or CPUs with AVX512-BF16/AMX); same network and loss, lower-precision
    #: products, so results differ from fp32 ones beyond summation order. Predictions are always float32.
    precision: str = 'fp32'

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f'training precision {self.precision!r} is not one of {", ".join(PRECISIONS)}')

        def integer(name, minimum, optional=False):
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f'training setting {name} must be an integer >= {minimum}'
                                 + (' or None' if optional else '') + f', got {value!r}')

        def number(name, low, high=math.inf, low_open=False):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < low or (low_open and value == low) or value >= high:
                raise ValueError(f'training setting {name} must be a number in {"(" if low_open else "["}{low}, '
                                 f'{high}), got {value!r}')

        integer('epochs', 1), integer('batch_size', 1), integer('min_epochs', 0), integer('seed', -(2 ** 63))
        integer('patience', 1, optional=True)
        number('lr', 0, low_open=True), number('weight_decay', 0), number('val_fraction', 0, 1)
        if self.scheduler not in (None, 'cosine'):
            raise ValueError(f"training setting scheduler must be None or 'cosine', got {self.scheduler!r}")
        if not isinstance(self.device, str):
            raise ValueError(f'training setting device must be text (auto, cpu, cuda[:N]), got {self.device!r}')

    @classmethod
    def check_overrides(cls, overrides) -> None:
        """Refuse overrides that :class:`TrainConfig` would not accept: unknown keys, values of the wrong kind.

        :raises ValueError: naming the key.
        """
        if not isinstance(overrides, dict):
            raise ValueError(f'train_overrides must be a dict (epochs, lr, batch_size, ...), got {overrides!r}')
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(f'unknown training setting(s) {", ".join(unknown)} in train_overrides; known: '
                             f'{", ".join(known)}')
        cls(**overrides)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainResult:
    best_epoch: int
    epochs_run: int
    best_val_loss: float | None
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    device: str = 'cpu'


def forward_precision(device_type: str, precision: str):
    """The context of a forward pass at ``precision`` (:data:`PRECISIONS`): bfloat16 autocast for 'bf16'; for
    'fp32' a disabled autocast, which leaves the float32 arithmetic exactly as without it."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == 'bf16')


def cpu_bf16_is_native() -> bool:
    """Whether this CPU computes bfloat16 products in hardware (AVX512-BF16/AMX, as oneDNN reports it); elsewhere
    autocast emulates them, far slower than float32 (a Zen 3 core: an MHA-ResNet epoch 0.10x the seed-style
    float32 loop's speed, ``benchmarks/epoch_speed.py``)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fraction)) if fraction > 0 else 0
    if n_val and n - n_val < 2:
        n_val = 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_network(network: nn.Module, X: np.ndarray, y: np.ndarray, config: TrainConfig,
                  progress: Callable[[int, float, float | None], None] | None = None,
                  checkpoint: 'MemberCheckpoint | None' = None) -> TrainResult:
    """Train ``network`` in place on standardized data with MSE and Adam; restore the best validation state.

    The validation rows are carved from (X, y) with ``config.seed``; test rows never enter this function.

    :param checkpoint: epoch-level checkpointing (default: the member slot of an active :class:`TrainingCheckpoint`,
        if any). When it holds a saved loop state of this training, the loop continues after that epoch with the
        saved weights, optimizer and scheduler state, best-so-far state, early-stopping counters and RNG states,
        so that the result equals an uninterrupted run's; after every epoch it may save that state or stop.
    """
    device = resolve_device(config.device)
    if config.precision == 'bf16' and device.type == 'cpu' and not cpu_bf16_is_native():
        LOGGER.warning('precision bf16 on a CPU without bfloat16 units (no AVX512-BF16): the products are emulated '
                       'and training runs many times slower than in fp32 (about 20x for MHA-ResNet on a Zen 3 '
                       'core); use fp32 here')
    generator = seed_everything(config.seed)
    train_idx, val_idx = _validation_split(len(X), config.val_fraction, config.seed)
    X_all = torch.as_tensor(np.asarray(X, dtype=np.float32), device=device)
    y_all = torch.as_tensor(np.asarray(y, dtype=np.float32), device=device)
    X_train, y_train = X_all[train_idx], y_all[train_idx]
    X_val, y_val = X_all[val_idx], y_all[val_idx]
    network.to(device)
    # fused Adam: the same update, one kernel for all parameters instead of ~10 small ops per tensor per step
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
                 if config.scheduler == 'cosine' else None)
    loss_fn = nn.MSELoss()
    n = len(X_train)
    best_state, best_val, best_epoch, stale = None, math.inf, 0, 0
    result = TrainResult(best_epoch=0, epochs_run=0, best_val_loss=None, device=str(device))
    checkpoint = checkpoint if checkpoint is not None else _ACTIVE_MEMBER.get()
    first_epoch = 1
    saved = checkpoint.resume_state() if checkpoint is not None else None
    if saved is not None:
        first_epoch, best_state, best_val, best_epoch, stale = _restore_loop_state(
            saved, config, network, optimizer, scheduler, generator, result, device)
    for epoch in range(first_epoch, config.epochs + 1):
        network.train()
        order = torch.randperm(n, generator=generator).to(device)
        total = 0.0
        for start in range(0, n, config.batch_size):
            batch = order[start:start + config.batch_size]
            if len(batch) < 2 and n >= 2:  # BatchNorm cannot train on a single row
                continue
            optimizer.zero_grad(set_to_none=True)
            with forward_precision(device.type, config.precision):
                output = network(X_train[batch])
            loss = loss_fn(output.float(), y_train[batch])
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch)
        if scheduler is not None:
            scheduler.step()
        train_loss = float(total) / n
        if not math.isfinite(train_loss):
            raise TrainingDiverged(epoch)
        result.train_loss.append(train_loss)
        result.epochs_run = epoch
        val_loss = None
        if len(val_idx):
            val_loss = float(loss_fn(predict_tensor(network, X_val, config.batch_size * 8), y_val))
            result.val_loss.append(val_loss)
            if val_loss < best_val:
                best_val, best_epoch, stale = val_loss, epoch, 0
                best_state = copy.deepcopy(network.state_dict())
            else:
                stale += 1
        if progress is not None:
            progress(epoch, train_loss, val_loss)
        stop = config.patience is not None and val_loss is not None and stale >= config.patience \
            and epoch >= config.min_epochs
        if checkpoint is not None:
            checkpoint.epoch_done(epoch, lambda: _loop_state(epoch, config, network, optimizer, scheduler, generator,
                                                             device, best_state, best_val, best_epoch, stale, result),
                                  final=stop or epoch == config.epochs)
        if stop:
            break
    if best_state is not None:
        network.load_state_dict(best_state)
        result.best_epoch, result.best_val_loss = best_epoch, best_val
    else:
        result.best_epoch = result.epochs_run
    network.eval()
    return result


@torch.no_grad()
def predict_tensor(network: nn.Module, X: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    was_training = network.training
    network.eval()
    outputs = [network(X[start:start + batch_size]) for start in range(0, len(X), batch_size)]
    network.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, device=X.device)


def predict_network(network: nn.Module, X: np.ndarray, device: str = 'auto', batch_size: int = 4096) -> np.ndarray:
    resolved = resolve_device(device)
    network.to(resolved)
    tensor = torch.as_tensor(np.asarray(X, dtype=np.float32), device=resolved)
    return predict_tensor(network, tensor, batch_size).cpu().numpy().astype(np.float64)


def default_threads() -> None:
    """Cap intra-op threads to the cores we may use (avoids oversubscription on small shared machines)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores))


# -- checkpoints ------------------------------------------------------------------------------------------------------
# A checkpoint is a directory with ``state.json`` (scalars, configuration, the list of array files and their sha256)
# and safetensors files: one per finished ensemble member (``member-<phase>-<index>.safetensors``, written once) and
# one with the loop state of the torch member being trained (``current-<serial>.safetensors``). Nothing is pickled.
# Every file is written to a temporary name and renamed into place, and ``state.json`` is replaced last, so a job
# killed at any moment leaves the previous ``state.json`` and every file it names intact.

CHECKPOINT_FORMAT = 'voltnet-train-checkpoint'
CHECKPOINT_VERSION = 1
CHECKPOINT_STATE = 'state.json'

_ACTIVE_MEMBER: contextvars.ContextVar['MemberCheckpoint | None'] = contextvars.ContextVar('voltnet_member_checkpoint',
                                                                                           default=None)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: missing, altered, truncated, or written by another training."""


class TrainingInterrupted(RuntimeError):
    """Training stopped on request (time limit, SIGTERM, test hook) right after writing a checkpoint."""

    def __init__(self, reason: str, where: dict):
        self.reason, self.where = reason, dict(where)
        at = f'member {where.get("member")}' + (f' epoch {where["epoch"]}' if where.get('epoch') is not None else '')
        super().__init__(f'training stopped ({reason}) after checkpointing {at}')


def _json_default(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    raise TypeError(f'{type(value).__name__} is not JSON serializable')


def _json_sha256(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(',', ':'), default=_json_default).encode()
                          ).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename ``tmp`` over ``path``: readers see the old file or the complete new one."""
    tmp = path.with_name(f'{path.name}.tmp-{os.getpid()}')
    try:
        write(tmp)
        with open(tmp, 'rb+') as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _config_key(config: TrainConfig) -> dict:
    """What must be equal between the run that saved a loop state and the run that continues it."""
    # precision 'fp32' is left out so that checkpoints written before the option existed still resume
    return {k: v for k, v in config.to_dict().items() if k != 'device' and (k, v) != ('precision', 'fp32')}


def _loop_state(epoch, config, network, optimizer, scheduler, generator, device, best_state, best_val, best_epoch,
                stale, result) -> tuple[dict, dict[str, torch.Tensor]]:
    """The loop state after ``epoch``: (JSON scalars, tensors)."""
    tensors = {f'network.{k}': v for k, v in network.state_dict().items()}
    if best_state is not None:
        tensors.update({f'best.{k}': v for k, v in best_state.items()})
    optimizer_state = optimizer.state_dict()
    optimizer_scalars = {}
    for index, values in optimizer_state['state'].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f'optimizer.{index}.{name}'] = value
            else:
                optimizer_scalars.setdefault(str(index), {})[name] = value
    tensors['rng.generator'] = generator.get_state()
    tensors['rng.torch'] = torch.get_rng_state()
    if device.type == 'cuda':
        tensors['rng.cuda'] = torch.cuda.get_rng_state(device)
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in group.items()}
              for group in optimizer_state['param_groups']]
    scalars = {'epoch': epoch, 'config': _config_key(config), 'device': str(device),
               'best_val': best_val if math.isfinite(best_val) else None, 'best_epoch': best_epoch, 'stale': stale,
               'has_best': best_state is not None, 'train_loss': list(result.train_loss),
               'val_loss': list(result.val_loss), 'optimizer_param_groups': groups,
               'optimizer_scalars': optimizer_scalars,
               'scheduler': scheduler.state_dict() if scheduler is not None else None}
    # clone: safetensors refuses tensors that share memory, and the file must not alias live parameters
    return scalars, {k: v.detach().to('cpu', copy=True).contiguous() for k, v in tensors.items()}


def _restore_loop_state(saved, config, network, optimizer, scheduler, generator, result, device):
    scalars, tensors = saved['scalars'], saved['tensors']
    if scalars.get('config') != _config_key(config):
        raise CheckpointError(f'the saved loop state belongs to training settings {scalars.get("config")}, '
                              f'not {_config_key(config)}')

    def part(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    network.load_state_dict(part('network.'), strict=True)
    best_state = {k: v.to(device) for k, v in part('best.').items()} if scalars['has_best'] else None
    state: dict[int, dict] = {}
    for key, value in part('optimizer.').items():
        index, name = key.split('.', 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in scalars.get('optimizer_scalars', {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = [{k: tuple(v) if k == 'betas' else v for k, v in group.items()}
              for group in scalars['optimizer_param_groups']]
    optimizer.load_state_dict({'state': state, 'param_groups': groups})
    if scheduler is not None and scalars.get('scheduler') is not None:
        scheduler.load_state_dict(scalars['scheduler'])
    generator.set_state(tensors['rng.generator'])
    torch.set_rng_state(tensors['rng.torch'])
    if device.type == 'cuda' and 'rng.cuda' in tensors:
        torch.cuda.set_rng_state(tensors['rng.cuda'], device)
    result.train_loss, result.val_loss = list(scalars['train_loss']), list(scalars['val_loss'])
    result.epochs_run = int(scalars['epoch'])
    best_val = math.inf if scalars['best_val'] is None else float(scalars['best_val'])
    LOGGER.info('continuing the training loop after epoch %d from the checkpoint', scalars['epoch'])
    return int(scalars['epoch']) + 1, best_state, best_val, int(scalars['best_epoch']), int(scalars['stale'])


class MemberCheckpoint:
    """What :func:`train_network` sees of a :class:`TrainingCheckpoint`: one ensemble member's loop state."""

    def __init__(self, owner: 'TrainingCheckpoint', key: str):
        self.owner, self.key = owner, key

    def resume_state(self) -> dict | None:
        """The saved loop state of this member (``{'scalars', 'tensors'}``), or None to start at epoch 1."""
        current = self.owner.current
        if current is None or current['member'] != self.key:
            return None
        from safetensors.torch import load_file

        return {'scalars': current['scalars'], 'tensors': load_file(str(self.owner.directory / current['file']))}

    def epoch_done(self, epoch: int, state: Callable[[], tuple[dict, dict]], final: bool = False) -> None:
        """After every epoch: save ``state()`` when due; raise :class:`TrainingInterrupted` when asked to stop.
        ``final``: the member's loop ends after this epoch (it is then saved as a finished member instead)."""
        self.owner._epoch_done(self.key, epoch, state, final)


class TrainingCheckpoint:
    """Periodic, atomic, pickle-free checkpoints of :func:`~aiida_voltnet.ml.models.train_voltage_model`.

    Pass it as ``train_voltage_model(..., checkpoint=...)``. Every finished ensemble member is saved (so a resumed
    run skips it); the torch member in training is saved every ``every_epochs`` epochs or ``every_seconds``
    seconds (weights, optimizer and scheduler state, best-so-far state, early-stopping counters, RNG states), and
    always before stopping. Training stops with :class:`TrainingInterrupted` after the first epoch or member at
    which :meth:`should_stop` answers: ``request_stop`` was called (e.g. on SIGTERM), the next step would end after
    ``max_seconds``, or the test hooks ``stop_after_epochs`` / ``stop_after_members`` (counted in this run) are met.

    :param training: what identifies the training (featurizer, model, seed, settings, records' sha256 and, as
        ``voltnet-train`` adds it, the code's sources fingerprint): a checkpoint is only resumed by a training with
        the same ``training``.
    """

    def __init__(self, directory, training: dict, *, every_epochs: int | None = None,
                 every_seconds: float | None = 300.0, max_seconds: float | None = None,
                 stop_after_epochs: int | None = None, stop_after_members: int | None = None,
                 clock: Callable[[], float] = time.monotonic, started: float | None = None):
        self.directory = Path(directory)
        self.training = json.loads(json.dumps(training, default=_json_default))
        self.fingerprint = _json_sha256(self.training)
        self.every_epochs, self.every_seconds, self.max_seconds = every_epochs, every_seconds, max_seconds
        self.stop_after_epochs, self.stop_after_members = stop_after_epochs, stop_after_members
        self._clock = clock
        self.started = clock() if started is None else started
        self.members: dict[str, dict] = {}
        self.current: dict | None = None
        self.serial = 0
        self.epochs_run = self.members_run = self.saves = 0
        self.stop_requested: str | None = None
        self.resumed_from: dict | None = None
        self._last_save = self._mark = clock()
        self._last_step = 0.0
        self._epochs_since_save = 0

    # -- reading ----------------------------------------------------------------------------------------------------
    @staticmethod
    def read_state(directory) -> dict:
        """``state.json`` of the checkpoint in ``directory``, after checking it and the sha256 of every file."""
        directory = Path(directory)
        path = directory / CHECKPOINT_STATE
        if not path.is_file():
            raise CheckpointError(f'{directory} holds no checkpoint ({CHECKPOINT_STATE} is missing)')
        try:
            state = json.loads(path.read_text())
        except ValueError as exception:
            raise CheckpointError(f'{path} is not JSON: {exception}') from exception
        except RecursionError:
            raise CheckpointError(f'{path} is not JSON: nested too deeply') from None
        if not isinstance(state, dict):
            raise CheckpointError(f'{path} is a JSON {type(state).__name__}, not an object')
        if state.get('format') != CHECKPOINT_FORMAT or state.get('format_version') != CHECKPOINT_VERSION:
            raise CheckpointError(f'{path} is not a {CHECKPOINT_FORMAT} version {CHECKPOINT_VERSION}')
        recorded = state.pop('state_sha256', None)
        if recorded != _json_sha256(state):
            raise CheckpointError(f'{path} was altered after it was written (state sha256 mismatch)')
        for entry in TrainingCheckpoint._entries(state):
            name = entry['file']
            if Path(name).name != name or not (directory / name).is_file():
                raise CheckpointError(f'{directory}: {name} named by {CHECKPOINT_STATE} is missing')
            if _file_sha256(directory / name) != entry['sha256']:
                raise CheckpointError(f'{directory / name} was altered or truncated (sha256 mismatch)')
        return state

    @staticmethod
    def files(state: dict) -> list[str]:
        """The array files a checkpoint's ``state.json`` names: plain file names in the checkpoint's folder. A path
        (``/etc/x``, ``../x``, ``a/b``) raises :class:`CheckpointError`: a retrieved ``state.json`` comes from the
        remote side, and its names were once opened for writing by the parser before they were checked."""
        names = [entry['file'] for entry in TrainingCheckpoint._entries(state)]
        for name in names:
            if not isinstance(name, str) or name in ('', '.', '..') or Path(name).name != name or '\\' in name:
                raise CheckpointError(f'{CHECKPOINT_STATE} names {name!r}, which is no plain file name in the '
                                      'checkpoint folder')
        return names

    @staticmethod
    def _entries(state) -> list[dict]:
        """The finished members' and the current member's entries of a ``state.json``, each an object with a string
        ``file`` and ``sha256``; :class:`CheckpointError` for any other shape (a retrieved file of the remote side:
        a list of members was an AttributeError in the parser, which left the job excepted)."""
        members = state.get('members') if isinstance(state, dict) else None
        if not isinstance(members, dict):
            raise CheckpointError(f'{CHECKPOINT_STATE}: "members" is not an object')
        entries = list(members.values()) + ([state['current']] if state.get('current') else [])
        for entry in entries:
            if not (isinstance(entry, dict) and isinstance(entry.get('file'), str)
                    and isinstance(entry.get('sha256'), str)):
                raise CheckpointError(f'{CHECKPOINT_STATE}: an entry {entry!r:.80} is not an object with a file name '
                                      'and a sha256')
        return entries

    def resume(self, directory) -> dict:
        """Continue from the checkpoint in ``directory`` (copied into this checkpoint's directory); raises
        :class:`CheckpointError` when it is unusable or belongs to another training."""
        directory = Path(directory)
        state = self.read_state(directory)
        if state.get('fingerprint') != self.fingerprint:
            saved = state.get('training', {})
            differs = sorted(k for k in set(saved) | set(self.training) if saved.get(k) != self.training.get(k))
            raise CheckpointError(f'the checkpoint in {directory} belongs to another training (it differs in '
                                  f'{", ".join(differs) or "its fingerprint"})')
        versions = _versions()
        if state.get('versions') != versions:
            LOGGER.warning('the checkpoint was written with %s, this run has %s: the result may differ from an '
                           'uninterrupted training', state.get('versions'), versions)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.directory.exists() and directory.resolve() == self.directory.resolve()):
            for name in self.files(state):
                shutil.copyfile(directory / name, self.directory / name)
        self.members, self.current, self.serial = state['members'], state.get('current'), int(state['serial'])
        self._write_state()
        current = self.current and {'member': self.current['member'], 'epoch': self.current['epoch']}
        self.resumed_from = {'serial': self.serial, 'members': sorted(self.members), 'current': current}
        LOGGER.info('resuming from the checkpoint in %s: finished members %s, in progress %s', directory,
                    ', '.join(sorted(self.members)) or 'none', current or 'none')
        return self.resumed_from

    # -- stopping ---------------------------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Stop (after checkpointing) at the end of the current epoch or member; safe to call from a signal
        handler."""
        self.stop_requested = reason

    def should_stop(self) -> str | None:
        """Why training should stop now, or None."""
        if self.stop_requested:
            return self.stop_requested
        if self.stop_after_epochs is not None and self.epochs_run >= self.stop_after_epochs:
            return f'stop_after_epochs {self.stop_after_epochs} reached'
        if self.stop_after_members is not None and self.members_run >= self.stop_after_members:
            return f'stop_after_members {self.stop_after_members} reached'
        if self.max_seconds is not None:
            elapsed = self._clock() - self.started
            if elapsed + self._last_step >= self.max_seconds:
                return (f'time limit: {elapsed:.0f} s of max_seconds {self.max_seconds:g} used and the next step '
                        f'takes about {self._last_step:.0f} s')
        return None

    # -- hooks ------------------------------------------------------------------------------------------------------
    def fit_member(self, phase: str, index: int, fit: Callable[[], Any], last: bool = False):
        """Called by ``train_voltage_model`` for ensemble member ``index`` of ``phase`` (``calibration`` or
        ``final``): the finished member from the checkpoint if it holds one, else ``fit()``'s regressor, saved."""
        key = f'{phase}.{index}'
        if key in self.members:
            LOGGER.info('member %s restored from the checkpoint (not trained again)', key)
            return self._restore_member(key)
        token = _ACTIVE_MEMBER.set(MemberCheckpoint(self, key))
        started, epochs_before = self._clock(), self.epochs_run
        try:
            regressor = fit()
        finally:
            _ACTIVE_MEMBER.reset(token)
        if self.epochs_run == epochs_before:  # not an epoch-level model: the next step is a whole member
            self._last_step = self._clock() - started
        self.members_run += 1
        self._save_member(key, regressor)
        if not last:
            reason = self.should_stop()
            if reason is not None:
                raise TrainingInterrupted(reason, {'member': key, 'epoch': None})
        return regressor

    def _epoch_done(self, key, epoch, state, final):
        now = self._clock()
        self._last_step, self._mark = now - self._mark, now
        self.epochs_run += 1
        self._epochs_since_save += 1
        if final:
            return
        reason = self.should_stop()
        due = (self.every_epochs and self._epochs_since_save >= self.every_epochs) or \
            (self.every_seconds is not None and now - self._last_save >= self.every_seconds)
        if reason is not None or due:
            scalars, tensors = state()
            self._save_current(key, epoch, scalars, tensors)
        if reason is not None:
            raise TrainingInterrupted(reason, {'member': key, 'epoch': epoch})

    # -- writing ----------------------------------------------------------------------------------------------------
    def _write_arrays(self, name: str, arrays: dict, kind: str) -> str:
        if kind == 'torch':
            from safetensors.torch import save_file
        else:
            from safetensors.numpy import save_file
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        _atomic_write(path, lambda tmp: save_file(arrays, str(tmp)))
        return _file_sha256(path)

    def _save_member(self, key: str, regressor) -> None:
        config, arrays = regressor.get_state()
        name = f'member-{key.replace(".", "-")}.safetensors'
        sha256 = self._write_arrays(name, {k: np.ascontiguousarray(v) for k, v in arrays.items()}, 'numpy')
        self.members[key] = json.loads(json.dumps({'file': name, 'sha256': sha256, 'config': config,
                                                   'history': regressor.history}, default=_json_default))
        if self.current is not None and self.current['member'] == key:
            self.current = None
        self.serial += 1
        self._write_state()
        LOGGER.info('checkpoint %d: member %s finished', self.serial, key)

    def _save_current(self, key, epoch, scalars, tensors) -> None:
        self.serial += 1
        name = f'current-{self.serial:06d}.safetensors'
        sha256 = self._write_arrays(name, tensors, 'torch')
        self.current = {'member': key, 'epoch': epoch, 'file': name, 'sha256': sha256,
                        'scalars': json.loads(json.dumps(scalars, default=_json_default))}
        self._write_state()
        LOGGER.info('checkpoint %d: member %s after epoch %d', self.serial, key, epoch)

    def _write_state(self) -> None:
        state = {'format': CHECKPOINT_FORMAT, 'format_version': CHECKPOINT_VERSION, 'fingerprint': self.fingerprint,
                 'training': self.training, 'versions': _versions(), 'serial': self.serial,
                 'members': self.members, 'current': self.current}
        state['state_sha256'] = _json_sha256(state)
        text = json.dumps(state, indent=1, sort_keys=True, default=_json_default)
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.directory / CHECKPOINT_STATE, lambda tmp: tmp.write_text(text))
        self.saves += 1
        self._last_save, self._epochs_since_save = self._clock(), 0
        keep = {CHECKPOINT_STATE, *self.files(state)}
        for path in self.directory.iterdir():  # superseded loop states, leftovers of a killed write
            if path.name not in keep and (path.name.startswith(('current-', 'member-')) or '.tmp-' in path.name):
                path.unlink(missing_ok=True)

    def _restore_member(self, key: str):
        from safetensors.numpy import load_file

        from .models import REGRESSOR_KINDS

        entry = self.members[key]
        arrays = load_file(str(self.directory / entry['file']))
        regressor = REGRESSOR_KINDS[entry['config']['kind']].from_state(entry['config'], arrays)
        regressor.history = entry['history']
        return regressor


def _versions() -> dict:
    """What a resumed training must share with the run that wrote the checkpoint to continue it bit for bit on the
    CPU: the libraries, which one computes the float32 products (:func:`~aiida_voltnet.ml.networks.cpu_products`:
    oneDNN on AMD's AVX-512 CPUs, torch's elsewhere, so a node of another CPU kind differs) and the thread count
    (review: a resume on another kind changed the model by 1e-6 without a word)."""
    try:
        from aiida_voltnet import __version__
    except ImportError:  # pragma: no cover
        __version__ = None
    from aiida_voltnet.ml.networks import cpu_products

    return {'torch': torch.__version__, 'numpy': np.__version__, 'aiida_voltnet': __version__,
            'cpu_products': cpu_products(), 'threads': torch.get_num_threads()}
