"""Tests of ong_misguide.learned (STR, CS, DST, LC): each method's mechanism, the projection to the exact target
after a few training steps on real CIFAR-10 images, resume state round trips and bad input.

Mechanism tests use a small convolutional network on real CIFAR-10 images (lossless subset), so they run in
seconds. The exact-sparsity and resume tests use ResNet20."""
import io
import math
from functools import partial

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.optimizer import OptimWrapper

from ong_misguide.core import InputError
from ong_misguide.data import cifar_dls, load_lossless_cifar10
from ong_misguide.learned import CS, DST, LC, STR, LongTailedStep, learned_method
from ong_misguide.masking import get_masks, sparsity_report
from ong_misguide.models import create_cifar_model
from ong_misguide.train import METHODS as REGISTERED, TrainConfig, register_method, sgd_opt_func, train_run

PRUNABLE = 268336                      # conv and linear weights of ResNet20
TINY = 8 * 27 + 16 * 72 + 10 * 16      # conv and linear weights of tiny_net
METHODS = {'str': STR, 'cs': CS, 'dst': DST, 'lc': LC}
LR, WD = 0.05, 5e-4


@pytest.fixture(scope='module')
def arrays(data_root):
    return load_lossless_cifar10(data_root)


@pytest.fixture(scope='module')
def dls(arrays):
    return cifar_dls(arrays=arrays, subset=60, test_subset=16, bs=24, seed=0)    # 2 training steps per epoch


def tiny_net():
    "A small CNN (two convolutions and a linear head) for the mechanism tests."
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def plain_sgd():
    return partial(OptimWrapper, opt=torch.optim.SGD)   # no momentum: one step is p - lr * (g + wd * p)


def learner(dls, cbs, model=None, opt_func=None):
    return Learner(dls, model if model is not None else tiny_net(), loss_func=nn.CrossEntropyLoss(),
                   opt_func=opt_func or plain_sgd(), lr=LR, wd=WD, cbs=cbs)


def fit(learn, n=1, cbs=None, **kw):
    with learn.no_bar(), learn.no_logging(): learn.fit(n, LR, cbs=cbs, **kw)


class Stop(Exception): pass


class StopAt(Callback):
    "Raise `Stop` before training step `step` (counted over the whole fit), like a process that dies."
    order = 99

    def __init__(self, step): self.step, self.seen = step, 0

    def before_batch(self):
        if not self.training: return
        if self.seen == self.step: raise Stop(f'stopped before step {self.step}')
        self.seen += 1


class Grads(Callback):
    "Copies of the method parameters' and stored weights' gradients after each backward pass."
    order = 99

    def __init__(self, method): self.method, self.steps = method, []

    def after_backward(self):
        cb = getattr(self.learn, self.method)
        self.steps.append({
            'own': {n: [p.grad.detach().clone() if p.grad is not None else None for p in mod.parameters()]
                    for n, mod in cb.parametrizations().items()},
            'w': {n: cb.stored_weight(m).grad.detach().clone() for n, m in cb.modules_().items()},
            'x': self.learn.xb[0].detach().clone(), 'y': self.learn.yb[0].detach().clone()})


def _roundtrip(obj):
    buf = io.BytesIO(); torch.save(obj, buf); buf.seek(0)
    return torch.load(buf, weights_only=False)


# --- STR --------------------------------------------------------------------------------------------------------

def test_str_threshold_gets_gradient_and_moves(dls):
    "STR's forward uses sign(w) relu(|w| - sigmoid(s)); s receives the loss gradient and the optimizer moves it."
    cb = STR(0.5)
    learn = learner(dls, [cb, Grads('str')])
    conv = learn.model[0]
    tau = float(torch.sigmoid(conv.parametrizations.weight[0].s.detach()))
    w = conv.parametrizations.weight.original.detach().clone()
    assert 0 < tau < 1
    torch.testing.assert_close(conv.weight, torch.sign(w) * torch.relu(w.abs() - tau))  # effective weight in forward
    s_before = {n: mod.s.item() for n, mod in cb.parametrizations().items()}
    grads = learn.grads
    with pytest.raises(Stop): fit(learn, 1, cbs=StopAt(1))             # exactly one training step
    step = grads.steps[0]
    for n, (g,) in step['own'].items():
        assert g is not None, f'threshold of {n} got no gradient'
        assert g.abs() > 0, f'threshold of {n} got no gradient'
        # one plain SGD step: s - lr * (g + wd * s)
        mod = cb.parametrizations()[n]
        assert mod.s.item() == pytest.approx(s_before[n] - LR * (float(g) + WD * s_before[n]), rel=1e-5, abs=1e-7)
        assert mod.s.item() != s_before[n]
    # the weight gradient is zero exactly where |w| <= tau (sign() has no gradient, relu cuts the rest)
    g0 = step['w']['0']
    assert torch.all(g0[w.abs() <= tau] == 0)
    assert (g0[w.abs() > tau] != 0).float().mean() > 0.9


