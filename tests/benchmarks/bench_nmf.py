"""Benchmark of ong_misguide.nmf: NMF of every prunable layer of a CIFAR ResNet18 at rank 8, against scikit-learn.

Run from the repository root: `python tests/benchmarks/bench_nmf.py [--threads N]`. One run measures, on
N CPU threads (default 2, for PyTorch and for the BLAS under scikit-learn):

* scikit-learn's `NMF(solver='cd', init='nndsvda', max_iter=200)` layer by layer: total time and mean error;
* ours (`factorize_layers`, HALS, `nndsvda`) run until each layer reaches scikit-learn's final error (within
  0.5%): time and the speed-up (target >= 20x);
* the speed of a large float32 matmul, and our time against the matmul-bound estimate
  sum over layers and iterations of 4*m*n*k flops divided by that speed (aim: within 1.5x);
* for scale, ours with the defaults and with 200 iterations per layer, and a plain, unbatched PyTorch
  multiplicative-update loop of 200 iterations.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import numpy as np
import torch
import sklearn
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from ong_misguide.models import create_cifar_model
from ong_misguide.nmf import factorize_layers, weight_magnitudes

RANK, ITERS, SLACK = 8, 200, 1.005


def cpu_name() -> str:
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    "Best float32 GFLOP/s of an n x n matmul."
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = float('inf')
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps): a @ b
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n ** 3 / best / 1e9


def rel_error(M: torch.Tensor, W, H) -> float:
    return float((M - torch.as_tensor(W) @ torch.as_tensor(H)).norm() / M.norm())


def run_sklearn(mats) -> tuple[float, dict[str, float], dict[str, int]]:
    "Total time, final relative error and iterations of scikit-learn's NMF, layer by layer."
    errors, iters, total = {}, {}, 0.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConvergenceWarning)
        NMF(2, solver='cd', init='nndsvda', max_iter=5).fit(np.random.default_rng(0).random((20, 30)))   # warm-up
    for name, M in mats.items():
        X = M.numpy()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', ConvergenceWarning)
            t = time.perf_counter()
            sk = NMF(RANK, solver='cd', init='nndsvda', max_iter=ITERS)
            W = sk.fit_transform(X)
            total += time.perf_counter() - t
        errors[name], iters[name] = rel_error(M, W, sk.components_), sk.n_iter_
    return total, errors, iters


def run_ours(mats, reps: int = 5, **kw):
    "Median time over `reps` runs of `factorize_layers` (after one warm-up run) and the last result."
    res = factorize_layers(mats, RANK, **kw)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        res = factorize_layers(mats, RANK, **kw)
        times.append(time.perf_counter() - t)
    return statistics.median(times), res


def run_plain_mu(mats, iters: int = ITERS) -> tuple[float, dict[str, float]]:
    "A plain PyTorch multiplicative-update loop, one layer at a time, from scikit-learn's scaled random start."
    eps = torch.finfo(torch.float32).eps
    errors, total = {}, 0.
    for name, M in mats.items():
        t = time.perf_counter()
        g = torch.Generator().manual_seed(0)
        avg = (M.mean() / RANK).sqrt()
        H = avg * torch.randn(RANK, M.shape[1], generator=g).abs()
        W = avg * torch.randn(M.shape[0], RANK, generator=g).abs()
        for _ in range(iters):
            W *= (M @ H.T) / (W @ (H @ H.T) + eps)
            H *= (W.T @ M) / ((W.T @ W) @ H + eps)
        total += time.perf_counter() - t
        errors[name] = rel_error(M, W, H)
    return total, errors


def product_seconds(mats, reps: int = 20) -> dict[str, float]:
    """Measured seconds of the two float32 products of one HALS or MU iteration, `W^T M` and `H M^T` at rank 8,
    for each layer alone (median of `reps`). Skinny products run far below the square-matmul speed, so this is
    the bound that the factorisation's own products set on this machine."""
    out = {}
    for name, M in mats.items():
        Wt, H = torch.rand(RANK, M.shape[0]), torch.rand(RANK, M.shape[1])
        Wt @ M; H @ M.mT
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            Wt @ M; H @ M.mT
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
    return out


