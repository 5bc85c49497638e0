"""SNIP, GraSP and SynFlow (ong_misguide.prune_init): each scorer's mechanism, the model left unchanged by scoring,
the training data order left unchanged, exact sparsity after training steps on real CIFAR-10 images, resume, and
bad input. SNIP and GraSP read the lossless CIFAR-10 subset; the command-line runs read the CIFAR-10 archive."""
import json
import os
import re
import subprocess
import sys
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.torch_core import set_seed
from torch.func import functional_call

from ong_misguide import prune_init as pi
from ong_misguide.core import InputError
from ong_misguide.data import cifar_dls, load_lossless_cifar10
from ong_misguide.masking import get_masks, prunable_layers, sparsity_report
from ong_misguide.models import create_cifar_model
from ong_misguide.train import METHODS, TrainConfig, read_result, sgd_opt_func, train_run

PRUNABLE = 268336                       # conv and linear weights of ResNet20
TARGET = round(0.1 * PRUNABLE)          # kept at 90% sparsity
QUICK = {'snip': lambda: pi.SNIP(0.9), 'grasp': lambda: pi.GraSP(0.9, samples_per_class=2),
         'synflow': lambda: pi.SynFlow(0.9, rounds=3)}


@pytest.fixture(scope='module')
def arrays(data_root):
    return load_lossless_cifar10(data_root)    # real, lossless CIFAR-10 images


def make_dls(arrays, subset=160, bs=32):
    "Loaders over real CIFAR-10 images with every random generator seeded, so that runs see the same batches."
    set_seed(0)
    return cifar_dls(arrays=arrays, subset=subset, test_subset=40, bs=bs, seed=0)


def make_learner(dls, cbs=()):
    torch.manual_seed(0)
    return Learner(dls, create_cifar_model('resnet20'), loss_func=nn.CrossEntropyLoss(), opt_func=sgd_opt_func(),
                   wd=1e-4, cbs=list(cbs))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    for k, v in model.state_dict().items(): assert torch.equal(v, before[k]), f'{k} changed'
    assert all(p.grad is None for p in model.parameters()), 'scoring wrote .grad'


# ---------------------------------------------------------------- SNIP

@pytest.mark.parametrize('batches, bn_mode', [(1, 'train'), (2, 'eval')])
def test_snip_scores_match_manual_backward(arrays, batches, bn_mode):
    dls = make_dls(arrays)
    learn = make_learner(dls)
    model, layers = learn.model, prunable_layers(learn.model)
    before = snapshot(model)
    scores = pi.SNIPScore(batches, bn_mode)(layers, learn)
    assert_unchanged(model, before)         # weights, BatchNorm statistics and counters, no .grad
    assert model.training                   # the mode is put back too
    # By hand: the same batches (the first ones of the next pass), a plain backward, |g * w| normalised.
    model.train(bn_mode == 'train')
    it = iter(dls.train)
    for _ in range(batches):
        x, y = (t.as_subclass(torch.Tensor) for t in next(it))
        (F.cross_entropy(model(x), y) / batches).backward()
    raw = {n: (m.weight.grad * before[f'{n}.weight']).abs() for n, m in layers.items()}
    total = sum(v.sum() for v in raw.values())
    for n in layers: torch.testing.assert_close(scores[n], raw[n] / total, rtol=1e-4, atol=1e-10)


def test_draw_batches_keeps_data_order(arrays):
    dls = make_dls(arrays)
    drawn = pi.draw_batches(dls.train, 2)
    first_pass = [b for b in dls.train]
    for (x, y), (xb, yb) in zip(drawn, first_pass): assert torch.equal(x, xb) and torch.equal(y, yb)
    dls2 = make_dls(arrays)    # the same seeds without drawing: the same first pass
    for (x, y), (xb, yb) in zip(first_pass, dls2.train): assert torch.equal(x, xb) and torch.equal(y, yb)


# ---------------------------------------------------------------- GraSP