def test_str_auto_and_fixed_initial_value(dls):
    learn = learner(dls, STR(0.9))
    mags = torch.cat([m.parametrizations.weight.original.detach().abs().reshape(-1) for m in learn.str.modules_().values()])
    tau = float(torch.sigmoid(torch.tensor(learn.str.s_start)))
    assert float((mags <= tau).float().mean()) == pytest.approx(0.9, abs=1 / TINY)
    learn = learner(dls, STR(0.9, s_init=-3200))
    assert all(mod.threshold().item() == 0 for mod in learn.str.parametrizations().values())   # dense start
    torch.testing.assert_close(learn.model[0].weight, learn.model[0].parametrizations.weight.original)


# --- CS ---------------------------------------------------------------------------------------------------------

def test_cs_temperature_penalty_and_no_mask_decay(dls):
    "beta grows per epoch to 200; the loss adds lambda * sum(sigmoid(beta s)); mask logits get no weight decay."
    cb = CS(0.9, penalty=1e-3)
    temps = []

    class Temps(Callback):
        order = 99
        def before_batch(self):
            if self.training: temps.append(cb.beta)

    grads = Grads('cs')
    learn = learner(dls, [cb, Temps(), grads])
    conv = learn.model[0]
    mod = conv.parametrizations.weight[0]
    assert mod.scale == 2.0
    assert torch.all(mod.s == 0)
    torch.testing.assert_close(conv.weight, conv.parametrizations.weight.original)       # c * w * sigmoid(0) = w
    s0 = {n: m.s.detach().clone() for n, m in cb.parametrizations().items()}
    w0 = {n: m.parametrizations.weight.original.detach().clone() for n, m in cb.modules_().items()}
    with pytest.raises(Stop): fit(learn, 3, cbs=StopAt(1))
    assert learn.opt.hypers[-1]['wd'] == 0
    assert all(h['wd'] == WD for h in learn.opt.hypers[:-1])
    # the mask gradient of the first step: data term through c * w * beta * sigma'(0) plus lambda * beta * sigma'(0)
    model = tiny_net()
    for n, m in cb.modules_().items(): model.get_submodule(n).weight.data.copy_(w0[n])
    x, y = grads.steps[0]['x'], grads.steps[0]['y']
    ws = {n: model.get_submodule(n).weight for n in w0}
    for w in ws.values(): w.requires_grad_(True)
    # parameters other than the prunable weights are the same as at the start (first step)
    out = model(x)
    loss = F.cross_entropy(out, y)
    g = torch.autograd.grad(loss, list(ws.values()))
    for (n, w), gw in zip(ws.items(), g):
        expected = gw * w0[n] * 2 * 0.25 + 1e-3 * 0.25          # beta = 1, sigmoid'(0) = 1/4, c = 2
        torch.testing.assert_close(grads.steps[0]['own'][n][0], expected, rtol=1e-4, atol=1e-7)
        # one plain SGD step without weight decay on s
        torch.testing.assert_close(cb.parametrizations()[n].s.detach(), s0[n] - LR * expected, rtol=1e-4, atol=1e-8)
    # three epochs of two steps: beta = 200^(epoch / 2)
    learn2 = learner(dls, [CS(0.9), Temps()])
    temps.clear(); cb = learn2.cs
    fit(learn2, 3)
    assert temps == pytest.approx([1, 1, math.sqrt(200), math.sqrt(200), 200, 200])
    learn3 = learner(dls, [CS(0.9, temperature_every='step'), Temps()])
    temps.clear(); cb = learn3.cs
    fit(learn3, 2)
    assert temps == pytest.approx([200 ** (i / 3) for i in range(4)])


