"""Epoch time of the MHA-ResNet: the seed's own training loop vs ours, same data, same device, one run.

Seed-style loop (re-implemented from the seed's train.py): ``TensorDataset`` + ``DataLoader(batch_size=512,
shuffle=True)``, Adam(lr=5e-3), MSE, full ``nn.MultiheadAttention``.
Ours: the same network, parameters and optimizer (Adam 5e-3, fused into one kernel); one ``randperm`` per epoch
slicing device tensors; the exact single-token form of the attention (softmax over one key is 1) and the
convolutions computed as matrix products over unfolded windows. The forward math is the same function: the
script prints the largest output difference on identical weights (float summation order only, ~1e-6).

    python benchmarks/epoch_speed.py [--epochs 5] [--device auto] [--rows N]
"""
from __future__ import annotations

import argparse
import copy
import logging
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aiida_voltnet.ml.featurizers import PaperFeaturizer
from aiida_voltnet.ml.networks import MHAResNet, fast_mha_resnet
from aiida_voltnet.ml.records import read_electrodes_csv
from aiida_voltnet.ml.training import resolve_device

DEFAULT_CSV = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data' / 'mp_insertion_electrodes' / 'electrodes.csv'


def seed_style_epoch(model, loader, optimizer, criterion):
    model.train()
    for batch_x, batch_y in loader:
        optimizer.zero_grad()
        loss = criterion(model(batch_x), batch_y)
        loss.backward()
        optimizer.step()


def our_epoch(model, X, y, optimizer, criterion, generator, batch_size=512):
    model.train()
    order = torch.randperm(len(X), generator=generator).to(X.device)
    for start in range(0, len(X), batch_size):
        batch = order[start:start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(X[batch]), y[batch])
        loss.backward()
        optimizer.step()


def timed(fn, epochs, device):
    times = []
    for _ in range(epochs):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return np.array(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', default=str(DEFAULT_CSV))
    parser.add_argument('--epochs', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--rows', type=int, default=None, help='use only the first N rows')
    parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch\'s)')
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    records = read_electrodes_csv(args.data)[:args.rows]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        X = PaperFeaturizer(seed=0).fit_transform(records)
    y = np.array([r.average_voltage for r in records], dtype=np.float32)
    torch.manual_seed(0)
    base = MHAResNet(X.shape[1])
    seed_model = copy.deepcopy(base).to(device)
    ours = fast_mha_resnet(copy.deepcopy(base)).to(device)

    # Same forward math: identical outputs on identical weights (eval mode, so dropout is off).
    Xt = torch.as_tensor(X, device=device)
    seed_model.eval(), ours.eval()
    with torch.no_grad():
        diff = (seed_model(Xt[:1024]) - ours(Xt[:1024])).abs().max().item()

    criterion = nn.MSELoss()
    # The seed's loop: y as (N, 1) against (N,) predictions would broadcast; the seed's network returns (N, 1),
    # ours returns (N,): targets are shaped to match so both compute the same MSE.
    loader = DataLoader(TensorDataset(torch.FloatTensor(X).to(device), torch.FloatTensor(y).to(device)),
                        batch_size=512, shuffle=True)
    opt_seed = torch.optim.Adam(seed_model.parameters(), lr=5e-3)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=5e-3, fused=True)
    yt = torch.as_tensor(y, device=device)
    generator = torch.Generator().manual_seed(0)
    run_seed = lambda: seed_style_epoch(seed_model, loader, opt_seed, criterion)  # noqa: E731
    run_ours = lambda: our_epoch(ours, Xt, yt, opt_ours, criterion, generator)  # noqa: E731
    timed(run_seed, args.warmup, device), timed(run_ours, args.warmup, device)
    # Interleave to share the machine's noise fairly.
    t_seed, t_ours = [], []
    for _ in range(args.epochs):
        t_seed.extend(timed(run_seed, 1, device))
        t_ours.extend(timed(run_ours, 1, device))
    t_seed, t_ours = np.array(t_seed), np.array(t_ours)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = '?'
    print(f'MHA-ResNet epoch time, {len(X)} rows x {X.shape[1]} PCA features, batch 512, device {name}, '
          f'torch {torch.__version__}, commit {commit}')
    print(f'max |output difference| seed-style vs ours on identical weights: {diff:.2e}')
    print(f'{"loop":<12} {"median s/epoch":>15} {"min":>8} {"max":>8} {"1000 epochs (min)":>18}')
    for label, t in (('seed-style', t_seed), ('ours', t_ours)):
        print(f'{label:<12} {np.median(t):15.3f} {t.min():8.3f} {t.max():8.3f} {np.median(t) * 1000 / 60:18.1f}')
    print(f'speed-up (median seed-style / median ours): {np.median(t_seed) / np.median(t_ours):.2f}x')


if __name__ == '__main__':
    main()
