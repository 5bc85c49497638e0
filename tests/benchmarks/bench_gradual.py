"""Benchmark of ong_misguide.gradual: time per training step of GMP, DPF, DNW and GSM against dense training.

Run from the repository root: `python tests/benchmarks/bench_gradual.py` (`--steps N --rounds R` change the
length, `--threads T` the torch threads, default 2). One run measures a CIFAR ResNet20 at batch size 128 on real
CIFAR-10 images (the lossless subset), fp32, SGD with Nesterov momentum:

* each method and dense training take turns in short rounds of `--steps` steps (one untimed warm-up round
  first), and the order rotates from round to round, so that changes in machine load hit all of them alike;
* a step is timed from the first `before_batch` callback to the last `after_batch` callback: forward, backward,
  optimizer step and the method's own work, not data loading;
* every method is planned for a 200-epoch CIFAR-10 run (78,200 steps) and starts about a third of the way
  through it. So GMP and DPF train with masks in place, at the sparsity of their ramp there (about 0.63);
* the cost of a step is the median step time (robust to load spikes). DNW and GSM compute masks at every step,
  so their median contains that work. DPF updates its masks every 16 steps and GMP prunes every 7,820 steps, so
  the median misses those steps; their measured mask time, amortised over the period, is added;
* printed: each method's cost per step, the ratio to dense of the whole run and the median of per-round ratios.
"""
from __future__ import annotations

import argparse
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
from ong_misguide.gradual import DNW, DPF, GMP, GSM
from ong_misguide.models import create_cifar_model
from ong_misguide.train import sgd_opt_func

BS, SPARSITY = 128, 0.9
TOTAL = 200 * 391                  # steps of a 200-epoch CIFAR-10 run at batch size 128
# About a third of the way through the run: GMP's third pruning step (its interval is 7,820 steps), and a
# multiple of DPF's 16-step mask period.
START = {'gmp': 3 * 7820, 'dpf': 1466 * 16, 'dnw': 1466 * 16, 'gsm': 1466 * 16}


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
        if self.training: self.learn.step_t0 = time.perf_counter()


class StepEnd(Callback):
    order = 1000
    def __init__(self): self.times = []
    def after_batch(self):
        if self.training: self.times.append(time.perf_counter() - self.learn.step_t0)


def load_average() -> str:
    try: return ' '.join(open('/proc/loadavg').read().split()[:3])
    except OSError: return 'unknown'


def make(dls, method: str):
    torch.manual_seed(0)
    cb = None
    if method != 'dense':
        cb = {'gmp': GMP, 'dpf': DPF, 'dnw': DNW, 'gsm': GSM}[method](SPARSITY, total_steps=TOTAL)
        cb.steps_done = START[method]
    end = StepEnd()
    learn = Learner(dls, create_cifar_model('resnet20'), loss_func=nn.CrossEntropyLoss(), opt_func=sgd_opt_func(),
                    lr=0.05, wd=1e-4, cbs=[c for c in (cb, StepStart(), end, NoValidation()) if c is not None])
    return learn, end, cb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--steps', type=int, default=4, help='timed steps per method and round')
    ap.add_argument('--rounds', type=int, default=8, help='timed rounds (after one warm-up round)')
    ap.add_argument('--threads', type=int, default=2, help='torch threads (the development machine has 2 cores)')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    arrays = load_lossless_cifar10()
    dls = cifar_dls(arrays=arrays, subset=int(args.steps * BS / 0.9) + 10, test_subset=16, bs=BS, seed=0)
    assert len(dls.train) == args.steps, (len(dls.train), args.steps)
    methods = ['dense', 'gmp', 'dpf', 'dnw', 'gsm']
    print(f'machine: {cpu_name()}, {torch.get_num_threads()} torch threads, load average {load_average()} at start; '
          f'torch {torch.__version__}')
    print(f'model: CIFAR ResNet20 (268,336 prunable weights), batch {BS}, fp32, sparsity {SPARSITY}; '
          f'{args.rounds} rounds of {args.steps} steps per method after a warm-up round, methods in turn')

    learners = {m: make(dls, m) for m in methods}
    times = {m: [] for m in methods}                  # per round: the step times
    for r in range(args.rounds + 1):
        for m in methods[r % len(methods):] + methods[:r % len(methods)]:   # rotate who goes first
            learn, end, _ = learners[m]
            end.times = []
            with learn.no_bar(), learn.no_logging(): learn.fit(1)
            if r > 0: times[m].append(list(end.times))
        if r == 0:      # the warm-up round's work (GMP's pruning) is not part of the per-step mask time
            warm = {m: learners[m][2].mask_seconds for m in methods[1:]}
            gmp_prune = warm['gmp']
        else:
            print(f'round {r}: ' + ', '.join(f'{m} {statistics.median(times[m][-1]):.3f} s' for m in methods))

    n_timed = args.rounds * args.steps
    cost, extra = {}, {}
    for m in methods:
        median = statistics.median([t for rnd in times[m] for t in rnd])
        cb = learners[m][2]
        per_step_mask = 0.0 if cb is None else (cb.mask_seconds - warm[m]) / n_timed
        if m == 'gmp': extra[m] = gmp_prune / 7820
        elif m == 'dpf': extra[m] = per_step_mask
        else: extra[m] = 0.0
        cost[m] = median + extra[m]
        if cb is not None:
            print(f'{m:5s} median step {median:.3f} s; mask work {per_step_mask * 1e3:.1f} ms per step '
                  f'({cb.mask_updates} updates in all)' +
                  (f'; pruning {gmp_prune:.3f} s once per 7,820 steps' if m == 'gmp' else ''))
    print(f'dense median step {cost["dense"]:.3f} s; load average at the end: {load_average()}')
    print()
    for m in methods[1:]:
        per_round = [statistics.median(a) / statistics.median(d) for a, d in zip(times[m], times['dense'])]
        print(f'RESULT {m}: {cost[m] / cost["dense"]:.3f}x the time per step of dense training '
              f'(median of per-round ratios {statistics.median(per_round):.3f}; amortised periodic mask work '
              f'{extra[m] * 1e3:.2f} ms per step included)')


if __name__ == '__main__':
    main()