# --- DST --------------------------------------------------------------------------------------------------------

def test_dst_long_tailed_estimator():
    x = torch.tensor([-1.5, -0.7, -0.2, 0.0, 0.1, 0.4, 0.5, 1.0, 1.2], requires_grad=True)
    y = LongTailedStep.apply(x)
    y.sum().backward()
    assert y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    torch.testing.assert_close(x.grad, torch.tensor([0, 0.4, 1.2, 2.0, 1.6, 0.4, 0.4, 0.4, 0.0]))


def test_dst_thresholds_penalty_and_reset(dls):
    "Per-channel thresholds get the STE gradient plus -alpha exp(-t); a layer at <= 1% kept is reset to t = 0."
    cb = DST(0.9, alpha=1e-2)
    learn = learner(dls, [cb, Grads('dst')])
    shapes = {n: tuple(mod.t.shape) for n, mod in cb.parametrizations().items()}
    assert shapes == {'0': (8,), '2': (16,), '6': (10,)}
    with torch.no_grad(): cb.parametrizations()['2'].t.fill_(0.05)       # layer '2' starts with pruned weights
    w2 = cb.stored_weight(learn.model[2]).detach().clone()
    with pytest.raises(Stop): fit(learn, 1, cbs=StopAt(1))
    step = learn.grads.steps[0]
    for n, (g,) in step['own'].items():
        # the penalty's gradient is -alpha exp(-t) per channel; the data term comes through the estimator
        t = 0.05 if n == '2' else 0.0
        assert (g + 1e-2 * math.exp(-t)).abs().sum() > 0, f'no data gradient reached the thresholds of {n}'
    pruned = w2.abs() <= 0.05
    assert pruned.any()
    assert (step['w']['2'][pruned] != 0).float().mean() > 0.5  # pruned weights get gradient
    # reset: thresholds above every weight -> the layer keeps nothing -> reset to t = 0 after the step
    cb = DST(0.9)
    learn = learner(dls, cb)
    with torch.no_grad(): cb.parametrizations()['0'].t.fill_(10.0)
    with pytest.raises(Stop): fit(learn, 1, cbs=StopAt(1))
    assert torch.all(cb.parametrizations()['0'].t == 0)
    assert cb.resets == {'0': 1}


# --- LC ---------------------------------------------------------------------------------------------------------

def test_lc_steps_penalty_and_schedule(dls):
    "C steps keep the K largest |w|; the L step's gradient is dL/dw + mu (w - theta); mu grows per LC iteration."
    cb = LC(0.9, mu_init=0.5, mu_factor=2.0, lc_steps=3, floor=0)
    seen = []

    class ThetaLog(Callback):
        order = 99
        def after_backward(self): seen.append(({n: t.clone() for n, t in cb.theta.items()}, cb.mu, cb.c_steps))

    learn = learner(dls, [cb, Grads("lc"), ThetaLog()])
    w0 = {n: m.weight.detach().clone() for n, m in cb.modules_().items()}
    fit(learn, 3)                                                       # 6 steps, LC iterations at steps 0, 2, 4
    k = round(0.1 * TINY)
    theta, mu, c_steps = seen[0]
    flat = torch.cat([w.abs().reshape(-1) for w in w0.values()])
    assert sum(int((t != 0).sum()) for t in theta.values()) == k
    assert mu == 0.5
    assert c_steps == 1
    kept = torch.cat([t.abs()[t != 0] for t in theta.values()])
    assert float(kept.min()) > float(flat.kthvalue(len(flat) - k).values)
    # the gradient of the first step: data gradient + mu (w0 - theta)
    model = tiny_net()
    grads = learn.grads.steps[0]
    loss = F.cross_entropy(model(grads['x']), grads['y'])
    ws = {n: model.get_submodule(n).weight for n in w0}
    for (n, w), gw in zip(ws.items(), torch.autograd.grad(loss, list(ws.values()))):
        torch.testing.assert_close(grads['w'][n], gw + 0.5 * (w0[n] - theta[n]), rtol=1e-4, atol=1e-6)
    assert [(m, c) for _, m, c in seen] == [(0.5, 1), (0.5, 1), (1.0, 2), (1.0, 2), (2.0, 3), (2.0, 3)]
    assert cb.phase == 'fixed'
    assert sparsity_report(learn.model)['nonzero'] == k
    r = cb.report()
    assert r['sparsity_before_projection'] == 0
    assert 0 < r['lc_relative_distance'] < 1
    assert r['lc_iterations'] == 3


