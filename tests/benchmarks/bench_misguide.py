"""Defended against undefended query throughput of MisGUIDE on one victim and batch, measured in one run.

Usage: python tests/benchmarks/bench_misguide.py [--arch resnet34] [--bs 256] [--reps 5] [--threads 2]
                                                [--detector_precision bf16] [--device cpu]

The undefended API normalises the batch, runs the victim and returns its softmax. The defended API
(`MisGUIDE.query`) also validates the batch, runs the ViT-Tiny detector and misleads flagged images. The
threshold is set to the median score of the batch, so half the images take the misleading path. Both run with
random weights: throughput does not depend on what the weights learnt. The two are timed alternately and the
median of `--reps` timings of each is reported; the ratio is defended throughput / undefended throughput.
"""
import argparse
import time
import warnings

warnings.filterwarnings('ignore')

import torch

from ong_misguide.detector import DetectorConfig, OODDetector
from ong_misguide.misguide import MisGUIDE
from ong_misguide.models import create_cifar_model


def seconds(fn) -> float:
    "Return the wall-clock time of one call of `fn`."
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(values: list) -> float:
    return sorted(values)[len(values) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='resnet34')
    parser.add_argument('--bs', type=int, default=256)
    parser.add_argument('--reps', type=int, default=5)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--detector_precision', default='bf16', choices=('bf16', 'fp32'))
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    victim = create_cifar_model(args.arch).to(device).eval()
    detector = OODDetector(DetectorConfig(precision=args.detector_precision))
    x = torch.rand(args.bs, 3, 32, 32)
    api = MisGUIDE(victim, detector, threshold=0.5, p_mislead=1.0)
    api.threshold = detector.to(device).score(x).median().item()

    def undefended():
        probs = api._victim_probs(x)
        if device.type == 'cuda': torch.cuda.synchronize()
        return probs

    def defended():
        probs = api.query(x)
        if device.type == 'cuda': torch.cuda.synchronize()
        return probs

    def detector_only():
        return api.detector.score(x)

    for fn in (undefended, defended, detector_only): fn()      # warm-up
    t_und, t_def, t_det = [], [], []
    for _ in range(args.reps):                                   # alternate, so load changes hit both alike
        t_und.append(seconds(undefended))
        t_def.append(seconds(defended))
        t_det.append(seconds(detector_only))
    und, dfd, det = median(t_und), median(t_def), median(t_det)
    print(f'victim {args.arch}, batch {args.bs}, device {args.device}, {args.threads} threads, '
          f'detector ViT-Tiny ({sum(p.numel() for p in detector.parameters()) / 1e6:.2f}M params, '
          f'{args.detector_precision}), {args.reps} alternating reps, median')
    print(f'undefended: {und:.3f} s/batch = {args.bs / und:.0f} images/s')
    print(f'defended:   {dfd:.3f} s/batch = {args.bs / dfd:.0f} images/s '
          f'(detector alone {det:.3f} s, misled {api.stats["total"]["misled"]} of {api.stats["total"]["served"]})')
    print(f'throughput ratio defended/undefended: {und / dfd:.2f}x (target >= 0.75x)')


if __name__ == '__main__':
    main()
