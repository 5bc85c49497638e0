"""Tests of ong_misguide.gradual (GMP, DPF, DNW, GSM): each method's mechanism, exact sparsity at the end of a
few training steps on real CIFAR-10 images, resume state round trips and bad input.

Mechanism tests train a small convolutional network on real CIFAR-10 images (the lossless subset), so they run in
seconds. The exact-sparsity and `train_run` resume tests use ResNet20."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.optimizer import OptimWrapper
from functools import partial

from ong_misguide.core import InputError
from ong_misguide.data import cifar_dls, load_lossless_cifar10
from ong_misguide.gradual import (DNW, DPF, GMP, GSM, ForwardMask, StraightThroughMask, dnw_method, dpf_method,
                                  gmp_method, gsm_method, planned_steps, topk_masks)
from ong_misguide.masking import ALLOCATIONS, MASK_BUFFER, allocate, get_masks, sparsity_report
from ong_misguide.models import create_cifar_model
from ong_misguide.train import TrainConfig, register_method, sgd_opt_func, train_run

PRUNABLE = 268336                      # conv and linear weights of ResNet20
METHODS = {'gmp': GMP, 'dpf': DPF, 'dnw': DNW, 'gsm': GSM}
LR, WD = 0.05, 5e-4


@pytest.fixture(scope='module')
def arrays(data_root):
    return load_lossless_cifar10(data_root)


@pytest.fixture(scope='module')
def dls(arrays):
    return cifar_dls(arrays=arrays, subset=48, test_subset=16, bs=16, valid_pct=0.2, seed=0)  # 2 steps per epoch


def tiny_net():
    "A small CNN (two convolutions and a linear head) for the mechanism tests."
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def plain_sgd():
    return partial(OptimWrapper, opt=torch.optim.SGD)   # no momentum: one step is w - lr * (g + wd * w)


def learner(dls, cbs, model=None, opt_func=None, lr=LR):
    return Learner(dls, model if model is not None else tiny_net(), loss_func=nn.CrossEntropyLoss(),
                   opt_func=opt_func or plain_sgd(), lr=lr, wd=WD, cbs=cbs)


def fit(learn, n=1, cbs=None):
    with learn.no_bar(), learn.no_logging(): learn.fit(n, cbs=cbs)


class Capture(Callback):
    "Copies of weights, gradients, forward masks and the batch, for the method callback named `name`."
    order = 99

    def __init__(self, cb_name): self.cb_name, self.steps = cb_name, []

    def after_backward(self):
        cb = getattr(self.learn, self.cb_name)
        layers = cb.layers()
        masks = cb.current_masks() if hasattr(cb, 'forward_mask') else None
        self.steps.append({'w': {k: m.weight.detach().clone() for k, m in layers.items()},
                           'g': {k: m.weight.grad.detach().clone() for k, m in layers.items()},
                           'm': None if masks is None else {k: v.clone() for k, v in masks.items()},
                           'x': self.learn.xb[0].detach().clone(), 'y': self.learn.yb[0].detach().clone(),
                           'state': {k: v.clone() for k, v in self.learn.model.state_dict().items()},
                           'engine_masks': bool(get_masks(self.learn.model))})

    def after_step(self):
        layers = getattr(self.learn, self.cb_name).layers()
        self.steps[-1]['w_after'] = {k: m.weight.detach().clone() for k, m in layers.items()}
        self.steps[-1]['active'] = getattr(getattr(self.learn, self.cb_name), '_active', None)


# --- fast masks -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('allocation', ALLOCATIONS)
def test_topk_masks_match_allocate(allocation):
    g = torch.Generator().manual_seed(1)
    scores = {'a': torch.rand(6, 3, 3, 3, generator=g), 'b': torch.rand(12, 6, 3, 3, generator=g),
              'c': torch.rand(10, 12, generator=g)}
    scores['b'][3] *= 1e-4                          # a channel the floor has to rescue
    for s in (0.5, 0.9, 0.97):
        fast, ref = topk_masks(scores, s, allocation), allocate(scores, s, allocation).masks
        for k in scores: assert torch.equal(fast[k], ref[k]), (allocation, s, k)
    assert all(int(m.reshape(m.shape[0], -1).sum(1).min()) >= 1 for m in topk_masks(scores, 0.97, allocation).values())


def test_topk_masks_bad_input():
    s = {'a': torch.rand(4, 5)}
    with pytest.raises(InputError, match='sparsity=1.2 is invalid'): topk_masks(s, 1.2)
    with pytest.raises(InputError, match='global, uniform, erk'): topk_masks(s, 0.5, 'lamp')
    with pytest.raises(InputError, match='floor=3 alone reserves'): topk_masks(s, 0.9, floor=3)
    with pytest.raises(InputError, match='floor=-1 is invalid'): topk_masks(s, 0.5, floor=-1)


# --- the masked forward pass with straight-through gradients ----------------------------------------------------

def test_forward_mask_straight_through_and_plain_state():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, bias=False)
    mask = torch.rand(conv.weight.shape) > 0.6
    x = torch.randn(4, 2, 6, 6)
    fm = ForwardMask()
    fm.set({'conv': conv}, {'conv': mask})
    out = conv(x)
    ref_w = (conv.weight.detach() * mask).requires_grad_()
    ref = nn.functional.conv2d(x, ref_w)
    assert torch.equal(out, ref)
    (out ** 2).sum().backward(); (ref ** 2).sum().backward()
    assert torch.allclose(conv.weight.grad, ref_w.grad)                   # the gradient at the masked weights...
    assert conv.weight.grad[~mask].abs().sum() > 0                         # ...reaches the pruned entries too
    assert list(conv.state_dict()) == ['weight']
    assert 'weight' not in conv.__dict__
    with pytest.raises(RuntimeError): conv(torch.randn(1, 5, 6, 6))       # a failing forward...
    assert 'weight' not in conv.__dict__                                   # ...leaves no masked weight behind
    fm.remove()
    assert torch.equal(conv(x), nn.functional.conv2d(x, conv.weight))
    w = torch.randn(3, requires_grad=True)
    StraightThroughMask.apply(w, torch.tensor([1., 0., 1.])).sum().backward()
    assert torch.equal(w.grad, torch.ones(3))


def test_forward_mask_rejects_wrong_shapes():
    lin = nn.Linear(3, 2)
    with pytest.raises(InputError, match="layer 'lin' has shape \\(3, 3\\)"):
        ForwardMask().set({'lin': lin}, {'lin': torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(InputError, match='has shape None'): ForwardMask().set({'lin': lin}, {})


# --- GMP ------------------------------------------------------------------------------------------------------

def test_gmp_schedule_values():
    sch = GMP(0.9).make_schedule(100)           # defaults: begin 0, end 0.9, interval 0.1
    due = {t: s for t in range(101) if (s := sch.sparsity_at(t)) is not None}
    assert list(due) == list(range(0, 91, 10))
    for t in (10, 50, 90):
        assert due[t] == pytest.approx(0.9 - 0.9 * (1 - t / 90) ** 3)
    assert due[90] == pytest.approx(0.9)
    assert due[0] == 0
    g = GMP(0.8, begin=0.2, end=0.6, interval=0.1, initial=0.1)
    sch = g.make_schedule(50)
    assert (sch.begin, sch.end, sch.every) == (10, 30, 5)
    assert sch.sparsity_at(10) == pytest.approx(0.1)
    assert sch.sparsity_at(20) == pytest.approx(0.8 - 0.7 * 0.5 ** 3)
    assert sch.sparsity_at(9) is None
    assert sch.sparsity_at(31) is None
    assert GMP(0.9).make_schedule(3).end == 3  # tiny runs still ramp
    assert GMP(0.9).make_schedule(1).end == 1


def test_gmp_prunes_along_the_ramp(dls):
    log = []

    class SparsityAfterStep(Callback):
        order = 99
        def after_step(self): log.append(sparsity_report(self.learn.model)['sparsity'])

    gmp = GMP(0.9, interval=0.25, end=0.75)      # 8 steps: prune at 2, 4 and 6
    learn = learner(dls, [gmp, SparsityAfterStep()])
    fit(learn, 4)
    assert gmp.schedule_steps() == {'total_steps': 8, 'begin_step': 0, 'end_step': 6, 'interval_steps': 2}
    assert log[0] == 0  # dense until step 2
    assert log[1] == 0
    assert 0 < log[2] == log[3] < log[4] == log[5] < log[6] == pytest.approx(0.9, abs=1e-3)
    assert gmp.finished
    assert gmp.report()['projected_norm_fraction'] == 0


# --- DPF ------------------------------------------------------------------------------------------------------

def test_dpf_pruned_weights_receive_updates(dls):
    dpf = DPF(0.7, every=1, total_steps=6, floor=0)
    cap = Capture('dpf')
    lr = 1.0                                       # large steps, so that pruned weights overtake kept ones
    learn = learner(dls, [dpf, cap], lr=lr)
    fit(learn, 3)                                  # 6 steps; masks at steps 1..5
    moved = 0
    assert not any(st['engine_masks'] for st in cap.steps)   # the engine's gradient masking stays idle
    for st in cap.steps[1:]:
        for k, m in st['m'].items():
            pruned = ~m
            g, w, w1 = st['g'][k][pruned], st['w'][k][pruned], st['w_after'][k][pruned]
            assert g.abs().sum() > 0, 'pruned weights must receive gradient'
            assert torch.allclose(w1, w - lr * (g + WD * w), atol=1e-6)   # the full update reaches them
            moved += int((w1 != w).sum())
    assert moved > 0
    assert dpf.revived_weights > 0                  # weights pruned at one update were kept at a later one
    assert dpf.finished
    n = sum(m.weight.numel() for m in dpf.layers().values())
    assert sparsity_report(learn.model)['nonzero'] == round(0.3 * n)


def test_dpf_schedule_and_update_period():
    dpf = DPF(0.9, every=16)
    sch = dpf.make_schedule(1000)                  # ramp over steps 0..900, masks every 16 steps
    assert (sch.begin, sch.end, sch.every) == (0, 900, 16)
    dpf.schedule, dpf.total_steps = sch, 1000
    dpf.forward_mask.masks = {'x': torch.ones(1)}; dpf.forward_mask.handles = [object()]   # pretend masks exist
    due = []
    for t in range(1000):
        dpf.steps_done = t
        if (s := dpf._due()) is not None: due.append((t, s))
    steps = [t for t, _ in due]
    assert steps[:3] == [0, 16, 32]
    assert 900 in steps
    assert 916 in steps
    assert 912 not in steps
    assert dict(due)[916] == 0.9
    assert dict(due)[896] < 0.9
    dpf.forward_mask.handles = []


# --- DNW ------------------------------------------------------------------------------------------------------

def test_dnw_straight_through_gradient_reaches_pruned_weights(dls):
    dnw = DNW(0.8, floor=0)
    cap = Capture('dnw')
    model = tiny_net()
    learn = learner(dls, [dnw, cap], model=model)
    fit(learn, 1)
    st = cap.steps[0]
    # Reference: the same network with the masked weights as plain leaves, on the same batch.
    ref = tiny_net()
    ref.load_state_dict(st['state'])
    ref_layers = dict(ref.named_modules())
    leaves = {}
    with torch.no_grad():
        for k, w in st['w'].items():
            leaves[k] = (w * st['m'][k]).requires_grad_()
    for k, leaf in leaves.items():
        del ref_layers[k]._parameters['weight']
        ref_layers[k].weight = leaf
    ref.train()
    nn.CrossEntropyLoss()(ref(st['x']), st['y']).backward()
    for k in leaves:
        assert torch.allclose(st['g'][k], leaves[k].grad, atol=1e-6), k          # identical, pruned entries included
        assert st['g'][k][~st['m'][k]].abs().sum() > 0
    total = sum(m.numel() for m in st['m'].values())
    assert sum(int(m.sum()) for m in st['m'].values()) == round(0.2 * total)      # target sparsity from step 0
    assert dnw.mask_updates >= 2                                                   # recomputed at every step
    assert torch.equal(topk_masks({k: w.abs() for k, w in cap.steps[1]['w'].items()}, 0.8, floor=0)['0'],
                       cap.steps[1]['m']['0'])                                    # masks of step 2 from its weights


# --- GSM ------------------------------------------------------------------------------------------------------

def test_gsm_only_top_q_get_the_loss_gradient(arrays):
    one_step = cifar_dls(arrays=arrays, subset=40, test_subset=16, bs=16, valid_pct=0.2, seed=0)  # 30 images: 1 step
    gsm = GSM(0.75, floor=0)
    cap = Capture('gsm')
    learn = learner(one_step, [gsm, cap])
    fit(learn, 1)
    st = cap.steps[0]
    active = st['active']
    n = sum(w.numel() for w in st['w'].values())
    assert sum(int(a.sum()) for a in active.values()) == round(0.25 * n)
    scores = torch.cat([(st['w'][k] * st['g'][k]).abs().flatten() for k in active])
    chosen = torch.cat([active[k].flatten() for k in active])
    assert scores[chosen].min() >= scores[~chosen].max()                  # the active set is the top Q by |w g|
    for k, a in active.items():
        w, w1, g = st['w'][k], st['w_after'][k], st['g'][k]
        assert torch.allclose(w1[~a], (1 - LR * WD) * w[~a], atol=1e-7)     # passive: weight decay only
        assert torch.allclose(w1[a], w[a] - LR * (g[a] + WD * w[a]), atol=1e-6)
    assert gsm.finished
    assert sparsity_report(learn.model)['nonzero'] == round(0.25 * n)
    assert 0 < gsm.report()['projected_norm_fraction'] < 1


def test_gsm_momentum_option(dls):
    gsm = GSM(0.5, momentum=0.98)
    moms = []

    class Mom(Callback):
        order = 99
        def after_step(self): moms.append(self.learn.opt.hypers[0]['mom'])

    learn = learner(dls, [gsm, Mom()], opt_func=sgd_opt_func())
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, LR)   # one-cycle schedules the momentum
    assert moms
    assert all(m == 0.98 for m in moms)


# --- exact sparsity on ResNet20 and real CIFAR-10 ---------------------------------------------------------------

@pytest.mark.parametrize('method', list(METHODS))
def test_exact_sparsity_after_training_resnet20(dls, method):
    torch.manual_seed(0)
    cb = METHODS[method](0.9)
    learn = learner(dls, cb, model=create_cifar_model('resnet20'), opt_func=sgd_opt_func())
    fit(learn, 1)
    target = round(0.1 * PRUNABLE)
    rep = sparsity_report(learn.model)
    assert rep['nonzero'] == target
    assert rep['weights'] == PRUNABLE
    assert len(get_masks(learn.model)) == 20
    assert cb.finished
    assert all(k.endswith(('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'))
               for k in learn.model.state_dict())                        # plain state dict, no hooks or extra keys
    assert all(not m._forward_pre_hooks for m in learn.model.modules())
    if method == 'dpf':                                                   # a later fit keeps the final masks
        masks = {k: v.clone() for k, v in get_masks(learn.model).items()}
        fit(learn, 1)
        assert sparsity_report(learn.model)['nonzero'] == target
        assert all(torch.equal(masks[k], v) for k, v in get_masks(learn.model).items())
    r = cb.report()
    assert r['sparsity'] == pytest.approx(0.9, abs=1e-5)
    assert r['kept_weights'] == target
    assert 0 <= r['sparsity_before_projection'] <= 0.9
    assert 'schedule_steps' in r


# --- resume ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('method', list(METHODS))
def test_state_round_trip_mid_training(dls, method):
    "State saved mid-run and loaded into a fresh callback on a fresh model reproduces the method's state."
    kw = {'gmp': dict(interval=0.25), 'dpf': dict(every=1), 'dnw': {}, 'gsm': {}}[method]
    cb = METHODS[method](0.8, total_steps=8, **kw)
    learn = learner(dls, cb)
    fit(learn, 1)                                   # 2 of 8 steps: not finished
    assert not cb.finished
    assert cb.steps_done == 2
    state = cb.state_dict()
    state = torch.load(_roundtrip(state), weights_only=False)         # through a file, as RunCheckpoint does
    model2 = tiny_net(); model2.load_state_dict(learn.model.state_dict())
    cb2 = METHODS[method](0.8, **kw)
    learn2 = learner(dls, cb2, model=model2)
    cb2.load_state_dict(state)
    assert (cb2.steps_done, cb2.total_steps, cb2.last_pruned) == (cb.steps_done, cb.total_steps, cb.last_pruned)
    assert cb2.schedule_steps() == cb.schedule_steps()
    if method in ('gmp',):
        for k, v in get_masks(learn.model).items(): assert torch.equal(get_masks(model2)[k], v)
    if method in ('dpf', 'dnw'):
        for k, v in cb.current_masks().items(): assert torch.equal(cb2.current_masks()[k], v)
        assert cb2.revived_weights == cb.revived_weights
    x = dls.valid.one_batch()[0]
    learn.model.eval(); model2.eval()
    with torch.no_grad(): assert torch.equal(learn.model(x), model2(x))   # the same network computes the same
    fit(learn2, 3)                                                          # continue to the end of the plan
    assert cb2.finished
    assert cb2.steps_done == 8
    n = sum(m.weight.numel() for m in cb2.layers().values())
    assert sparsity_report(learn2.model)['nonzero'] == round(0.2 * n)


def _roundtrip(obj):
    import io
    buf = io.BytesIO(); torch.save(obj, buf); buf.seek(0)
    return buf


class Interrupt(Exception): pass


class InterruptAt(Callback):
    "Stop the process-like run at the start of epoch `epoch` (after the checkpoint of the previous epoch)."
    def __init__(self, epoch): self.at = epoch
    def before_epoch(self):
        if self.epoch == self.at: raise Interrupt(f'stopped at the start of epoch {self.at}')


def test_train_run_resume_dpf(tmp_path, arrays):
    "An interrupted `train_run` resumes DPF with its step counter, plan and forward masks, and ends exact."
    state = {'interrupt': True}

    def dpf_interrupted(config):
        cbs = dpf_method(TrainConfig(method='dpf', method_options=config.method_options))
        return cbs + ([InterruptAt(1)] if state['interrupt'] else [])

    register_method('dpf_test_interrupted', dpf_interrupted)
    config = TrainConfig(arch='resnet20', epochs=2, bs=16, subset=56, test_subset=16, method='dpf_test_interrupted',
                         method_options={'sparsity': 0.9, 'every': 1})
    with pytest.raises(Interrupt): train_run(config, tmp_path, arrays=arrays, progress=False)
    ckpt = torch.load(tmp_path/'checkpoint.pth', weights_only=False)
    saved = ckpt['callbacks']['dpf']
    assert saved['steps_done'] == 3
    assert saved['total_steps'] == 6
    assert not saved['finished']
    assert saved['forward_masks'] is not None
    assert not any(MASK_BUFFER in k for k in ckpt['model'])
    assert sum(int(v.sum()) for v in saved['forward_masks'].values()) < PRUNABLE     # on the ramp already
    state['interrupt'] = False
    res = train_run(config, tmp_path, arrays=arrays, progress=False)
    assert res['kept_weights'] == round(0.1 * PRUNABLE)
    assert res['sparsity'] == pytest.approx(0.9, abs=1e-5)
    assert res['schedule_steps']['total_steps'] == 6
    assert res['finished_at_step'] == 6
    assert json.loads((tmp_path/'result.json').read_text())['mask_updates'] == saved['mask_updates'] + 3
    sd = torch.load(tmp_path/'model.pth', weights_only=True)
    assert sum(int(sd[f'{k}.weight'].count_nonzero()) for k in saved['forward_masks']) == round(0.1 * PRUNABLE)


def test_load_state_rejects_foreign_state(dls):
    gmp_state = GMP(0.9).state_dict()
    with pytest.raises(InputError, match='lacks forward_masks'): DPF(0.9).load_state_dict(gmp_state)
    with pytest.raises(InputError, match="lacks \\['finished', 'mask_updates', 'plan_from_fit', 'projection', 'total_steps'\\]"):
        GMP(0.9).load_state_dict({'masks': {}, 'steps_done': 0})
    dpf = DPF(0.9, every=1, total_steps=4)
    learn = learner(dls, dpf)
    fit(learn, 1)
    state = dpf.state_dict()
    state['forward_masks'] = {k: v[:1] for k, v in state['forward_masks'].items()}
    learn2 = learner(dls, DPF(0.9))
    with pytest.raises(InputError, match='has shape'): learn2.dpf.load_state_dict(state)


# --- options and registration -----------------------------------------------------------------------------------

def cfg(method, **opts): return TrainConfig(method=method, method_options=opts)


def test_method_options_and_bad_input():
    assert isinstance(gmp_method(cfg('gmp', sparsity=0.9, allocation='uniform'))[0], GMP)
    assert gmp_method(cfg('gmp', sparsity=0.9, begin='0.1', end='0.8', interval='0.05'))[0].schedule_steps() == \
        {'total_steps': None}
    assert dpf_method(cfg('dpf', sparsity=0.9, every='8'))[0].every == 8
    assert dnw_method(cfg('dnw', sparsity=0.5, allocation='erk'))[0].allocation == 'erk'
    assert gsm_method(cfg('gsm', sparsity=0.5))[0].momentum is None
    for method, factory in (('gmp', gmp_method), ('dpf', dpf_method), ('dnw', dnw_method), ('gsm', gsm_method)):
        with pytest.raises(InputError, match='needs a target sparsity'): factory(cfg(method))
        with pytest.raises(InputError, match="Options \\['rank'\\] do not apply"): factory(cfg(method, sparsity=0.9, rank=2))
        with pytest.raises(InputError, match='sparsity=-0.5 is invalid'): factory(cfg(method, sparsity=-0.5))
        with pytest.raises(InputError, match='global, uniform, erk'): factory(cfg(method, sparsity=0.5, allocation='x'))
        with pytest.raises(InputError, match='needs a target'): METHODS[method](None)
    with pytest.raises(InputError, match='interval=0 is invalid'): GMP(0.9, interval=0)
    with pytest.raises(InputError, match="end='late' is invalid"): GMP(0.9, end='late')
    with pytest.raises(InputError, match='must end after it begins'): DPF(0.9, begin=0.5, end=0.5)
    with pytest.raises(InputError, match='every=2.5 is invalid'): DPF(0.9, every=2.5)
    with pytest.raises(InputError, match='initial=0.95 is above'): GMP(0.9, initial=0.95)
    with pytest.raises(InputError, match='momentum=1 is invalid'): GSM(0.9, momentum=1)
    with pytest.raises(InputError, match="momentum='fast' is invalid"): gsm_method(cfg('gsm', sparsity=0.9, momentum='fast'))
    with pytest.raises(InputError, match='total_steps=0 is invalid'): DNW(0.9, total_steps=0)


def test_planned_steps_counts_accumulation(dls):
    from fastai.callback.training import GradientAccumulation
    learn = learner(dls, [GradientAccumulation(n_acc=32)])
    learn.n_epoch = 3
    assert planned_steps(learn) == 3 * 2 * 16 // 32
    learn = learner(dls, [])
    learn.n_epoch = 3
    assert planned_steps(learn) == 6


def test_validate_before_training_does_not_end_the_method(dls):
    dnw = DNW(0.9)
    learn = learner(dls, dnw)
    with learn.no_bar(), learn.no_logging(): learn.validate()
    assert not dnw.finished
    assert dnw.forward_mask.installed
    fit(learn, 1)
    assert dnw.finished
    assert not dnw.forward_mask.installed


@pytest.mark.slow
@pytest.mark.parametrize('method', list(METHODS))
def test_cli_train_end_to_end(tmp_path, data_root, method, capsys):
    from ong_misguide.cli import main
    out = tmp_path/method
    rc = main(['train', '--method', method, '--sparsity', '0.9', '--epochs', '1', '--subset', '640',
               '--test_subset', '200', '--bs', '64', '--out', str(out), '--data', str(data_root)])
    assert rc == 0
    res = json.loads((out/'result.json').read_text())
    assert res['kept_weights'] == round(0.1 * PRUNABLE)
    assert res['sparsity'] == pytest.approx(0.9, abs=1e-5)
    assert (out/'layer_sparsity.png').is_file()
