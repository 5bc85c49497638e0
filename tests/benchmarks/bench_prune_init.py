"""Benchmark of ong_misguide.prune_init: time to compute the masks of SNIP, GraSP and SynFlow for a ResNet20, and
the time per training step of each against dense training and ONG.

Run from the repository root: `python tests/benchmarks/bench_prune_init.py` (`--steps N --rounds R` to change the
length). One run measures, on 2 CPU threads, a CIFAR ResNet20 at batch size 128 on real CIFAR-10 images (the
lossless subset), fp32, SGD with Nesterov momentum, sparsity 0.9, each method with its defaults (SNIP: one batch
of 128; GraSP: 10 images per class, T = 200; SynFlow: 100 rounds in float64; ONG: rank 1):

* the masks: each method scores and prunes once, in `before_fit` of its first fit; printed are the wall time
  (`mask_seconds` of the report) and the CPU time of the process (both threads) over that pruning;
* the steps: each method and dense training for the same number of steps, the methods taking turns within every
  round so that changes in machine load hit all of them alike; a step is timed from the first `before_batch`
  callback to the last `after_batch` callback (forward, backward, optimizer step and the masking), not data
  loading; the ratio of each method's median step time to dense in each round (medians, so that a step stalled
  by other processes does not count), and the median of those ratios, in wall time and in CPU time of the
  process (less sensitive to other processes on a shared machine).
  The four pruned runs do the same masking work per step, so their ratios should agree within the noise.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

warnings.filterwarnings('ignore')

import torch
import torch.nn as nn
from fastai.callback.core import Callback, CancelValidException
from fastai.learner import Learner

from ong_misguide.data import cifar_dls, load_lossless_cifar10
from ong_misguide.models import create_cifar_model
from ong_misguide.ong import ONG
from ong_misguide.prune_init import SNIP, GraSP, SynFlow
from ong_misguide.train import sgd_opt_func

BS, SPARSITY, WARMUP = 128, 0.9, 2
METHODS = {'ong': ONG, 'snip': SNIP, 'grasp': GraSP, 'synflow': SynFlow}
torch.set_num_threads(2)


def cpu_name() -> str:
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class NoValidation(Callback):
    def before_validate(self): raise CancelValidException()


class StepStart(Callback):
    order = -100
    def before_batch(self):
        if self.training: self.learn.step_t0 = (time.perf_counter(), time.process_time())


class StepEnd(Callback):
    "Wall and CPU (process, both threads) seconds of every training step."
    order = 1000
    def __init__(self): self.times, self.cpu = [], []
    def after_batch(self):
        if not self.training: return
        wall, cpu = self.learn.step_t0
        self.times.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)


class PruneClock(Callback):
    "CPU time of the process across the pruners' `before_fit` (order 12): started at order 11, read at order 13."
    def __init__(self, start: bool, shared: dict): self.order, self.start, self.shared = (11 if start else 13), start, shared
    def before_fit(self):
        if self.start: self.shared['t0'] = time.process_time()
        elif 'cpu' not in self.shared: self.shared['cpu'] = time.process_time() - self.shared['t0']


def make(dls, method: str):
    torch.manual_seed(0)
    cb, clock = (None if method == 'dense' else METHODS[method](SPARSITY)), {}
    end = StepEnd()
    cbs = [cb, PruneClock(True, clock), PruneClock(False, clock), StepStart(), end, NoValidation()]
    learn = Learner(dls, create_cifar_model('resnet20'), loss_func=nn.CrossEntropyLoss(), opt_func=sgd_opt_func(),
                    lr=0.05, wd=1e-4, cbs=[c for c in cbs if c is not None])
    return learn, end, cb, clock


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--steps', type=int, default=6, help='timed steps per method and round (after 2 warm-up steps)')
    ap.add_argument('--rounds', type=int, default=5)
    args = ap.parse_args()
    n = WARMUP + args.steps
    arrays = load_lossless_cifar10()
    dls = cifar_dls(arrays=arrays, subset=int(n * BS / 0.9) + 10, test_subset=16, bs=BS, seed=0)
    assert len(dls.train) == n, (len(dls.train), n)
    methods = ['dense', 'ong', 'snip', 'grasp', 'synflow']
    print(f'machine: {cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; '
          f'torch {torch.__version__}')
    print(f'load average at start (other processes): {os.getloadavg()[0]:.2f}')
    print(f'model: CIFAR ResNet20 (268,336 prunable weights), batch {BS}, fp32, sparsity {SPARSITY}; '
          f'{args.steps} timed steps after {WARMUP} warm-up steps, {args.rounds} rounds, methods in turn')
    learners = {m: make(dls, m) for m in methods}
    means, cpus = {m: [] for m in methods}, {m: [] for m in methods}
    for r in range(args.rounds):
        for m in methods:
            learn, end, _, _ = learners[m]
            end.times, end.cpu = [], []
            with learn.no_bar(), learn.no_logging(): learn.fit(1)
            means[m].append(statistics.median(end.times[WARMUP:]))
            cpus[m].append(statistics.median(end.cpu[WARMUP:]))
        print(f'round {r + 1}: ' + ', '.join(f'{m} {means[m][-1]:.3f} s ({cpus[m][-1]:.3f} s CPU)' for m in methods))
    print()
    for m in methods[1:]:
        cb, clock = learners[m][2], learners[m][3]
        print(f'{m:8s} masks: {cb.mask_seconds:7.2f} s wall, {clock["cpu"]:7.2f} s CPU (2 threads); '
              f'kept {cb.report()["kept_weights"]} weights; {getattr(cb.scorer, "info", {})}')
    print()
    for m in methods[1:]:
        ratios = [a / d for a, d in zip(means[m], means['dense'])]
        cpu_ratios = [a / d for a, d in zip(cpus[m], cpus['dense'])]
        print(f'{m:8s} per step {statistics.mean(means[m]):.3f} s, dense {statistics.mean(means["dense"]):.3f} s, '
              f'ratio per round {", ".join(f"{x:.3f}" for x in ratios)}, median {statistics.median(ratios):.3f}; '
              f'CPU time ratio per round {", ".join(f"{x:.3f}" for x in cpu_ratios)}, '
              f'median {statistics.median(cpu_ratios):.3f}')
    print()
    for m in methods[1:]:
        ratio = statistics.median([a / d for a, d in zip(means[m], means['dense'])])
        cpu_ratio = statistics.median([a / d for a, d in zip(cpus[m], cpus['dense'])])
        ong = statistics.median([a / o for a, o in zip(means[m], means['ong'])])
        ong_cpu = statistics.median([a / o for a, o in zip(cpus[m], cpus['ong'])])
        print(f'RESULT {m}: masks in {learners[m][2].mask_seconds:.2f} s; per step {ratio:.3f}x dense '
              f'({cpu_ratio:.3f}x in CPU time)'
              + ('' if m == 'ong' else f', {ong:.3f}x ONG ({ong_cpu:.3f}x in CPU time)'))
    print(f'load average at end (other processes): {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
