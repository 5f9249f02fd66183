"""Training figures on a GPU (issue #5, item 6), prepared to run on a lent GPU machine in one short call.

Step 1, here (pymatgen featurizes the shared CSV; the arrays go to an ignored folder, nothing is committed):

    python benchmarks/gpu_training.py --export .gpu/features.npz

Step 2, on the GPU machine, whose image has torch, numpy and scikit-learn but no pymatgen or AiiDA (the device
tool: ``carry: [".gpu"]``, ``timeout_s`` 600):

    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_training.py --features .gpu/features.npz --out $OUT/gpu.json

It prints one table (and writes it as JSON with ``--out``), with the card's name:

1. MHA-ResNet on the paper features, batch 512, Adam 5e-3: seconds per epoch of the seed-style loop
   (``DataLoader``), of ours in fp32 (TF32 off for both, so both do exact float32 arithmetic) and of ours with bf16
   autocast; ratios to the seed-style loop; 1000-epoch projections;
2. a real training of the paper's 1000 epochs with the package's ``train_network`` (ours, fp32, early stopping
   off) on the training rows of the paper's random 90/10 split (seed 0; features fitted on those rows only): total
   wall time and the test MAE in V;
3. MHA-ResNet on the leak-free features (325-long sequences): seconds per epoch, seed-style loop and ours;
4. one ``voltnet_mlp`` member (our GPU-friendly leak-free network) with its own budget: per epoch and in total;
5. the default model (``voltnet``: 5 gradient-boosted tree members; scikit-learn on the machine's CPU cores, it
   has no GPU path): fit time;
6. the default model on a framework-grouped 90/10 split (seed 0; features fitted on the training rows): test MAE
   in V, the reference for 7;
7. MHA-ResNet on the leak-free features trained on that split (``--leakfree-full-epochs``, 250 by default: the
   paper's 1000 take about 14 min on an H200, more than one call): total wall time and test MAE in V, the
   leak-free number that a CPU budget cannot give (last, so that a run stopped at its time limit still has 1-6).

With ``--out``, the JSON is rewritten after every step, so a run stopped at its time limit leaves what it measured.

``--quick`` (a few rows and epochs) is the smoke run the test suite makes on CPU.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from common import DEFAULT_CSV, device_name, existing_file, git_commit, new_file, positive_int, read_data, run
from epoch_speed import our_epoch, seed_style_epoch, timed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aiida_voltnet.ml.networks import MHAResNet, build_network, fast_mha_resnet
from aiida_voltnet.ml.training import TrainConfig, resolve_device, train_network


def export(path: Path, csv: str) -> None:
    """Featurize the CSV here (pymatgen) and save what the GPU machine needs: features, targets, model specs."""
    import warnings

    from aiida_voltnet.ml.featurizers import LeakFreeFeaturizer, PaperFeaturizer
    from aiida_voltnet.ml.models import MODEL_SPECS
    from aiida_voltnet.ml.records import file_sha256

    from aiida_voltnet.ml.splits import make_split

    records = read_data(csv)
    # the accuracy rows: the paper's random 90/10 (paper features) and a framework-grouped 90/10 (leak-free
    # features), seed 0, each featurizer fitted on its training rows only (PCA and min-max included)
    random_train, random_test = make_split(records, 'random', seed=0)
    grouped_train, grouped_test = make_split(records, 'grouped', seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        paper = PaperFeaturizer(seed=0).fit_transform(records)
        leakfree = LeakFreeFeaturizer().fit_transform(records)
        paper_random = PaperFeaturizer(seed=0).fit([records[i] for i in random_train]).transform(records)
        leakfree_grouped = LeakFreeFeaturizer().fit([records[i] for i in grouped_train]).transform(records)
    meta = {'csv_sha256': file_sha256(csv), 'rows': len(records), 'commit': git_commit(),
            'specs': {name: MODEL_SPECS[name] for name in ('mha_resnet', 'voltnet_mlp', 'voltnet')}}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, paper=paper.astype(np.float32), leakfree=leakfree.astype(np.float32),
                        y=np.array([r.average_voltage for r in records], dtype=np.float32),
                        paper_random=paper_random.astype(np.float32), random_train=random_train,
                        random_test=random_test, leakfree_grouped=leakfree_grouped.astype(np.float32),
                        grouped_train=grouped_train, grouped_test=grouped_test,
                        meta=np.array(json.dumps(meta)))
    print(f'wrote {path}: {len(records)} rows, paper {paper.shape[1]} and leak-free {leakfree.shape[1]} features')


def epoch_times(X, y, device, epochs, bf16=True) -> dict:
    """Seconds per epoch (median of ``epochs``, interleaved after one warm-up) of the three MHA-ResNet loops."""
    torch.manual_seed(0)
    base = MHAResNet(X.shape[1])
    seed_model = copy.deepcopy(base).to(device)
    ours = fast_mha_resnet(copy.deepcopy(base)).to(device)
    Xt, yt = torch.as_tensor(X, device=device), torch.as_tensor(y, device=device)
    criterion = nn.MSELoss()
    loader = DataLoader(TensorDataset(Xt, yt), batch_size=512, shuffle=True)
    opt_seed = torch.optim.Adam(seed_model.parameters(), lr=5e-3)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=5e-3, fused=True)
    generator = torch.Generator().manual_seed(0)
    runs = {'seed-style': lambda: seed_style_epoch(seed_model, loader, opt_seed, criterion),
            'ours fp32': lambda: our_epoch(ours, Xt, yt, opt_ours, criterion, generator)}
    if bf16:
        half = fast_mha_resnet(copy.deepcopy(base)).to(device)
        opt_half = torch.optim.Adam(half.parameters(), lr=5e-3, fused=True)
        generator_half = torch.Generator().manual_seed(0)
        runs['ours bf16'] = lambda: our_epoch(half, Xt, yt, opt_half, criterion, generator_half, bf16=True)
    for epoch in runs.values():
        timed(epoch, 1, device)
    times = {label: [] for label in runs}
    for _ in range(epochs):
        for label, epoch in runs.items():
            times[label].extend(timed(epoch, 1, device))
    return {label: float(np.median(t)) for label, t in times.items()}


def full_training(X, y, train, test, device, epochs) -> dict:
    """The package's training loop (ours, fp32, MHA-ResNet) for ``epochs`` epochs, early stopping off, on the rows
    ``train`` (its own validation rows carved inside, as in the package); total wall time and MAE on ``test`` in V
    (the best-validation weights, as ``train_network`` restores them)."""
    torch.manual_seed(0)
    network = fast_mha_resnet(MHAResNet(X.shape[1]))
    mean, scale = float(y[train].mean()), float(y[train].std())
    config = TrainConfig(epochs=epochs, batch_size=512, lr=5e-3, patience=None, seed=0, device=str(device))
    if device.type == 'cuda':
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = train_network(network, X[train], (y[train] - mean) / scale, config)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    network.eval()
    with torch.no_grad():
        predicted = network(torch.as_tensor(X[test], device=device)).float().cpu().numpy().reshape(-1)
    mae = float(np.mean(np.abs(predicted * scale + mean - y[test])))
    return {'epochs': result.epochs_run, 'wall_s': wall, 's_per_epoch': wall / max(result.epochs_run, 1),
            'best_epoch': result.best_epoch, 'train_rows': int(len(train)), 'test_rows': int(len(test)),
            'test_mae_v': mae}


def mlp_member(X, y, device, spec, epochs=None) -> dict:
    params = spec['params']
    train = dict(params['train'], seed=0, device=str(device))
    if epochs is not None:
        train['epochs'] = epochs
    network = build_network(params['architecture'], X.shape[1], **params['network'])
    y_std = (y - y.mean()) / y.std()
    started = time.perf_counter()
    result = train_network(network, X, y_std, TrainConfig(**train))
    if device.type == 'cuda':
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    return {'epochs': result.epochs_run, 'budget': train['epochs'], 'wall_s': wall,
            's_per_epoch': wall / max(result.epochs_run, 1)}


def trees(X, y, spec, max_iter=None, train=None, test=None) -> dict:
    """The default model's members as ``GradientBoostedTrees.fit`` calls scikit-learn (row subsample 1.0): fit
    time on all rows, or, given ``train`` and ``test``, on the rows ``train`` with the ensemble's MAE on ``test``."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    hyper = dict(spec['params'])
    if hyper.pop('subsample', 1.0) != 1.0:
        raise ValueError('the exported voltnet spec subsamples rows; this timing assumes it does not')
    if max_iter is not None:
        hyper['max_iter'] = max_iter
    rows = np.arange(len(y)) if train is None else train
    started = time.perf_counter()
    members = [HistGradientBoostingRegressor(early_stopping=False, random_state=member, **hyper).fit(X[rows], y[rows])
               for member in range(spec['members'])]
    out = {'members': spec['members'], 'wall_s': time.perf_counter() - started, 'max_iter': hyper['max_iter']}
    if test is not None:
        mean = np.mean([member.predict(X[test]) for member in members], axis=0)
        out.update(train_rows=int(len(train)), test_rows=int(len(test)),
                   test_mae_v=float(np.mean(np.abs(mean - y[test]))))
    return out


