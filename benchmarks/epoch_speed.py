"""Epoch time of the MHA-ResNet: the seed's own training loop vs ours, same data, same device, one run.

Seed-style loop (re-implemented from the seed's train.py): ``TensorDataset`` + ``DataLoader(batch_size=512,
shuffle=True)``, Adam(lr=5e-3), MSE, full ``nn.MultiheadAttention``.
Ours: the same network, parameters and optimizer (Adam 5e-3, fused into one kernel); one ``randperm`` per epoch
slicing device tensors; the exact single-token form of the attention (softmax over one key is 1), the trunk
channels-last ``(batch, length, channels)`` with its convolutions computed as matrix products (batch norms over
contiguous rows), dropout masks from ``torch.rand``, and on an AMD CPU with AVX-512 every float32 product (forward
and backward) through oneDNN instead of torch's ``aten::mm`` (MKL, which runs AVX2 kernels on AMD CPUs with AVX-512;
``aiida_voltnet.ml.networks.cpu_linear``, chosen by ``networks.cpu_products``), the FFN's first product with its
ReLU as a oneDNN post-op, and the backward's temporaries (transposed copies, the ReLU-masked gradient) in buffers
reused from step to step; on AVX2 CPUs and Intel's AVX-512 ones torch's own products, which are faster there.
The forward math is the same function: the script prints the largest output difference on identical weights
(float summation order only, ~1e-6). The row "ours, aten::mm" or "ours, oneDNN" is the same loop with the other
library's products.

Also measured in the same run:

* the float32 floor: the multiply-adds of one epoch of our loop (forward + backward, counted by
  ``torch.utils.flop_counter``) divided by the device's float32 matrix-product rate (a 512 x 512 x 2048
  product, best of several, the faster of ``aten::mm`` and oneDNN). No float32 loop with these multiply-adds can
  be faster, so seed-style time / floor bounds the speed-up any exact rewrite can reach on this device;
* on CPU, the time our loop spends in matrix products alone (``torch.profiler``, one extra epoch; self time of
  ``aten::mm``/``addmm``/``bmm``): where that alone exceeds seed-style time / 3, no change outside the products
  can reach a 3x speed-up on this device;
* ours with ``precision='bf16'`` (``torch.autocast`` bfloat16 products, the training option of
  ``TrainConfig``): the same network and loss, but *not* identical arithmetic, reported apart.

    python benchmarks/epoch_speed.py [--epochs 5] [--device auto] [--rows N] [--no-bf16]
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import time
import warnings

import numpy as np
import torch
from common import (DEFAULT_CSV, InputError, at_least, device_name, existing_file, git_commit, non_negative_int,
                    positive_int, read_data, run)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aiida_voltnet.ml.networks import MHAResNet, cpu_linear, cpu_products, fast_mha_resnet
from aiida_voltnet.ml.training import forward_precision, resolve_device


def seed_style_epoch(model, loader, optimizer, criterion):
    model.train()
    for batch_x, batch_y in loader:
        optimizer.zero_grad()
        loss = criterion(model(batch_x), batch_y)
        loss.backward()
        optimizer.step()


def our_epoch(model, X, y, optimizer, criterion, generator, batch_size=512, bf16=False):
    """One epoch of our loop: one permutation, slices of the device tensors; ``bf16``: the forward pass under
    bfloat16 autocast (``TrainConfig.precision='bf16'``), the loss in float32."""
    model.train()
    order = torch.randperm(len(X), generator=generator).to(X.device)
    for start in range(0, len(X), batch_size):
        batch = order[start:start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        with forward_precision(X.device.type, 'bf16' if bf16 else 'fp32'):
            output = model(X[batch])
        loss = criterion(output.float(), y[batch])
        loss.backward()
        optimizer.step()


def epoch_flops(model, X, y, criterion, batch_size=512) -> float:
    """Floating-point operations (2 per multiply-add) of one training epoch: forward + backward of every batch."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    total = 0.0
    sizes = [min(batch_size, len(X) - start) for start in range(0, len(X), batch_size)]
    for size in set(sizes):
        counter = FlopCounterMode(display=False)
        with counter:
            criterion(model(X[:size]), y[:size]).backward()
        total += counter.get_total_flops() * sizes.count(size)
    model.zero_grad(set_to_none=True)
    return total