def test_grasp_hvp_and_sign():
    torch.manual_seed(3)
    mlp = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    layers = {'0': mlp[0], '2': mlp[2]}
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    chunks, T = [(x[:4], y[:4]), (x[4:], y[4:])], 3.0
    S = pi.grasp_scores(mlp, layers, chunks, temperature=T)
    params = {k: v.detach() for k, v in mlp.named_parameters()}

    def loss(w0, w2):
        p = {**params, '0.weight': w0, '2.weight': w2}
        return sum(F.cross_entropy(functional_call(mlp, p, (a,)) / T, b) for a, b in chunks)

    w = (params['0.weight'], params['2.weight'])
    wg = [t.clone().requires_grad_() for t in w]
    g = torch.autograd.grad(loss(*wg), wg)
    _, Hg = torch.autograd.functional.hvp(loss, w, g)
    torch.testing.assert_close(S['0'], -w[0] * Hg[0]); torch.testing.assert_close(S['2'], -w[1] * Hg[1])

    # Sign: S_q is the first-order rise of |g|^2 / 2 when weight q shrinks, so the highest S is removed first.
    def half_gnorm2(w0, w2):
        a, b = w0.clone().requires_grad_(), w2.clone().requires_grad_()
        return 0.5 * sum(t.pow(2).sum() for t in torch.autograd.grad(loss(a, b), (a, b)))
    q = int(S['2'].argmax())
    w2 = w[1].clone()
    w2.view(-1)[q] *= 1 - 1e-6
    assert S['2'].max() > 0
    torch.testing.assert_close((half_gnorm2(w[0], w2) - half_gnorm2(*w)) / 1e-6, S['2'].max(), rtol=1e-4, atol=1e-9)
    # The scorer hands the engine -S, so the engine keeps the lowest S.
    masks = pi.allocate({n: -v for n, v in S.items()}, 0.5, floor=0).masks
    flat = torch.cat([S['0'].flatten(), S['2'].flatten()])
    kept = torch.cat([masks['0'].flatten(), masks['2'].flatten()])
    assert flat[kept].max() <= flat[~kept].min()


def test_grasp_scorer_balanced_real_images(arrays):
    dls = make_dls(arrays, subset=400, bs=64)
    samples = pi.class_balanced_sample(dls.train, 10, 3, rounds=2)
    assert len(samples) == 2
    for x, y in samples:
        assert y.tolist() == sorted(y.tolist())
        assert torch.bincount(y, minlength=10).tolist() == [3] * 10
        assert x.shape == (30, 3, 32, 32)
    assert not any(torch.equal(samples[0][0][i], samples[1][0][i]) for i in range(30))
    halves = pi.grasp_halves(samples)
    assert [len(h[1]) for h in halves] == [15, 15, 15, 15]
    learn = make_learner(dls)
    layers = prunable_layers(learn.model)
    before = snapshot(learn.model)
    scorer = pi.GraSPScore(samples_per_class=2)
    scores = scorer(layers, learn)
    assert_unchanged(learn.model, before)
    assert scorer.info['images'] == 20
    assert scorer.info['temperature'] == 200.0
    assert all(torch.isfinite(s).all() for s in scores.values())
    assert any((s < 0).any() for s in scores.values()) and any((s > 0).any() for s in scores.values())


# ---------------------------------------------------------------- SynFlow

class NoIteration:
    "A training loader that fails if iterated: SynFlow must not read training data."
    def __init__(self, dataset): self.dataset = dataset
    def __iter__(self): raise AssertionError('SynFlow drew training data')


def test_synflow_closed_form():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4, bias=False), nn.Linear(4, 3, bias=False))
    W1, W2 = net[1].weight.detach().double(), net[2].weight.detach().double()
    flow = pi.synflow_round(pi.linearized_copy(net), ['1', '2'], (6,))
    torch.testing.assert_close(flow['1'], W1.abs() * W2.abs().sum(0)[:, None])
    torch.testing.assert_close(flow['2'], W2.abs() * W1.abs().sum(1)[None, :])
    with torch.no_grad(): net[2].weight.neg_()
    torch.testing.assert_close(pi.synflow_round(pi.linearized_copy(net), ['1', '2'], (6,))['2'], flow['2'])


