"""Benchmark of ong_misguide.imp: the per-step time of IMP/BIMP training against dense training.

Run from the repository root: `python tests/benchmarks/bench_imp.py [--clock cpu|wall]`. One run measures, on
2 CPU threads, a CIFAR ResNet20 at batch size 128 on real CIFAR-10 images (the lossless subset, 28 training
batches per epoch), each variant fitted for one epoch with fastai's `fit_one_cycle`, in alternating order
`ROUNDS` times:

* dense training;
* BIMP at 90% sparsity with LLR (dense for 14 steps, then prunes before steps 14, 18 and 22) and with ALLR
  (which also measures the parameter norm at each prune).

A callback that runs first in `before_batch` and first in `after_batch` times every training batch, by the
process CPU time (`--clock cpu`, the default, which other processes on a shared machine disturb less) or by the
wall time (`--clock wall`). The time covers forward, backward, optimizer step, gradient and weight masking, the
prune at a phase's first step and the learning-rate callback. It leaves out the data loading between batches.
Printed:

* the median step time of BIMP's dense phase and of its retraining phases, each as a ratio to the dense median;
* the time each prune adds (step time at a prune minus the median retraining step) and the engine's
  `mask_seconds` per prune (wall time);
* the time of the whole fit as a ratio to the dense fit.
"""
from __future__ import annotations

import platform
import statistics
import time
import warnings

import torch
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.learner import Learner

from ong_misguide.data import cifar_dls, load_lossless_cifar10
from ong_misguide.imp import BIMP
from ong_misguide.models import create_cifar_model
from ong_misguide.train import sgd_opt_func

warnings.filterwarnings('ignore')
torch.set_num_threads(2)
ROUNDS, BS, SPARSITY = 2, 128, 0.9


def cpu_name() -> str:
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class BatchTimer(Callback):
    "Time of each training batch, from the first `before_batch` handler to the first `after_batch` handler."
    order = -20

    def __init__(self, clock): self.clock, self.seconds = clock, []
    def before_batch(self):
        if self.training: self.t0 = self.clock()
    def after_batch(self):
        if self.training: self.seconds.append(self.clock() - self.t0)


def fit_once(dls, method: BIMP | None, clock) -> tuple[list[float], float, BIMP | None]:
    torch.manual_seed(0)
    timer = BatchTimer(clock)
    cbs = [timer] + (method.callbacks() if method is not None else [])
    learn = Learner(dls, create_cifar_model('resnet20'), loss_func=nn.CrossEntropyLoss(), opt_func=sgd_opt_func(),
                    wd=1e-4, cbs=cbs)
    t0 = clock()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 0.1)
    return timer.seconds, clock() - t0, method


def main(clock_name: str):
    clock = {'wall': time.perf_counter, 'cpu': time.process_time}[clock_name]
    arrays = load_lossless_cifar10()
    dls = cifar_dls(arrays=arrays, test_subset=200, bs=BS, seed=0)   # all 4,000 lossless training images
    steps = len(dls.train)
    print(f'machine: {cpu_name()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}')
    print(f'model: CIFAR ResNet20, batch {BS}, {steps} training steps per fit, fit_one_cycle(1, 0.1); '
          f'{ROUNDS} rounds in alternating order; BIMP sparsity {SPARSITY}, 3 phases, pretrain 0.5; '
          f'{clock_name} time')
    fit_once(dls, None, clock)   # warm-up: first-call allocations and kernels

    runs = {'dense': [], 'bimp-LLR': [], 'bimp-ALLR': []}
    for _ in range(ROUNDS):
        runs['dense'].append(fit_once(dls, None, clock))
        runs['bimp-LLR'].append(fit_once(dls, BIMP(SPARSITY, retrain_schedule='LLR'), clock))
        runs['bimp-ALLR'].append(fit_once(dls, BIMP(SPARSITY, retrain_schedule='ALLR'), clock))

    dense_steps = [s for seconds, _, _ in runs['dense'] for s in seconds[1:]]   # skip each fit's first step
    dense_median = statistics.median(dense_steps)
    dense_fit = statistics.median(total for _, total, _ in runs['dense'])
    print(f'\ndense: median step {dense_median * 1e3:7.1f} ms, median fit {dense_fit:6.2f} s')
    results = {}
    for name in ('bimp-LLR', 'bimp-ALLR'):
        plan = runs[name][0][2].plan
        starts = set(plan.starts)
        dense_part = [s for seconds, _, _ in runs[name] for s in seconds[1:plan.pretrain]]
        retrain_part = [s for seconds, _, _ in runs[name] for t, s in enumerate(seconds)
                        if t >= plan.pretrain and t not in starts]
        prune_steps = [seconds[t] for seconds, _, _ in runs[name] for t in plan.starts]
        m_dense, m_retrain = statistics.median(dense_part), statistics.median(retrain_part)
        prune_extra = statistics.median(prune_steps) - m_retrain
        mask_seconds = statistics.median(method.mask_seconds / len(plan.starts) for _, _, method in runs[name])
        fit = statistics.median(total for _, total, _ in runs[name])
        results[name] = (m_retrain / dense_median, fit / dense_fit)
        print(f'{name:10s} dense phase {m_dense * 1e3:7.1f} ms ({m_dense / dense_median:5.3f}x dense), '
              f'retraining {m_retrain * 1e3:7.1f} ms ({m_retrain / dense_median:5.3f}x dense); '
              f'each prune adds {prune_extra * 1e3:6.1f} ms ({prune_extra / dense_median:4.2f} dense steps; '
              f'engine mask_seconds {mask_seconds * 1e3:6.1f} ms wall); fit {fit:6.2f} s ({fit / dense_fit:5.3f}x dense)')
    for name, (step_ratio, fit_ratio) in results.items():
        print(f'RESULT {name} ({clock_name} time): retraining step / dense step = {step_ratio:.3f}x; '
              f'whole fit / dense fit = {fit_ratio:.3f}x ({steps} steps, 3 prunes)')


if __name__ == '__main__':
    import argparse
    parser = argparse.ArgumentParser(description='Per-step time of IMP/BIMP training against dense training.')
    parser.add_argument('--clock', choices=('cpu', 'wall'), default='cpu',
                        help='cpu: process CPU time, less sensitive to other load on the machine (default); wall')
    main(parser.parse_args().clock)
