"""Throughput of masked training against dense training: ResNet20, batch 128 of real CIFAR-10 images, fastai's
training loop with SGD (Nesterov momentum, weight decay), the same model and data for both.

The dense learner and the pruned learner (the engine's masking: gradients masked in after_backward, weights in
after_step) train in alternating blocks of steps, so that slow phases of a shared machine hit both. The ratio
compares the median block times. The script prints `masked/dense throughput` (target >= 0.97), by wall time
and by the process's CPU time, and the time of the masking hooks themselves as a share of a step.

    python tests/benchmarks/bench_masking.py [--blocks 8] [--steps 5] [--threads 2]
"""
import argparse
import os
import statistics
import time
import warnings

warnings.filterwarnings('ignore')

import torch
import torch.nn as nn
from fastai.callback.core import Callback, CancelFitException
from fastai.learner import Learner

from ong_misguide.data import cifar_dls, load_lossless_cifar10
from ong_misguide.masking import MagnitudeScore, Pruner, sparsity_report
from ong_misguide.models import create_cifar_model
from ong_misguide.train import sgd_opt_func


class StepTimer(Callback):
    "Time `steps` training batches (after `warmup` untimed ones), then stop the fit."
    order = 100

    def __init__(self, steps: int, warmup: int = 1):
        self.steps, self.warmup, self.times, self.cpu_times = steps, warmup, [], []

    def before_fit(self): self.n = 0

    def before_batch(self): self.t0, self.c0 = time.perf_counter(), time.process_time()

    def after_batch(self):
        if not self.training: return
        self.n += 1
        if self.n > self.warmup:
            self.times.append(time.perf_counter() - self.t0)
            self.cpu_times.append(time.process_time() - self.c0)
        if self.n >= self.warmup + self.steps: raise CancelFitException()


class TimedPruner(Pruner):
    "A `Pruner` that adds up the time its masking hooks take (gradient masking and weight re-zeroing)."
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hook_seconds, self.hook_steps = 0.0, 0

    def after_backward(self):
        t0 = time.perf_counter()
        super().after_backward()
        self.hook_seconds += time.perf_counter() - t0

    def after_step(self):
        t0 = time.perf_counter()
        super().after_step()
        self.hook_seconds += time.perf_counter() - t0
        self.hook_steps += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--blocks', type=int, default=8, help='blocks per learner, alternating')
    ap.add_argument('--steps', type=int, default=5, help='timed steps per block')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--sparsity', type=float, default=0.9)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    arrays = load_lossless_cifar10(os.environ.get('ONG_MISGUIDE_DATA'))
    dls = cifar_dls(arrays=arrays, bs=128, seed=0)   # 4,000 real CIFAR-10 training images: 28 batches per epoch
    torch.manual_seed(0)
    model = create_cifar_model('resnet20')
    learners = {}
    pruner = TimedPruner(MagnitudeScore(), sparsity=args.sparsity)
    for name, cbs in (('dense', []), ('masked', [pruner])):
        m = create_cifar_model('resnet20')
        m.load_state_dict(model.state_dict())
        learners[name] = Learner(dls, m, loss_func=nn.CrossEntropyLoss(), opt_func=sgd_opt_func(), lr=0.05, wd=1e-4,
                                 cbs=cbs)

    timers = {name: [] for name in learners}
    cpu_timers = {name: [] for name in learners}
    for block in range(args.blocks):
        order = ('dense', 'masked') if block % 2 == 0 else ('masked', 'dense')
        for name in order:
            t = StepTimer(args.steps)
            with learners[name].no_bar(), learners[name].no_logging(): learners[name].fit(1, cbs=[t])
            timers[name].append(sum(t.times))
            cpu_timers[name].append(sum(t.cpu_times))

    rep = sparsity_report(learners['masked'].model)
    assert abs(rep['sparsity'] - args.sparsity) < 1e-4, rep['sparsity']
    med = {k: statistics.median(v) for k, v in timers.items()}
    print(f'torch {torch.__version__}, {args.threads} threads, ResNet20, batch 128, {args.blocks} blocks x '
          f'{args.steps} steps per learner, sparsity {rep["sparsity"]:.4f}')
    for k, v in timers.items():
        print(f'{k:7s} s/step: median {med[k] / args.steps:.4f}, blocks ' + ' '.join(f'{x / args.steps:.3f}' for x in v))
    cpu = {k: statistics.median(v) for k, v in cpu_timers.items()}
    print(f'masked/dense throughput: {med["dense"] / med["masked"]:.3f} (target >= 0.97)')
    # On a shared machine the process's CPU time per step is less sensitive to other load than wall time.
    print(f'masked/dense throughput by CPU time: {cpu["dense"] / cpu["masked"]:.3f}')
    # The masking work itself, timed inside the masked steps: the least noisy estimate of its overhead.
    hook = pruner.hook_seconds / pruner.hook_steps
    step = med['masked'] / args.steps
    print(f'masking hooks: {1000 * hook:.2f} ms per step = {100 * hook / step:.2f}% of a step; '
          f'throughput ratio without other noise: {1 / (1 + hook / (step - hook)):.3f}')


if __name__ == '__main__':
    main()
