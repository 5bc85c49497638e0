"""Benchmark of ong_misguide.learned: the training-step time of STR, CS, DST and LC against dense training.

Run from the repository root: `python tests/benchmarks/bench_learned.py [--threads 2] [--rounds 3] [--steps 20]`.
One run measures, for a CIFAR ResNet20 at batch size 128 on real CIFAR-10 images (lossless subset), fp32, SGD
with Nesterov momentum:

* the median time of a training step (forward, loss and penalty, backward, optimizer step, the method's callback
  events) for dense training and for each method in its search phase, and the ratio of each method's median to
  dense's. Each of `--rounds` rounds runs every variant in turn for `--steps` timed steps, after 2 warm-up steps;
* for LC, the C step (a magnitude projection over all layers) separately. In this short benchmark it runs at
  every step, while a run of any length does it 40 times in all (the default `lc_steps`), so LC's step time is
  the L step alone;
* the one-off cost at the end of training: the projection to the exact target (`mask_seconds`).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import torch
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.learner import Learner

from ong_misguide.data import cifar_dls, load_lossless_cifar10
from ong_misguide.learned import CS, DST, LC, STR
from ong_misguide.models import create_cifar_model
from ong_misguide.train import sgd_opt_func

warnings.filterwarnings('ignore')
VARIANTS = {'dense': None, 'str': STR, 'cs': CS, 'dst': DST, 'lc': LC}


def cpu_name() -> str:
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class StepTimer(Callback):
    "Wall time of each training step, from `before_batch` to `after_step`; C-step time (LC) reported apart."
    order = -20   # first in before_batch

    def __init__(self): self.times, self.c_times = [], []

    def before_batch(self):
        if not self.training: return
        cb = getattr(self.learn, 'lc', None)
        self.c0 = cb.mask_seconds if cb is not None else 0.0
        self.t0 = time.perf_counter()

    def after_step(self):
        t = time.perf_counter() - self.t0
        cb = getattr(self.learn, 'lc', None)
        c = (cb.mask_seconds - self.c0) if cb is not None else 0.0
        self.times.append(t - c); self.c_times.append(c)


def run(dls, variant: str, steps: int):
    torch.manual_seed(0)
    timer = StepTimer()
    cls = VARIANTS[variant]
    cbs = [timer] + ([cls(sparsity=0.9)] if cls is not None else [])
    learn = Learner(dls, create_cifar_model('resnet20'), loss_func=nn.CrossEntropyLoss(), opt_func=sgd_opt_func(),
                    wd=1e-4, cbs=cbs)
    learn.remove_cbs([c for c in learn.cbs if type(c).__name__ == 'ProgressCallback'])
    learn.logger = lambda *a: None
    learn.fit(1, 0.1)
    method = learn.cbs[-1] if cls is not None else None
    projection = getattr(method, 'mask_seconds', 0.0) - sum(timer.c_times)     # LC's C steps counted apart
    return timer.times[2:steps + 2], timer.c_times[2:steps + 2], projection


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--threads', type=int, default=2, help='torch threads (default 2)')
    ap.add_argument('--rounds', type=int, default=3, help='rounds over all variants (default 3)')
    ap.add_argument('--steps', type=int, default=20, help='timed training steps per variant and round, at most 26 '
                    '(default 20)')
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    images = (args.steps + 2) * 128
    dls = cifar_dls(arrays=load_lossless_cifar10(), subset=int(images / 0.9) + 20, test_subset=100, bs=128, seed=0)
    assert len(dls.train) >= args.steps + 2, 'not enough images for the requested steps'
    print(f'machine: {cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; '
          f'torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}')
    print(f'ResNet20, batch 128, fp32, {args.steps} timed steps per fit, {args.rounds} rounds')

    times = {v: [] for v in VARIANTS}
    c_times, finish = [], {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in VARIANTS:
            t, c, m = run(dls, v, args.steps)
            times[v] += t; finish[v].append(m)
            if v == 'lc': c_times += [x for x in c if x > 0]
        print(f'round {r + 1}: ' + ', '.join(f'{v} {statistics.median(times[v]) * 1e3:.0f} ms' for v in VARIANTS),
              flush=True)

    dense = statistics.median(times['dense'])
    print(f'\n{"variant":8s} {"median step":>12s} {"ratio to dense":>15s} {"projection at the end":>22s}')
    for v in VARIANTS:
        med = statistics.median(times[v])
        proj = f'{statistics.median(finish[v]):.2f} s' if v != 'dense' else '-'
        extra = ' (L step, C step apart)' if v == 'lc' else ''
        print(f'{v:8s} {med * 1e3:9.0f} ms {med / dense:14.2f}x {proj:>22s}{extra}')

    c = statistics.median(c_times)
    print(f'LC C step (magnitude projection over all layers): median {c * 1e3:.0f} ms; over an example run of '
          f'200 epochs x 390 steps with 40 C steps that adds {40 * c / (200 * 390 * dense) * 100:.3f}% to dense time')
    for v in ('str', 'cs', 'dst', 'lc'):
        print(f'RESULT {v}: step time {statistics.median(times[v]) / dense:.2f}x dense')


if __name__ == '__main__':
    main()