def test_synflow_linearized_copy():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        net[1].running_mean.fill_(-0.5); net[1].weight.fill_(-2.0); net[1].bias.fill_(-1.0)
    before = snapshot(net)
    lin = pi.linearized_copy(net)
    assert not lin.training
    assert not lin[1].training
    assert lin[0].weight.dtype == torch.float64
    for t in list(lin.parameters()) + [b for b in lin.buffers() if b.is_floating_point()]: assert (t >= 0).all()
    assert float(lin[1].running_mean[0]) == 0.5
    assert float(lin[1].weight[0]) == 2.0
    assert_unchanged(net, before)
    assert net.training
    assert net[0].weight.dtype == torch.float32


def test_synflow_iterative_data_free(monkeypatch):
    torch.manual_seed(0)
    model = create_cifar_model('resnet20')
    before = snapshot(model)
    calls = []
    real_allocate = pi.allocate

    def recording_allocate(scores, sparsity, allocation, floor):
        calls.append((sparsity, {n: s.clone() for n, s in scores.items()}))
        return real_allocate(scores, sparsity, allocation, floor)
    monkeypatch.setattr(pi, 'allocate', recording_allocate)
    dataset = [(torch.zeros(3, 32, 32), 0)]
    learn = types.SimpleNamespace(model=model, dls=types.SimpleNamespace(train=NoIteration(dataset)))
    scorer = pi.SynFlowScore(rounds=5, sparsity=0.9)
    layers = prunable_layers(model)
    final = scorer(layers, learn)
    rounds = list(calls)
    assert_unchanged(model, before)
    assert scorer.info['input_shape'] == [3, 32, 32]
    assert scorer.info['dtype'] == 'float64'
    # Rounds 1-4 allocate at 1 - 0.1^(k/5); the engine allocates the last round's scores at 0.9.
    assert [round(s, 12) for s, _ in rounds] == [round(1 - 0.1 ** (k / 5), 12) for k in range(1, 5)]
    # The weights a round prunes score -1 in the next round (so they stay pruned); the others score >= 0.
    nxt = [r[1] for r in rounds[1:]] + [final]
    for (s, scores), later in zip(rounds, nxt):
        mask = real_allocate(scores, s, 'global', 1).masks
        for n in layers: assert (later[n][~mask[n]] == -1).all() and (later[n][mask[n]] >= 0).all()
    kept = real_allocate(final, 0.9, 'global', 1).masks
    assert sum(int(kept[n].sum()) for n in layers) == TARGET
    assert all((final[n][kept[n]] >= 0).all() for n in layers)


def test_synflow_float32_overflows():
    torch.manual_seed(0)
    model = create_cifar_model('resnet56')
    layers = prunable_layers(model)
    scores = pi.synflow_scores(model, layers, 0.9, rounds=1)
    assert all(torch.isfinite(s).all() for s in scores.values())
    assert max(float(s.max()) for s in scores.values()) == 1.0
    with pytest.raises(InputError, match='overflowed torch.float32 in round 1'):
        pi.synflow_scores(model, layers, 0.9, rounds=1, dtype=torch.float32)


# ---------------------------------------------------------------- training: exact sparsity, unchanged start and data

class Recorder(Callback):
    "Keep the model state at the first training batch and every training batch's inputs."
    order = 50

    def __init__(self): self.state, self.batches = None, []

    def before_batch(self):
        if not self.training: return
        if self.state is None:
            self.state = snapshot(self.learn.model)
            self.masks = {k: v.clone() for k, v in get_masks(self.learn.model).items()}
        self.batches.append(self.learn.xb[0].clone())


@pytest.fixture(scope='module')
def dense_batches(arrays):
    rec = Recorder()
    learn = make_learner(make_dls(arrays, subset=100), [rec])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.05)
    return rec.batches


