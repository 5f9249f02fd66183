"""The training loop for torch networks: device ``auto``, seeded, early stopping on a validation split carved
from the training rows, and a fast path that keeps the whole (small) data set on the device.

The seed's loop wraps tensors in ``TensorDataset`` + ``DataLoader(shuffle=True)``: for every mini-batch that
indexes rows one by one and re-stacks them with ``default_collate``. Ours draws one permutation per epoch and
slices the device tensors, which gives identical batches' math with far less Python per step; see
``benchmarks/epoch_speed.py``.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

__all__ = ['resolve_device', 'seed_everything', 'TrainConfig', 'TrainResult', 'train_network', 'predict_network',
           'TrainingDiverged']

LOGGER = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        super().__init__(f'loss became NaN/inf at epoch {epoch}')


def resolve_device(device: str | None = 'auto') -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else is passed to :class:`torch.device`."""
    if device in (None, 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    resolved = torch.device(device)
    if resolved.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('device cuda was asked for but torch sees no CUDA device')
    return resolved


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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


def _validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fraction)) if fraction > 0 else 0
    if n_val and n - n_val < 2:
        n_val = 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_network(network: nn.Module, X: np.ndarray, y: np.ndarray, config: TrainConfig,
                  progress: Callable[[int, float, float | None], None] | None = None) -> TrainResult:
    """Train ``network`` in place on standardized data with MSE and Adam; restore the best validation state.

    The validation rows are carved from (X, y) with ``config.seed``; test rows never enter this function.
    """
    device = resolve_device(config.device)
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
    for epoch in range(1, config.epochs + 1):
        network.train()
        order = torch.randperm(n, generator=generator).to(device)
        total = 0.0
        for start in range(0, n, config.batch_size):
            batch = order[start:start + config.batch_size]
            if len(batch) < 2 and n >= 2:  # BatchNorm cannot train on a single row
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(network(X_train[batch]), y_train[batch])
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
        if config.patience is not None and val_loss is not None and stale >= config.patience \
                and epoch >= config.min_epochs:
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
