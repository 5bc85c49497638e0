"""DFME iterations per second: ong_misguide.attacks.DFME against the official DFME code, side by side.

Usage: python tests/benchmarks/bench_dfme.py PATH_TO_OFFICIAL_DFME [--iters N] [--rounds R] [--student ARCH]
       [--victim ARCH] [--batch B] [--threads T]

PATH_TO_OFFICIAL_DFME is the `dfme` folder of a checkout of github.com/cake-lab/datafree-model-extraction (kept
outside this repository; its code is only imported here, never copied). Both implementations run the same DFME
iteration (batch B, grad_m 1, epsilon 1e-3, g_iter 1, d_iter 5, L1 loss on mean-corrected log-probabilities,
SGD/Adam as in the official defaults) against the same victim network and start from identical student weights.
The official loop is its own `train()` function with `epoch_itrs` set to the number of timed iterations. Its
white-box gradient-norm diagnostic (`rec_grad_norm`) is switched off, because it is not part of the attack.
The two are timed in alternating rounds so that load from other processes affects both alike; the script prints
the median seconds per iteration of each and the ratio. Ours runs at the same float32 precision as the official
code, and additionally with its quick-mode bfloat16 autocast for the student's training steps.
"""
import argparse
import contextlib
import copy
import io
import os
import statistics
import sys
import tempfile
import time
import types
import warnings
from argparse import Namespace
from pathlib import Path

import torch

warnings.filterwarnings('ignore')


def load_official(path: Path):
    "Import the official dfme/train.py as a module (ipdb, only imported there for debugging, is stubbed)."
    sys.modules.setdefault('ipdb', types.ModuleType('ipdb'))
    sys.path.insert(0, str(path))
    cwd = os.getcwd()
    os.chdir(path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import train as official
            import network
    finally:
        os.chdir(cwd)
    official.file = open(os.devnull, 'w')  # the official logger writes to this global
    return official, network


def official_runner(official, network, teacher, student, batch, log_dir):
    args = Namespace(batch_size=batch, nz=256, g_iter=1, d_iter=5, grad_m=1, grad_epsilon=1e-3, loss='l1',
                     no_logits=1, logit_correction='mean', forward_differences=1, approx_grad=1, rec_grad_norm=0,
                     log_interval=10 ** 9, num_classes=10, G_activation=torch.tanh, log_dir=log_dir,
                     query_budget=10 ** 12, cost_per_iteration=batch * 7, epoch_itrs=1)
    generator = network.gan.GeneratorA(nz=256, nc=3, img_size=32, activation=torch.tanh)
    opt_S = torch.optim.SGD(student.parameters(), lr=0.1, weight_decay=5e-4, momentum=0.9)
    opt_G = torch.optim.Adam(generator.parameters(), lr=1e-4)

    def run(n):
        args.epoch_itrs = n
        with contextlib.redirect_stdout(io.StringIO()):  # the official loop prints its losses
            official.train(args, teacher=teacher, student=student, generator=generator, device='cpu',
                           optimizer=[opt_S, opt_G], epoch=1)
    return run


def ours_runner(teacher, student_arch, batch, precision):
    from ong_misguide.attacks import DFME
    from ong_misguide.oracle import Oracle
    attack = DFME(Oracle(teacher), student=student_arch, batch_size=batch, precision=precision)
    attack.setup(10 ** 6)

    def run(n):
        for _ in range(n): attack.step()
    return run, attack


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('official', nargs='?', default=None, help='the dfme folder of the official repository')
    ap.add_argument('--iters', type=int, default=2, help='iterations per timed round')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--student', default='resnet20')
    ap.add_argument('--victim', default='resnet20')
    ap.add_argument('--batch', type=int, default=256)
    ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args()
    path = Path(a.official).expanduser() if a.official else None
    if path is None or not (path/'train.py').is_file() or not (path/'approximate_gradients.py').is_file():
        print(f'SKIP: the official DFME code was not found at {a.official!r}. Pass the dfme folder of a checkout of '
              f'github.com/cake-lab/datafree-model-extraction (outside this repository).')
        return 0
    torch.set_num_threads(a.threads)
    from ong_misguide.models import create_cifar_model
    official, network = load_official(path)
    torch.manual_seed(0)
    teacher = create_cifar_model(a.victim).eval()
    student0 = create_cifar_model(a.student)
    runners = {}
    with tempfile.TemporaryDirectory() as log_dir:
        runners['official fp32'] = official_runner(official, network, teacher, copy.deepcopy(student0), a.batch, log_dir)
        for prec in ('fp32', 'bf16'):
            run, attack = ours_runner(teacher, a.student, a.batch, prec)
            attack.student.load_state_dict(student0.state_dict())
            runners[f'ours {prec}'] = run
        for run in runners.values(): run(1)  # warm-up
        times = {k: [] for k in runners}
        for _ in range(a.rounds):
            for name, run in runners.items():
                t0 = time.perf_counter()
                run(a.iters)
                times[name].append((time.perf_counter() - t0) / a.iters)
    print(f'DFME iteration: batch {a.batch}, grad_m 1, d_iter 5 ({a.batch * 7} queries), student {a.student}, '
          f'victim {a.victim}, {a.threads} threads, {a.rounds} rounds x {a.iters} iterations, CPU')
    base = statistics.median(times['official fp32'])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f'{name:14s} {med:7.2f} s/iter  {1 / med:6.3f} it/s  speed-up vs official {base / med:5.2f}x  '
              f'(rounds: {", ".join(f"{t:.2f}" for t in ts)})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