@pytest.mark.parametrize('method', ['snip', 'grasp', 'synflow'])
def test_exact_sparsity_after_training(arrays, dense_batches, method):
    dls = make_dls(arrays, subset=100)    # 90 training images, so 2 steps of 32
    rec, cb = Recorder(), QUICK[method]()
    learn = make_learner(dls, [cb, rec])
    init = snapshot(learn.model)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.05)
    masks = get_masks(learn.model)
    # At the first step: initial weights times the mask, every other tensor (BatchNorm statistics) as initialised.
    for k, v in rec.state.items():
        if k.endswith('.weight') and k[:-len('.weight')] in masks: assert torch.equal(v, init[k] * masks[k[:-7]])
        else: assert torch.equal(v, init[k]), k
    # The run trains on the same batches, augmented the same way, as the dense run.
    assert len(rec.batches) == len(dense_batches) == 2
    for a, b in zip(rec.batches, dense_batches): assert torch.equal(a, b)
    # After the steps: exactly the target, with the masks chosen before the first step.
    assert sparsity_report(learn.model)['nonzero'] == TARGET
    assert all(torch.equal(rec.masks[k], v) for k, v in masks.items())
    rep = cb.report()
    assert rep['kept_weights'] == TARGET
    assert rep['prune_scoring']['method'] == method
    assert rep['mask_seconds'] > 0


class Interrupt(Callback):
    order = 80   # after RunCheckpoint (70) saved the epoch

    def after_epoch(self): raise KeyboardInterrupt('simulated interruption')


def test_resume_does_not_score_again(arrays, tmp_path, monkeypatch):
    crash = {'on': True}
    METHODS['snip_resume_test'] = lambda config: (pi.snip_method(config)
                                                  + ([Interrupt()] if crash['on'] else []))
    try:
        config = TrainConfig(epochs=2, bs=32, subset=100, test_subset=20, method='snip_resume_test',
                             method_options={'sparsity': 0.9})
        with pytest.raises(KeyboardInterrupt):
            train_run(config, tmp_path/'run', arrays=arrays, progress=False)
        saved = torch.load(tmp_path/'run'/'checkpoint.pth', weights_only=False)
        state = saved['callbacks']['snip']
        assert state['scoring']['method'] == 'snip'
        assert state['steps_done'] == 2
        crash['on'] = False
        calls = []
        monkeypatch.setattr(pi.SNIPScore, '__call__', lambda self, *a: calls.append(1) or {})
        result = train_run(config, tmp_path/'run', arrays=arrays, progress=False)
    finally:
        METHODS.pop('snip_resume_test')
    assert calls == []     # resumed with the saved masks, not scored again
    assert result['kept_weights'] == TARGET
    assert result['prune_scoring'] == state['scoring']
    model = create_cifar_model('resnet20')
    model.load_state_dict(torch.load(tmp_path/'run'/'model.pth', weights_only=True))
    for name, mask in state['masks'].items():
        assert not model.get_submodule(name).weight[~mask].any()


# ---------------------------------------------------------------- bad input

def cfg(method, **options): return TrainConfig(method=method, method_options=options)


@pytest.mark.parametrize('method, options, message', [
    ('snip', {}, 'needs a target sparsity'),
    ('grasp', {'sparsity': 1.0}, 'sparsity=1.0 is invalid'),
    ('synflow', {'sparsity': 0.9, 'batches': 2},
     "Options ['batches'] do not apply to method 'synflow': its options are allocation, rounds, sparsity"),
    ('snip', {'sparsity': 0.9, 'rounds': 3}, 'its options are allocation, batches, bn_mode, sparsity'),
    ('snip', {'sparsity': 0.9, 'batches': 0}, 'batches=0 is invalid'),
    ('snip', {'sparsity': 0.9, 'bn_mode': 'frozen'}, 'train, eval'),
    ('grasp', {'sparsity': 0.9, 'temperature': 0}, 'temperature=0 is invalid'),
    ('grasp', {'sparsity': 0.9, 'samples_per_class': 2.5}, 'samples_per_class=2.5 is invalid'),
    ('synflow', {'sparsity': 0.9, 'rounds': -1}, 'rounds=-1 is invalid'),
    ('synflow', {'sparsity': 0.9, 'allocation': 'lamp'}, 'global, uniform, erk'),
])
def test_invalid_method_options(method, options, message):
    with pytest.raises(InputError, match=re.escape(message)):
        METHODS[method](cfg(method, **options))