def flops(mats, n_iter: dict[str, int]) -> float:
    "The matmul work of HALS or MU: 4*m*n*k flops per iteration, summed over layers and iterations."
    return sum(4 * M.shape[0] * M.shape[1] * RANK * n_iter[name] for name, M in mats.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=2, help='CPU threads for PyTorch and BLAS (default 2)')
    threads = parser.parse_args().threads
    torch.set_num_threads(threads)
    threadpool_limits(threads)
    torch.manual_seed(0)
    mats = weight_magnitudes(create_cifar_model('resnet18'))
    n_shapes = len({tuple(M.shape) for M in mats.values()})
    print(f'machine: {cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; '
          f'torch {torch.__version__}, scikit-learn {sklearn.__version__}')
    print(f'load average at start (other processes): {os.getloadavg()[0]:.2f}')
    print(f'model: CIFAR ResNet18, {len(mats)} prunable layers in {n_shapes} shapes, '
          f'{sum(M.numel() for M in mats.values()) / 1e6:.2f} M weights; rank {RANK}')
    gflops = matmul_gflops()
    print(f'matmul speed: {gflops:.1f} GFLOP/s (2048 x 2048 float32, best of 3)')

    t_sk, e_sk, it_sk = run_sklearn(mats)
    mean_sk = np.mean(list(e_sk.values()))
    print(f'\nsklearn NMF(cd, nndsvda, max_iter={ITERS}): {t_sk:.2f} s, mean error {mean_sk:.5f}, '
          f'iterations {min(it_sk.values())}-{max(it_sk.values())} per layer')

    target = {name: SLACK * e for name, e in e_sk.items()}
    rows = [('ours, to sklearn error +0.5%', dict(target_error=target, tol=0, check_every=1)),
            ('ours, defaults (tol=1e-4)', {}),
            (f'ours, {ITERS} iterations', dict(tol=0))]
    results = {}
    for label, kw in rows:
        t, res = run_ours(mats, **kw)
        ratio = np.array([res.errors[n] / e_sk[n] for n in mats])
        est = flops(mats, res.n_iter) / (gflops * 1e9)
        results[label] = (t, res, ratio, est)
        print(f'{label:32s} {t:7.3f} s, {sum(res.n_iter.values()):5d} layer-iterations, '
              f'mean error {np.mean(list(res.errors.values())):.5f} '
              f'(ratio to sklearn mean {ratio.mean():.4f}, max {ratio.max():.4f}); speed-up {t_sk / t:6.1f}x; '
              f'matmul-bound estimate {est * 1e3:6.1f} ms, ours/estimate {t / est:5.1f}x')

    prod = product_seconds(mats)
    n_big = max(mats, key=lambda n: mats[n].numel())
    print(f'measured products W^T M and H M^T of the largest layer {tuple(mats[n_big].shape)}: '
          f'{4 * mats[n_big].numel() * RANK / prod[n_big] / 1e9:.1f} GFLOP/s')
    for label, _ in rows:
        t, res, _, _ = results[label]
        bound = sum(prod[n] * res.n_iter[n] for n in mats)
        print(f'{label:32s} product-bound estimate (measured products x iterations) {bound * 1e3:6.1f} ms, '
              f'ours/estimate {t / bound:5.1f}x')

    t_mu, e_mu = run_plain_mu(mats)
    ratio_mu = np.array([e_mu[n] / e_sk[n] for n in mats])
    est_mu = flops(mats, {n: ITERS for n in mats}) / (gflops * 1e9)
    label = f'plain unbatched MU loop, {ITERS} it'
    print(f'{label:32s} {t_mu:7.3f} s, {ITERS * len(mats):5d} layer-iterations, '
          f'mean error {np.mean(list(e_mu.values())):.5f} '
          f'(ratio to sklearn mean {ratio_mu.mean():.4f}, max {ratio_mu.max():.4f}); speed-up {t_sk / t_mu:6.1f}x; '
          f'matmul-bound estimate {est_mu * 1e3:6.1f} ms, loop/estimate {t_mu / est_mu:5.1f}x')

    t_fix, _ = run_ours(mats, max_iter=1)
    print(f'fixed cost of ours (input checks, stacking, nndsvda start, 1 iteration): {t_fix:.3f} s')

    t, res, ratio, est = results[rows[0][0]]
    print(f'\nRESULT speed-up to sklearn error (+0.5%): {t_sk / t:.1f}x (target >= 20x): '
          f'{"met" if t_sk / t >= 20 else "MISSED"}; max error ratio {ratio.max():.4f}')
    print(f'RESULT ours / matmul-bound estimate: {t / est:.1f}x (aim <= 1.5x): {"met" if t / est <= 1.5 else "MISSED"}')
    t, res, ratio, est = results[rows[2][0]]
    print(f'RESULT at {ITERS} iterations, ours / matmul-bound estimate: {t / est:.1f}x (aim <= 1.5x): '
          f'{"met" if t / est <= 1.5 else "MISSED"}')
    print(f'load average at end (other processes): {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