STEPS = ('mha_paper_epoch_s', 'mha_paper_full', 'mha_leakfree_epoch_s', 'voltnet_mlp_member', 'voltnet_trees',
         'voltnet_trees_grouped', 'mha_leakfree_full')
FEATURE_ARRAYS = ('paper', 'leakfree', 'y', 'paper_random', 'random_train', 'random_test', 'leakfree_grouped',
                  'grouped_train', 'grouped_test', 'meta')


def load_features(path) -> dict:
    """The arrays ``export`` wrote to ``path``, ``meta`` decoded; ValueError if one is missing or ``meta`` is not
    the export's JSON (not an exported file)."""
    try:
        data = np.load(path)
    except ValueError:  # neither .npy nor .npz: numpy would need pickle to read it
        raise ValueError(f'{path} is not a file written by --export: not an .npz archive') from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f'{path} is not a file written by --export: not an .npz archive')
    with data:
        missing = [name for name in FEATURE_ARRAYS if name not in data.files]
        if missing:
            raise ValueError(f'{path} is not a file written by --export: missing array(s) {", ".join(missing)}')
        out = {name: data[name] for name in FEATURE_ARRAYS}
    try:
        out['meta'] = json.loads(str(out['meta']))
        out['meta']['commit'], out['meta']['csv_sha256'], out['meta']['specs']
    except (ValueError, TypeError, KeyError):
        raise ValueError(f'{path} is not a file written by --export: its meta array is not the export\'s') from None
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--export', type=Path, default=None, metavar='NPZ', help='featurize the CSV into NPZ (here)')
    # not checked unless given: the GPU machine has no shared CSV, and --features runs never read it
    parser.add_argument('--data', type=existing_file, default=None, help='CSV for --export (default: the shared CSV)')
    parser.add_argument('--features', type=existing_file, default=None, metavar='NPZ',
                        help='exported features (GPU machine)')
    parser.add_argument('--device', type=device_name, default='auto',
                        help='auto (CUDA when present), cpu, cuda or cuda:N; checked before anything runs')
    parser.add_argument('--epochs', type=positive_int, default=10, help='timed epochs per loop (median)')
    parser.add_argument('--full-epochs', type=positive_int, default=1000,
                        help="epochs of the real training (paper's 1000)")
    parser.add_argument('--leakfree-full-epochs', type=positive_int, default=250,
                        help='epochs of the leak-free MHA-ResNet training on the grouped split (last step; 250 fit '
                             'in one 10-minute call on an H200 with the other steps, the paper\'s 1000 take about '
                             '14 min there)')
    parser.add_argument('--only', choices=STEPS, default=None,
                        help='run this one step (a rerun of a step that a timed-out run did not finish)')
    parser.add_argument('--quick', action='store_true', help='200 rows, 1-2 epochs: a smoke run')
    parser.add_argument('--out', type=new_file, default=None, help='write the figures as JSON here')
    args = parser.parse_args()
    if args.export:
        return export(args.export, args.data or str(DEFAULT_CSV))
    if not args.features:
        parser.error('give --export NPZ (here) or --features NPZ (on the GPU machine)')
    data = read_data(args.features, '--features', load_features)
    meta = data['meta']
    rows = 200 if args.quick else None
    X_paper, X_free, y = data['paper'][:rows], data['leakfree'][:rows], data['y'][:rows]
    n = len(y)
    splits = {name: data[name][data[name] < n] for name in ('random_train', 'random_test', 'grouped_train',
                                                           'grouped_test')}
    epochs, full_epochs = (1, 2) if args.quick else (args.epochs, args.full_epochs)
    leakfree_full_epochs = 2 if args.quick else args.leakfree_full_epochs
    device = resolve_device(args.device)
    # exact float32 for every fp32 row: TF32 would round the products of both loops to 10-bit mantissas
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    print(f'device {name}, torch {torch.__version__}, commit {git_commit()} (features exported at {meta["commit"]}), '
          f'{n} rows', flush=True)
    out = {'device': name, 'torch': torch.__version__, 'python': platform.python_version(), 'commit': git_commit(),
           'features_commit': meta['commit'], 'csv_sha256': meta['csv_sha256'], 'rows': int(n)}

    def step(key, label, measure):
        if args.only not in (None, key):
            return
        out[key] = measure()
        print(f'{label}:', json.dumps(out[key]), flush=True)
        if args.out:  # after every step: a run stopped at its time limit keeps what it measured
            args.out.write_text(json.dumps(out, indent=1))

    step('mha_paper_epoch_s', 'MHA-ResNet, paper features, s/epoch', lambda: epoch_times(X_paper, y, device, epochs))
    step('mha_paper_full', 'MHA-ResNet, paper features, full training, random 90/10',
         lambda: full_training(data['paper_random'][:rows], y, splits['random_train'], splits['random_test'],
                               device, full_epochs))
    step('mha_leakfree_epoch_s', 'MHA-ResNet, leak-free features, s/epoch',
         lambda: epoch_times(X_free, y, device, max(1, epochs // 3), bf16=False))
    step('voltnet_mlp_member', 'voltnet_mlp member',
         lambda: mlp_member(X_free, y, device, meta['specs']['voltnet_mlp'], epochs=2 if args.quick else None))
    step('voltnet_trees', 'voltnet (default, trees on CPU)',
         lambda: trees(X_free, y, meta['specs']['voltnet'], max_iter=5 if args.quick else None))
    step('voltnet_trees_grouped', 'voltnet (default, trees on CPU), grouped 90/10',
         lambda: trees(data['leakfree_grouped'][:rows], y, meta['specs']['voltnet'], max_iter=5 if args.quick else None,
                       train=splits['grouped_train'], test=splits['grouped_test']))
    step('mha_leakfree_full', 'MHA-ResNet, leak-free features, full training, grouped 90/10',
         lambda: full_training(data['leakfree_grouped'][:rows], y, splits['grouped_train'], splits['grouped_test'],
                               device, leakfree_full_epochs))

    if args.only:
        return
    seed, ours = out['mha_paper_epoch_s']['seed-style'], out['mha_paper_epoch_s']['ours fp32']
    print(f'\n| what ({name}) | s/epoch | 1000 epochs (min) | vs seed-style |')
    print('|---|---|---|---|')
    for label, value in out['mha_paper_epoch_s'].items():
        print(f'| MHA-ResNet, paper features, {label} | {value:.4f} | {value * 1000 / 60:.1f} | {seed / value:.2f}x |')
    full = out['mha_paper_full']
    # the real trainings run over their split's training rows (fewer than the timed epochs' all rows): no ratio
    print(f'| MHA-ResNet, paper features, ours fp32, real {full["epochs"]}-epoch training on {full["train_rows"]} rows '
          f'(random 90/10: test MAE {full["test_mae_v"]:.3f} V) | {full["s_per_epoch"]:.4f} | '
          f'{full["wall_s"] / 60:.1f} (measured) | — |')
    free = out['mha_leakfree_epoch_s']
    for label, value in free.items():
        print(f'| MHA-ResNet, leak-free features, {label} | {value:.4f} | {value * 1000 / 60:.1f} | '
              f'{free["seed-style"] / value:.2f}x |')
    free_full = out['mha_leakfree_full']
    print(f'| MHA-ResNet, leak-free features, ours fp32, real {free_full["epochs"]}-epoch training on '
          f'{free_full["train_rows"]} rows (grouped 90/10: test MAE {free_full["test_mae_v"]:.3f} V) | '
          f'{free_full["s_per_epoch"]:.4f} | {free_full["wall_s"] / 60:.1f} (measured) | — |')
    mlp = out['voltnet_mlp_member']
    print(f'| voltnet_mlp member, {mlp["epochs"]} of {mlp["budget"]} epochs | {mlp["s_per_epoch"]:.4f} | '
          f'{mlp["wall_s"] / 60:.2f} (measured, this budget) | — |')
    tree = out['voltnet_trees']
    print(f'| voltnet (default), {tree["members"]} x {tree["max_iter"]} trees, CPU | — | {tree["wall_s"] / 60:.2f} '
          f'(measured) | — |')
    grouped = out['voltnet_trees_grouped']
    print(f'| voltnet (default) on the same grouped 90/10 (test MAE {grouped["test_mae_v"]:.3f} V), CPU | — | '
          f'{grouped["wall_s"] / 60:.2f} (measured) | — |')
    print(f'\nspeed-up of our loop over the seed-style loop on {name}: {seed / ours:.2f}x (fp32, same math)')


if __name__ == '__main__':
    run(main)