def test_method_defaults():
    snip = METHODS['snip'](cfg('snip', sparsity=0.9))[0]
    assert (snip.scorer.batches, snip.scorer.bn_mode, snip.allocation) == (1, 'train', 'global')
    grasp10 = METHODS['grasp'](cfg('grasp', sparsity=0.9))[0].scorer
    grasp100 = METHODS['grasp'](TrainConfig(dataset='cifar100', method='grasp', method_options={'sparsity': 0.9}))[0].scorer
    assert (grasp10.samples_per_class, grasp10.rounds, grasp10.temperature) == (10, 1, 200.0)
    assert (grasp100.samples_per_class, grasp100.rounds, grasp100.num_classes) == (5, 2, 100)
    synflow = METHODS['synflow'](cfg('synflow', sparsity=0.9))[0]
    assert synflow.scorer.rounds == 100
    assert synflow.scorer.dtype == torch.float64
    assert [round(pi.synflow_sparsity(0.9, k, 100), 6) for k in (0, 100)] == [0.0, 0.9]


def test_data_errors_when_pruning(arrays):
    dls = make_dls(arrays)   # 144 training images, so 4 batches of 32
    for cb, message in [(pi.SNIP(0.9, batches=5), 'batches=5 is more than the 4 batches'),
                        (pi.GraSP(0.9, samples_per_class=30), 'needs 30 training images of every class'),
                        (pi.SynFlow(0.9, rounds=2, input_shape=(3, 0, 32)), r'input_shape=\(3, 0, 32\) is invalid')]:
        learn = make_learner(dls, [cb])
        before = snapshot(learn.model)
        with pytest.raises(InputError, match=message): learn.fit(1)
        assert_unchanged(learn.model, before)
    with pytest.raises(InputError, match='pass the fastai Learner'):
        pi.SNIPScore()({'fc': nn.Linear(2, 2)})
    with pytest.raises(InputError, match='needs the target'):
        pi.SynFlowScore()({'fc': nn.Linear(2, 2)})
    no_vocab = types.SimpleNamespace(model=nn.Linear(2, 2), dls=types.SimpleNamespace(train=[]))
    with pytest.raises(InputError, match='pass num_classes='):
        pi.GraSPScore()({'fc': no_vocab.model}, no_vocab)


# ---------------------------------------------------------------- the command line

CLI = [sys.executable, '-m', 'ong_misguide.cli']


def run_cli(*args):
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore'}
    return subprocess.run(CLI + list(args), capture_output=True, text=True, env=env, timeout=1800)


def test_cli_missing_sparsity(tmp_path, data_root):
    done = run_cli('train', '--method', 'snip', '--subset', '640', '--bs', '64', '--data', str(data_root),
                   '--out', str(tmp_path/'run'))
    assert done.returncode == 2
    assert 'needs a target sparsity' in done.stderr
    assert 'Traceback' not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize('method', ['snip', 'grasp', 'synflow'])
def test_cli_train_exact_sparsity(tmp_path, data_root, method):
    out = tmp_path/method
    done = run_cli('train', '--method', method, '--sparsity', '0.9', '--epochs', '1', '--subset', '640',
                   '--test_subset', '200', '--bs', '64', '--data', str(data_root), '--out', str(out))
    assert done.returncode == 0, done.stderr
    result = read_result(out)
    assert result['kept_weights'] == TARGET
    assert result['prunable_weights'] == PRUNABLE
    assert result['prune_scoring']['method'] == method
    assert json.loads(done.stdout.strip().splitlines()[-1])['sparsity'] == result['sparsity']
    if method == 'synflow': assert result['prune_scoring']['rounds'] == 100