def _mm_nt(a, b):
    return a @ b.T


def matmul_rate(device, product=_mm_nt, dtype=torch.float32, repeats=10) -> float:
    """The device's float32 matrix-product rate (FLOP/s), best of ``repeats`` 512 x 512 x 2048 products
    ``product(a, b) = a @ b.T`` (default: ``aten::mm``; :func:`cpu_linear`: oneDNN on CPU)."""
    a = torch.randn(512, 512, device=device, dtype=dtype)
    b = torch.randn(2048, 512, device=device, dtype=dtype)
    best = math.inf
    for _ in range(repeats + 2):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            product(a, b)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 5)
    return 2 * 512 * 512 * 2048 / best


MATMUL_OPS = ('aten::mm', 'aten::addmm', 'aten::bmm', 'mkldnn::_linear_pointwise')


def matmul_seconds(fn) -> tuple[float, float]:
    """(seconds in matrix products, total self seconds) of one call of ``fn`` under ``torch.profiler`` (CPU self
    time, so for a CPU run only)."""
    import os
    import sys

    from torch.profiler import ProfilerActivity, profile

    # torch's profiler (kineto) writes "profiler_start"/"profiler_stop" lines to file descriptor 2 whatever its log
    # level: they are sent to /dev/null while it runs (a Python error still reaches the terminal, raised after)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as devnull:
            os.dup2(devnull.fileno(), 2)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    events = prof.key_averages()
    return (sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e6,
            sum(e.self_cpu_time_total for e in events) / 1e6)


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
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=existing_file, default=str(DEFAULT_CSV))
    parser.add_argument('--epochs', type=positive_int, default=5)
    parser.add_argument('--warmup', type=non_negative_int, default=1)
    parser.add_argument('--device', type=device_name, default='auto',
                        help='auto (CUDA when present), cpu, cuda or cuda:N; checked before anything runs')
    parser.add_argument('--rows', type=at_least(2), default=None, help='use only the first N rows')
    parser.add_argument('--threads', type=positive_int, default=None,
                        help='torch intra-op threads (default: torch\'s)')
    parser.add_argument('--no-bf16', action='store_true', help='skip the bfloat16-autocast row')
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    from aiida_voltnet.ml.featurizers import PaperFeaturizer

    device = resolve_device(args.device)
    records = read_data(args.data)[:args.rows]
    if len(records) % 512 == 1:  # both loops would train on a last batch of one row, where batch norm fails
        raise InputError(f'{len(records)} rows leave a last batch of one row (batch size 512), which the batch norms '
                         f'cannot train on: use --rows {len(records) - 1}')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        X = PaperFeaturizer(seed=0).fit_transform(records)
    y = np.array([r.average_voltage for r in records], dtype=np.float32)
    torch.manual_seed(0)
    base = MHAResNet(X.shape[1])
    seed_model = copy.deepcopy(base).to(device)
    # ours: the products cpu_products() chooses for this CPU (what training uses); the other library's as a row too
    chosen = cpu_products() if device.type == 'cpu' else 'aten'
    other = 'aten' if chosen == 'onednn' else 'onednn'
    other_label = {'aten': 'ours, aten::mm', 'onednn': 'ours, oneDNN'}[other]
    ours = fast_mha_resnet(copy.deepcopy(base), onednn=chosen == 'onednn').to(device)
    ours_other = fast_mha_resnet(copy.deepcopy(base), onednn=other == 'onednn').to(device)

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
    opt_other = torch.optim.Adam(ours_other.parameters(), lr=5e-3, fused=True)
    yt = torch.as_tensor(y, device=device)
    generator = torch.Generator().manual_seed(0)
    generator_other = torch.Generator().manual_seed(0)
    run_seed = lambda: seed_style_epoch(seed_model, loader, opt_seed, criterion)  # noqa: E731
    run_ours = lambda: our_epoch(ours, Xt, yt, opt_ours, criterion, generator)  # noqa: E731
    runs = {'seed-style': run_seed, 'ours': run_ours,
            other_label: lambda: our_epoch(ours_other, Xt, yt, opt_other, criterion, generator_other)}
    if not args.no_bf16:
        bf16 = copy.deepcopy(ours)  # a copy of the same initial network, so the fp32 rows are unaffected
        fast_mha_resnet(bf16, onednn=chosen == 'onednn')  # deepcopy keeps the partials bound to the original
        # modules: re-route to the copy
        opt_bf16 = torch.optim.Adam(bf16.parameters(), lr=5e-3, fused=True)
        generator_bf16 = torch.Generator().manual_seed(0)
        runs['ours, bf16'] = lambda: our_epoch(bf16, Xt, yt, opt_bf16, criterion, generator_bf16, bf16=True)  # noqa: E731
    # counted on the aten::mm form: the flop counter does not know oneDNN's kernel, and the multiply-adds are the same
    flops = epoch_flops(fast_mha_resnet(copy.deepcopy(base), onednn=False).to(device), Xt, yt, criterion)
    rate_mm, rate_onednn = matmul_rate(device), matmul_rate(device, cpu_linear)
    rate = max(rate_mm, rate_onednn)
    for epoch in runs.values():
        timed(epoch, args.warmup, device)
    # Interleave to share the machine's noise fairly.
    times = {label: [] for label in runs}
    for _ in range(args.epochs):
        for label, epoch in runs.items():
            times[label].extend(timed(epoch, 1, device))
    times = {label: np.array(t) for label, t in times.items()}
    in_matmul, profiled = matmul_seconds(run_ours) if device.type == 'cpu' else (None, None)
    t_seed, t_ours = times['seed-style'], times['ours']
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    print(f'MHA-ResNet epoch time, {len(X)} rows x {X.shape[1]} PCA features, batch 512, device {name}, '
          f'torch {torch.__version__}, commit {git_commit()}')
    capability = torch.backends.cpu.get_cpu_capability()
    print(f'max |output difference| seed-style vs ours on identical weights: {diff:.2e}')
    if device.type == 'cpu':
        print(f'ours: float32 products through {"oneDNN" if chosen == "onednn" else "aten::mm"} '
              f'(networks.cpu_products() for CPU capability {capability}); "{other_label}": the other library')
    floor = flops / rate
    print(f'float32 512 x 512 x 2048 products: aten::mm {rate_mm / 1e9:.0f} GFLOP/s, '
          f'cpu_linear {rate_onednn / 1e9:.0f} GFLOP/s')
    print(f'{"loop":<16} {"median s/epoch":>15} {"min":>8} {"max":>8} {"1000 epochs (min)":>18} {"vs seed-style":>14}')
    for label, t in times.items():
        print(f'{label:<16} {np.median(t):15.3f} {t.min():8.3f} {t.max():8.3f} {np.median(t) * 1000 / 60:18.1f} '
              f'{np.median(t_seed) / np.median(t):13.2f}x')
    print(f'{"fp32 floor":<16} {floor:15.3f} {"":>8} {"":>8} {floor * 1000 / 60:18.1f} '
          f'{np.median(t_seed) / floor:13.2f}x   ({flops / 1e9:.1f} GFLOP per epoch at the measured '
          f'{rate / 1e9:.0f} GFLOP/s float32 matrix-product rate)')
    print(f'speed-up (median seed-style / median ours): {np.median(t_seed) / np.median(t_ours):.2f}x; '
          f'ours runs at {flops / np.median(t_ours) / rate:.0%} of the matrix-product rate')
    if in_matmul is not None:
        budget = np.median(t_seed) / 3
        print(f'ours in matrix products alone: {in_matmul:.3f} s of a profiled epoch '
              f'({in_matmul / profiled:.0%} of its {profiled:.3f} s self time); '
              f'a 3x speed-up needs the whole epoch in {budget:.3f} s: '
              + ('out of reach without fewer or faster products' if in_matmul >= budget else
                 f'{budget - in_matmul:.3f} s left for everything else'))
    if 'ours, bf16' in times:
        print(f'bf16 autocast (not identical arithmetic): {np.median(t_seed) / np.median(times["ours, bf16"]):.2f}x')


if __name__ == '__main__':
    run(main)
