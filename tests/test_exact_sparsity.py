"""Exact sparsity during training. A ResNet20 pruned by ONG at 90% keeps exactly the target number of non-zero
prunable weights after every training step on real CIFAR-10 images. Sparsity stays exact across optimizers,
precisions, gradient accumulation, save/load, export/load_learner and two-process DDP on the CPU.

The matrix: every optimizer x {fp32, bf16 autocast} x {no accumulation, accumulation over 2 batches} with a plain
fit; every optimizer with fit after learn.save + learn.load and after learn.export + load_learner (fp32); both
persistence paths with bf16 + accumulation and fastai's Adam; fp16 with gradient scaling only on CUDA."""
import os
import tempfile
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.callback.training import GradientAccumulation
from fastai.learner import Learner, load_learner
from fastai.optimizer import Adam as FastaiAdam
from fastai.optimizer import OptimWrapper

from ong_misguide.data import cifar_dls, load_lossless_cifar10
from ong_misguide.masking import _opt_states, get_masks, unwrap_model
from ong_misguide.models import create_cifar_model
from ong_misguide.ong import ONG
from ong_misguide.train import DeviceAutocast

SPARSITY = 0.9
PRUNABLE = 268336                         # conv and linear weights of ResNet20
TARGET = round((1 - SPARSITY) * PRUNABLE)
BS = 8
NMF_ITERS = 10    # the exactness under test does not depend on how well the NMF converged

OPTIMIZERS = {
    'sgd-momentum-wd': (partial(OptimWrapper, opt=torch.optim.SGD, momentum=0.9), 0.1),
    'sgd-nesterov-wd': (partial(OptimWrapper, opt=torch.optim.SGD, momentum=0.9, nesterov=True), 0.1),
    'adam-coupled-wd': (partial(OptimWrapper, opt=torch.optim.Adam), 1e-2),
    'adamw': (partial(OptimWrapper, opt=torch.optim.AdamW), 1e-2),
    'fastai-adam': (FastaiAdam, 1e-2),
}
WD = 0.05   # large, so any weight decay that reached a pruned weight would show


class ExactCheck(Callback):
    "After every training batch: exactly TARGET non-zero masked weights, unchanged masks, zero pruned optimizer state."
    order = 99

    def __init__(self, reference=None):
        self.reference, self.checks = reference, 0

    def after_batch(self):
        if not self.training: return
        root = unwrap_model(self.learn.model)
        masks = get_masks(root)
        if self.reference is None: self.reference = {k: v.clone() for k, v in masks.items()}
        assert masks.keys() == self.reference.keys()
        for k, v in masks.items(): assert torch.equal(v, self.reference[k]), f'mask of {k} changed'
        nonzero = sum(int(torch.count_nonzero(root.get_submodule(k).weight)) for k in masks)
        assert nonzero == TARGET, f'{nonzero} non-zero weights after step {self.checks}, expected {TARGET}'
        states = _opt_states(self.learn.opt)
        for k, mask in masks.items():
            p = root.get_submodule(k).weight
            for name, v in (states.get(p) or {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape:
                    assert not v[~mask].any(), f'optimizer state {name} of {k} is non-zero at pruned weights'
        self.checks += 1


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Train on one thread: these models are small, and on a busy machine a second OpenMP thread mostly spin-waits."
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='module')
def dls(data_root):
    torch.manual_seed(0)
    arrays = load_lossless_cifar10(data_root)  # real, lossless CIFAR-10 images
    return cifar_dls(arrays=arrays, subset=60, test_subset=8, bs=BS, seed=0)


def make_learner(dls, opt, precision='fp32', accumulate=False, device=None):
    opt_func, lr = OPTIMIZERS[opt]
    torch.manual_seed(0)
    cbs = [ONG(sparsity=SPARSITY, rank=2, max_iter=NMF_ITERS)]
    if precision != 'fp32': cbs.append(DeviceAutocast(amp_mode=precision))
    if accumulate: cbs.append(GradientAccumulation(n_acc=2 * BS))
    model = create_cifar_model('resnet20')
    if device is not None: dls, model = dls.to(device), model.to(device)
    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), opt_func=opt_func, lr=lr, wd=WD, cbs=cbs)
    learn.path = Path(tempfile.mkdtemp())
    return learn


def fit(learn, check):
    with learn.no_bar(), learn.no_logging(): learn.fit(1, cbs=[check])