# --- the projection ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('learned_sparsity', [0.95, 0.5])
def test_projection_respects_the_learned_mask(dls, learned_sparsity):
    "Too sparse: every learned weight stays, the closest pruned ones come back. Too dense: only learned ones stay."
    cb = STR(0.8, s_init=-3200, floor=0)
    learn = learner(dls, cb)
    with pytest.raises(Stop): fit(learn, 1, cbs=StopAt(1))
    layers = cb.modules_()
    mags = torch.cat([m.parametrizations.weight.original.detach().abs().reshape(-1) for m in layers.values()])
    tau = float(mags.kthvalue(round(learned_sparsity * len(mags))).values)
    with torch.no_grad():
        for mod in cb.parametrizations().values(): mod.s.fill_(math.log(tau / (1 - tau)))
    learned = {n: m.parametrizations.weight.original.detach().abs() > tau for n, m in layers.items()}
    stored = {n: m.parametrizations.weight.original.detach().clone() for n, m in layers.items()}
    eff = {n: m.weight.detach().clone() for n, m in layers.items()}
    cb.project()
    masks = get_masks(learn.model)
    assert sum(int(m.sum()) for m in masks.values()) == round(0.2 * TINY)
    r = cb.report()
    assert r['sparsity_before_projection'] == pytest.approx(learned_sparsity, abs=2 / TINY)
    for n, m in layers.items():
        if learned_sparsity > 0.8: assert torch.all(masks[n][learned[n]])              # learned subset of kept
        else: assert not torch.any(masks[n] & ~learned[n])                              # kept subset of learned
        keep_l = masks[n] & learned[n]
        torch.testing.assert_close(m.weight[keep_l], eff[n][keep_l])                    # effective value
        back = masks[n] & ~learned[n]
        torch.testing.assert_close(m.weight[back], stored[n][back])                     # stored value
        assert torch.all(m.weight[~masks[n]] == 0)


@pytest.mark.parametrize('method', list(METHODS))
def test_exact_sparsity_resnet20(dls, method):
    "A few steps of ResNet20 on real CIFAR-10, then exactly 10% of the prunable weights are non-zero."
    torch.manual_seed(0)
    cb = METHODS[method](0.9)
    learn = learner(dls, cb, model=create_cifar_model('resnet20'), opt_func=sgd_opt_func())
    fit(learn, 1)
    target = round(0.1 * PRUNABLE)
    assert cb.phase == 'fixed'
    assert sparsity_report(learn.model)['nonzero'] == target
    assert not any('parametrizations' in k for k in learn.model.state_dict())      # a plain model again
    masks = {k: v.clone() for k, v in get_masks(learn.model).items()}
    fit(learn, 1)                                                                    # a later fit keeps the masks
    assert sparsity_report(learn.model)['nonzero'] == target
    assert all(torch.equal(masks[k], v) for k, v in get_masks(learn.model).items())
    r = cb.report()
    assert r['sparsity'] == pytest.approx(0.9, abs=1e-5)
    assert r['kept_weights'] == target
    assert 0 <= r['sparsity_before_projection'] < 1
    assert len(r['layer_sparsity_before_projection']) == len(masks)


# --- resume -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('method', list(METHODS))
def test_state_round_trip_mid_training(dls, method):
    "State saved mid-run and loaded into a fresh learner reproduces the network, the method state and the ending."
    cb = METHODS[method](0.8)
    learn = learner(dls, cb)
    with pytest.raises(Stop): fit(learn, 2, cbs=StopAt(2))               # epoch 1 of 2, then the process dies
    state = _roundtrip(cb.state_dict())                                 # through a file, as RunCheckpoint does
    model_state = _roundtrip(learn.model.state_dict())
    assert state['phase'] == 'search'
    assert state['steps_done'] == 2
    assert state['total_steps'] == 4

    cb2 = METHODS[method](0.8)
    learn2 = learner(dls, cb2)
    learn2.model.load_state_dict(model_state)
    cb2.load_state_dict(state)
    assert cb2.steps_done == 2
    assert cb2.total_steps == 4
    for (n, a), b in zip(cb.parametrizations().items(), cb2.parametrizations().values()):
        for p, q in zip(a.parameters(), b.parameters()): assert torch.equal(p, q), n
    if method == 'lc':
        assert cb2.iteration == cb.iteration
        assert all(torch.equal(cb.theta[n], cb2.theta[n]) for n in cb.theta)
    if method == 'cs':
        assert cb2.beta == cb.beta
        assert all(m.beta == cb.beta for m in cb2.parametrizations().values())
    x = dls.valid.one_batch()[0]
    learn.model.eval(); learn2.model.eval()
    with torch.no_grad(): assert torch.equal(learn.model(x), learn2.model(x))   # the same network computes the same

    fit(learn2, 2, start_epoch=1)                                          # the last epoch, then the projection
    assert cb2.phase == 'fixed'
    assert cb2.steps_done == 4
    assert sparsity_report(learn2.model)['nonzero'] == round(0.2 * TINY)


def test_train_run_resume(tmp_path, arrays):
    "An interrupted `train_run` resumes STR with its thresholds and step counter, and ends exact."
    stop = {'on': True}

    def interrupted(config):
        return learned_method(TrainConfig(method='str', method_options=config.method_options)) + \
            ([StopAt(3)] if stop['on'] else [])

    register_method('str_test_interrupted', interrupted)
    try:
        config = TrainConfig(arch='resnet20', epochs=2, bs=24, subset=60, test_subset=16,
                             method='str_test_interrupted', method_options={'sparsity': 0.9})
        with pytest.raises(Stop): train_run(config, tmp_path, arrays=arrays, progress=False)
        ckpt = torch.load(tmp_path/'checkpoint.pth', weights_only=False)
        saved = ckpt['callbacks']['str']
        assert saved['phase'] == 'search'
        assert saved['steps_done'] == 2
        assert saved['total_steps'] == 4
        assert any(k.endswith('parametrizations.weight.0.s') for k in ckpt['model'])
        stop['on'] = False
        res = train_run(config, tmp_path, arrays=arrays, progress=False)
        assert res['kept_weights'] == round(0.1 * PRUNABLE)
        assert res['sparsity'] == pytest.approx(0.9, abs=1e-5)
        assert res['str_s_init'] == saved['s_start']
        assert 'sparsity_before_projection' in res
        assert [h['epoch'] for h in res['history']] == [0, 1]
        sd = torch.load(tmp_path/'model.pth', weights_only=True)
        assert not any('parametrizations' in k for k in sd)
        assert sum(int(sd[f'{k}.weight'].count_nonzero()) for k in saved['names']) == round(0.1 * PRUNABLE)
    finally:
        REGISTERED.pop('str_test_interrupted', None)


def test_load_state_rejects_foreign_state(dls):
    with pytest.raises(InputError, match="lacks \\['s_start', 'final_thresholds'\\]"):
        STR(0.9).load_state_dict(CS(0.9).state_dict())
    cb = CS(0.9)
    learn = learner(dls, cb)
    state = cb.state_dict()
    state['parameters'] = {n: [v[0][:1]] for n, v in state['parameters'].items()}
    with pytest.raises(InputError, match="parameter of '0' has shape"): learner(dls, CS(0.9)).cs.load_state_dict(state)
    done = learner(dls, CS(0.9))
    fit(done, 1)
    with pytest.raises(InputError, match='already projected its model'): done.cs.load_state_dict(state)
    big = tiny_net(); big.add_module('7', nn.Linear(10, 10))
    with pytest.raises(InputError, match='resume with the same model'):
        learner(dls, CS(0.9), model=big).cs.load_state_dict(cb.state_dict())


# --- options and bad input --------------------------------------------------------------------------------------

def cfg(method, **opts): return TrainConfig(method=method, method_options=opts)