@pytest.mark.parametrize('accumulate', [False, True], ids=['no-accum', 'accum'])
@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
@pytest.mark.parametrize('opt', list(OPTIMIZERS))
def test_exact_after_every_step(dls, opt, precision, accumulate):
    learn = make_learner(dls, opt, precision, accumulate)
    check = ExactCheck()
    fit(learn, check)
    n_batches = len(dls.train)
    assert check.checks == n_batches
    if accumulate:  # the optimizer stepped every second batch only
        assert learn.ong.steps_done == n_batches // 2
    else: assert learn.ong.steps_done == n_batches


def _persist(learn, dls, persistence):
    if persistence == 'save-load':
        learn.save('pruned')
        fit(learn, ExactCheck())          # weights and optimizer state move on...
        learn.load('pruned')              # ...and come back from the file
        return learn
    learn.export('pruned.pkl')
    learn2 = load_learner(learn.path/'pruned.pkl')
    learn2.dls = dls
    return learn2


@pytest.mark.parametrize('persistence', ['save-load', 'export-load'])
@pytest.mark.parametrize('opt, precision, accumulate',
                         [(o, 'fp32', False) for o in OPTIMIZERS] + [('fastai-adam', 'bf16', True)])
def test_exact_after_persistence(dls, opt, precision, accumulate, persistence):
    learn = make_learner(dls, opt, precision, accumulate)
    first = ExactCheck()
    fit(learn, first)
    learn2 = _persist(learn, dls, persistence)
    again = ExactCheck(reference=first.reference)   # the same masks as in the first fit
    fit(learn2, again)
    assert again.checks == len(dls.train)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='fp16 with gradient scaling needs CUDA')
@pytest.mark.parametrize('opt', list(OPTIMIZERS))
def test_exact_fp16_cuda(dls, opt):
    learn = make_learner(dls, opt, 'fp16', device='cuda')
    check = ExactCheck()
    fit(learn, check)
    assert check.checks == len(dls.train)


# --- two processes, DistributedDataParallel over gloo on the CPU -------------------------------------------------

class DDPWrap(Callback):
    "Wrap the model in DistributedDataParallel for the fit, like fastai's DistributedTrainer (same order)."
    order = 11

    def before_fit(self):
        self.learn.model = nn.parallel.DistributedDataParallel(self.learn.model)

    def after_fit(self):
        self.learn.model = self.learn.model.module


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str):
    import torch.distributed as dist
    from ong_misguide.masking import _broadcast_masks
    os.environ['GLOO_SOCKET_IFNAME'] = 'lo'
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        arrays = load_lossless_cifar10()
        dls = cifar_dls(arrays=arrays, subset=60, test_subset=8, bs=BS, seed=rank)  # different data per rank
        torch.manual_seed(100 + rank)                                              # different initial weights
        learn = Learner(dls, create_cifar_model('resnet20'), loss_func=nn.CrossEntropyLoss(),
                        opt_func=OPTIMIZERS['sgd-nesterov-wd'][0], lr=0.1, wd=WD,
                        cbs=[ONG(sparsity=SPARSITY, rank=2, max_iter=NMF_ITERS), DDPWrap()])
        check = ExactCheck()
        with learn.no_bar(), learn.no_logging(): learn.fit(1, cbs=[check])
        g = torch.Generator().manual_seed(rank)
        local = {'x': torch.rand(6, 7, generator=g) > 0.5}      # differs by rank until broadcast
        torch.save({'masks': get_masks(learn.model), 'checks': check.checks,
                    'state': {k: v for k, v in learn.model.state_dict().items()},
                    'broadcast': _broadcast_masks(local), 'local': local}, f'{out_dir}/rank{rank}.pth')
    finally:
        dist.destroy_process_group()


@pytest.mark.slow   # two fresh interpreters import torch and fastai: about a minute or more on 2 cores
def test_ddp_two_processes_cpu(tmp_path, data_root):
    import torch.multiprocessing as mp
    init_file = tmp_path/'rendezvous'
    mp.spawn(_ddp_worker, args=(2, str(init_file), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path/f'rank{r}.pth', weights_only=True) for r in (0, 1))
    assert r0['checks'] > 0
    assert r1['checks'] > 0
    assert r0['masks'].keys() == r1['masks'].keys()
    assert len(r0['masks']) == 20
    for k in r0['masks']: assert torch.equal(r0['masks'][k], r1['masks'][k]), k
    for k in r0['state']:  # DDP keeps the ranks' parameters identical (BatchNorm statistics are per rank)
        if 'running' not in k and 'num_batches' not in k: assert torch.equal(r0['state'][k], r1['state'][k]), k
    assert not torch.equal(r0['local']['x'], r1['local']['x'])
    assert torch.equal(r1['broadcast']['x'], r0['local']['x'])