def test_registered_methods_and_options():
    for name, cls in METHODS.items():
        assert REGISTERED[name] is learned_method
        assert type(learned_method(cfg(name, sparsity=0.8))[0]) is cls
        with pytest.raises(InputError, match='needs a target sparsity'): learned_method(cfg(name))
        with pytest.raises(InputError, match="Options \\['rank'\\] do not apply"): learned_method(cfg(name, sparsity=0.9, rank=2))
        with pytest.raises(InputError, match='sparsity=1.5 is invalid'): learned_method(cfg(name, sparsity=1.5))
        with pytest.raises(InputError, match='global, uniform, erk'): learned_method(cfg(name, sparsity=0.5, allocation='x'))
    assert learned_method(cfg('str', sparsity=0.9, s_init='-5'))[0].s_init == -5.0
    cs = learned_method(cfg('cs', sparsity=0.9, s_init=-0.1, penalty='1e-6', final_temperature=100,
                            temperature_every='step'))[0]
    assert (cs.s_init, cs.lam, cs.final_temperature, cs.temperature_every) == (-0.1, 1e-6, 100.0, 'step')
    assert learned_method(cfg('dst', sparsity=0.9, alpha=1e-5, min_keep=0.05))[0].alpha == 1e-5
    lc = learned_method(cfg('lc', sparsity=0.9, mu_init=1e-4, mu_factor=1.2, lc_steps='20'))[0]
    assert (lc.mu_init, lc.mu_factor, lc.lc_steps) == (1e-4, 1.2, 20)
    with pytest.raises(InputError, match="Options \\['alpha'\\] do not apply to method 'str'"):
        learned_method(cfg('str', sparsity=0.9, alpha=1e-5))


@pytest.mark.parametrize('make, message', [
    (lambda: STR(0.9, s_init='high'), "s_init='high' is invalid: pass a number or 'auto'"),
    (lambda: STR(0.9, s_init=float('nan')), 's_init=nan is invalid'),
    (lambda: CS(0.9, s_init=50), 's_init=50 is invalid: pass a number >= -30 and <= 30'),
    (lambda: CS(0.9, penalty=-1e-8), 'penalty=-1e-08 is invalid: pass a number >= 0'),
    (lambda: CS(0.9, final_temperature=0.5), 'final_temperature=0.5 is invalid: pass a number >= 1'),
    (lambda: CS(0.9, temperature_every='batch'), "temperature_every='batch' is not known. Valid values: epoch, step"),
    (lambda: DST(0.9, alpha='lots'), "alpha='lots' is invalid"),
    (lambda: DST(0.9, min_keep=2), 'min_keep=2 is invalid: pass a number >= 0 and <= 1'),
    (lambda: LC(0.9, mu_init=0), 'mu_init=0 is invalid: pass a number > 0'),
    (lambda: LC(0.9, mu_factor=0.5), 'mu_factor=0.5 is invalid: pass a number >= 1'),
    (lambda: LC(0.9, lc_steps=2.5), 'lc_steps=2.5 is invalid: pass an integer >= 1'),
    (lambda: LC(0.9, lc_steps=True), 'lc_steps=True is invalid'),
    (lambda: STR(1.0), 'sparsity=1.0 is invalid'),
    (lambda: DST(0.9, floor=-1), 'floor=-1 is invalid'),
    (lambda: CS(0.9, allocation='lamp'), 'global, uniform, erk'),
])
def test_bad_arguments(make, message):
    with pytest.raises(InputError, match=message.replace('(', '\\(').replace(')', '\\)').replace('[', '\\[')):
        make()


def test_bad_models(dls):
    with pytest.raises(InputError, match='no prunable layers'):
        learner(dls, STR(0.9), model=nn.Sequential(nn.Flatten(), nn.BatchNorm1d(3072)))
    bad = tiny_net()
    with torch.no_grad(): bad[2].weight[0, 0, 0, 0] = float('nan')
    with pytest.raises(InputError, match="'2' has NaN or infinite weights"): learner(dls, DST(0.9), model=bad)
    with pytest.raises(InputError, match="'stem' names no module"): learner(dls, LC(0.9, exclude=['stem']))
    learn = learner(dls, CS(0.9, exclude=['0']))
    assert learn.cs.names == ['2', '6']


def test_callback_added_at_fit_rebuilds_the_optimizer(dls):
    "A method passed to `fit(cbs=...)` installs its parameters at the start of the fit and trains them."
    learn = learner(dls, [])
    fit(learn, 1)
    cb = STR(0.5)
    fit(learn, 1, cbs=cb)
    assert cb.phase == 'fixed'
    assert sparsity_report(learn.model)['nonzero'] == round(0.5 * TINY)
    assert len(learn.opt.param_lists) == 2
    assert learn.opt.hypers[0]['lr'] == learn.opt.hypers[1]['lr']
