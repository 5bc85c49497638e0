"""Tests of IMP and BIMP (ong_misguide.imp) on real CIFAR-10 images.

Covered:
* per-phase rates that reach the goal sparsity exactly;
* each retraining schedule's learning rate against its formula;
* prunes at the planned steps and exact sparsity after training (Python API and `ong-misguide train`);
* resume in the middle of a retraining phase;
* bad input."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.callback.schedule import ParamScheduler, SchedLin, combined_cos
from fastai.learner import Learner, load_learner

from ong_misguide.core import InputError
from ong_misguide.data import cifar_dls, load_lossless_cifar10
from ong_misguide.imp import (BIMP, IMP, RETRAIN_SCHEDULES, RemainingMagnitudeScore, RetrainSchedule, allr_lr0,
                              bimp_method, budget_plan, imp_method, per_phase_rate, phase_sparsities, retrain_lr)
from ong_misguide.masking import allocate, get_masks, prunable_layers, set_masks, sparsity_report
from ong_misguide.models import create_cifar_model
from ong_misguide.train import METHODS, TrainConfig, sgd_opt_func, train_run

PRUNABLE = 268336   # conv and linear weights of ResNet20
torch.set_num_threads(2)


# ---- per-phase rate --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('sparsity', [0.5, 0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize('phases', [1, 2, 3, 4, 7])
def test_per_phase_rate_reaches_goal(sparsity, phases):
    q = per_phase_rate(sparsity, phases)
    assert q == pytest.approx(1 - (1 - sparsity) ** (1 / phases), abs=1e-15)
    targets = phase_sparsities(sparsity, phases)
    assert targets[-1] == sparsity                     # the last phase prunes to the goal itself
    remaining = 1.0
    for target in targets:                             # each phase removes q of what is left
        remaining *= 1 - q
        assert 1 - remaining == pytest.approx(target, abs=1e-12)


@pytest.mark.parametrize('allocation', ['global', 'uniform', 'erk'])
def test_phase_prunes_nested_and_exact(allocation):
    torch.manual_seed(0)
    model = create_cifar_model('resnet20')
    layers = prunable_layers(model)
    previous = None
    for target in phase_sparsities(0.9, 3):
        masks = allocate(RemainingMagnitudeScore()(layers), target, allocation).masks
        set_masks(model, masks)
        kept = sum(int(m.sum()) for m in masks.values())
        assert kept == round((1 - target) * PRUNABLE)
        if previous is not None:       # a later phase never revives a weight an earlier phase pruned
            assert all(not (masks[k] & ~previous[k]).any() for k in masks)
        previous = {k: v.clone() for k, v in masks.items()}
    assert sparsity_report(model)['nonzero'] == round(0.1 * PRUNABLE)


# ---- retraining schedules ---------------------------------------------------------------------------------------

ONE_CYCLE = combined_cos(0.25, 0.1 / 25, 0.1, 0.1 / 1e5)
ORIGINAL = np.array([ONE_CYCLE(t / 120) for t in range(120)])     # T = 120 dense steps
T, R = len(ORIGINAL), 30                                           # one retraining phase of 30 steps
ETA_MAX, ETA_END = ORIGINAL.max(), ORIGINAL[-1]
W, L = 3, 27                                                       # floor(0.1 * 30) warm-up steps


def half_cosine_up(target, r): return target * (1 - math.cos(math.pi * r / W)) / 2


@pytest.mark.parametrize('r', [0, 1, 2, 3, 4, 10, 17, 29])
def test_schedule_matches_formula(r):
    k = r - W
    peak = int(ORIGINAL.argmax())
    slr_curve = [ETA_MAX if t <= peak else ORIGINAL[t] for t in range(T)]
    expected = {
        'FT': ETA_END,
        'LRW': ORIGINAL[T - R + r],
        'SLR': half_cosine_up(ETA_MAX, r) if r < W else slr_curve[(k * T) // L],
        'CLR': half_cosine_up(ETA_MAX, r) if r < W else ETA_END + (ETA_MAX - ETA_END) * (1 + math.cos(math.pi * k / L)) / 2,
        'LLR': half_cosine_up(ETA_MAX, r) if r < W else ETA_MAX * (1 - k / L),
        'ALLR': half_cosine_up(0.037, r) if r < W else 0.037 * (1 - k / L),
    }
    for name, value in expected.items():
        got = retrain_lr(name, r, R, ORIGINAL, lr0=[0.037] if name == 'ALLR' else None)
        assert got.shape == (1,)
        assert got[0] == pytest.approx(value, rel=1e-12, abs=1e-15), name


def test_schedule_details():
    # SLR replaces one-cycle's rising part by the maximum, so its first post-warm-up rate is eta_max.
    assert retrain_lr('SLR', W, R, ORIGINAL)[0] == ETA_MAX
    assert retrain_lr('slr', W, R, ORIGINAL, warmup=0)[0] == ETA_MAX      # names are case-insensitive
    # LRW on a phase longer than the dense phase starts from the dense phase's first rate.
    assert retrain_lr('LRW', 0, 200, ORIGINAL)[0] == ORIGINAL[0]
    assert retrain_lr('LRW', 199, 200, ORIGINAL)[0] == ORIGINAL[-1]
    # warmup=0 gives the plain schedules.
    assert retrain_lr('LLR', 0, R, ORIGINAL, warmup=0)[0] == ETA_MAX
    assert retrain_lr('CLR', 0, R, ORIGINAL, warmup=0)[0] == pytest.approx(ETA_MAX)
    # One rate per parameter group.
    two = np.stack([ORIGINAL, ORIGINAL / 10], axis=1)
    np.testing.assert_allclose(retrain_lr('LLR', 10, R, two), [ETA_MAX * (1 - 7 / L), ETA_MAX / 10 * (1 - 7 / L)])
    # ALLR's starting rate: eta_max * clip(d / sqrt(q), min(R / T, 1), 1).
    assert allr_lr0(0.1, 0.2, 0.5, 30, 120)[()] == pytest.approx(0.1 * 0.2 / math.sqrt(0.5))
    assert allr_lr0(0.1, 0.05, 0.5, 30, 120)[()] == pytest.approx(0.1 * 30 / 120)
    assert allr_lr0(0.1, 0.05, 0.5, 300, 120)[()] == pytest.approx(0.1)
    assert allr_lr0(0.1, 0.9, 0.5, 30, 120)[()] == pytest.approx(0.1)
    rs = RetrainSchedule('ALLR', ORIGINAL)
    np.testing.assert_allclose(rs.start_lr(R, norm_drop=0.2, rate=0.5), allr_lr0(ETA_MAX, 0.2, 0.5, R, T))


# ---- inside a fastai fit on real CIFAR-10 -----------------------------------------------------------------------

class StepLog(Callback):
    "Per training batch: non-zero prunable weights after the batch, learning rate and momentum used."
    order = 99

    def __init__(self): self.nonzero, self.lrs, self.momentums = [], [], []

    def after_batch(self):
        if not self.training: return
        self.nonzero.append(sparsity_report(self.learn.model)['nonzero'])
        self.lrs.append(self.opt.hypers[-1]['lr']); self.momentums.append(self.opt.hypers[-1]['mom'])


@pytest.fixture(scope='module')
def arrays(data_root):
    return load_lossless_cifar10(data_root)   # real CIFAR-10 images, lossless


@pytest.fixture(scope='module')
def small_dls(arrays):
    dls = cifar_dls(arrays=arrays, subset=170, test_subset=20, bs=16, seed=0)   # 150 training images
    assert len(dls.train) == 9
    return dls


def fit_with(dls, cb, fit):
    torch.manual_seed(0)
    log = StepLog()
    learn = Learner(dls, create_cifar_model('resnet20'), loss_func=nn.CrossEntropyLoss(), opt_func=sgd_opt_func(),
                    wd=1e-4, cbs=cb.callbacks() + [log])
    with learn.no_bar(), learn.no_logging(): fit(learn)
    return learn, log


def prune_steps(log) -> list[int]:
    return [t for t in range(1, len(log.nonzero)) if log.nonzero[t] != log.nonzero[t - 1]]


def test_imp_one_cycle_steps_and_rates(small_dls, tmp_path):
    imp = IMP(sparsity=0.9, retrain_schedule='ALLR')           # default: phases of 10% of the fit each
    learn, log = fit_with(small_dls, imp, lambda learn: learn.fit_one_cycle(3, 0.1))
    assert imp.plan == budget_plan(3, 9, 3, retrain=0.1)
    assert imp.plan.starts == (18, 21, 24)
    assert len(log.nonzero) == 27
    assert prune_steps(log) == [18, 21, 24]
    assert [e['kept_weights'] for e in imp.phase_log] == [round((1 - s) * PRUNABLE) for s in phase_sparsities(0.9, 3)]
    assert log.nonzero[-1] == round(0.1 * PRUNABLE)           # exact goal after the last retraining step
    # The dense phase is fastai's one-cycle compressed into its 18 steps (rate and momentum) ...
    mom = combined_cos(0.25, 0.95, 0.85, 0.95)
    np.testing.assert_allclose(log.lrs[:18], [ONE_CYCLE(t / 18) for t in range(18)], rtol=1e-12)
    np.testing.assert_allclose(log.momentums[:18], [mom(t / 18) for t in range(18)], rtol=1e-12)
    # ... and each retraining phase follows ALLR from its recorded starting rate, momentum at 0.9.
    dense = np.array([ONE_CYCLE(t / 18) for t in range(18)])
    for e in imp.phase_log:
        assert e['lr0'][0] == pytest.approx(float(allr_lr0(dense.max(), e['norm_drop'], per_phase_rate(0.9, 3), 3, 18)))
        expected = [retrain_lr('ALLR', r, 3, dense, lr0=e['lr0'])[0] for r in range(3)]
        np.testing.assert_allclose(log.lrs[e['step']:e['step'] + 3], expected, rtol=1e-12)
    assert log.momentums[18:] == [0.9] * 9
    learn.export(tmp_path/'imp.pkl')   # pickles the callbacks with the model
    assert sparsity_report(load_learner(tmp_path/'imp.pkl').model)['nonzero'] == round(0.1 * PRUNABLE)
    # A later fit keeps the masks and fastai's own learning rate.
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.01)
    assert log.nonzero[27:] == [round(0.1 * PRUNABLE)] * 9
    assert log.lrs[27:] == [0.01] * 9


def test_bimp_linear_schedule_lrw(small_dls):
    bimp = BIMP(sparsity=0.8, phases=2, retrain_schedule='LRW')   # default: dense for half of the fit
    sched = ParamScheduler({'lr': SchedLin(0.05, 0.0)})
    # fastai's validate fires before_fit and after_fit: the plan is still made by the fit that follows.
    learn, log = fit_with(small_dls, bimp, lambda learn: (learn.validate(), learn.fit(2, 0.05, cbs=sched)))
    assert (bimp.plan.pretrain, bimp.plan.starts, bimp.plan.lengths) == (9, (9, 13), (4, 5))
    assert prune_steps(log) == [9, 13]
    assert log.nonzero[-1] == round(0.2 * PRUNABLE)
    dense = [0.05 * (1 - t / 9) for t in range(9)]
    np.testing.assert_allclose(log.lrs[:9], dense, rtol=1e-12)
    np.testing.assert_allclose(log.lrs[9:13], dense[-4:], rtol=1e-12)      # LRW: the last 4 dense rates
    np.testing.assert_allclose(log.lrs[13:18], dense[-5:], rtol=1e-12)     # then the last 5


def test_plan_too_long_and_resume_mismatch(small_dls):
    with pytest.raises(InputError, match='each part needs at least one step'):
        fit_with(small_dls, IMP(sparsity=0.9, phases=30, pretrain=0.5), lambda learn: learn.fit(1, 0.01))
    first = IMP(sparsity=0.9, pretrain=0.5)
    first.plan = budget_plan(3, 9, 3, pretrain=0.5)    # as if saved by a 3-epoch run
    resumed = IMP(sparsity=0.9, pretrain=0.5)
    resumed.load_state_dict({**first.state_dict(), 'masks': {}})
    with pytest.raises(InputError, match='resume with the same epochs'):
        fit_with(small_dls, resumed, lambda learn: learn.fit(2, 0.01))


# ---- train_run: exact sparsity and resume ----------------------------------------------------------------------

class Interrupt(Callback):
    order = 99
    def after_epoch(self):
        if self.epoch == 1: raise KeyboardInterrupt   # after the checkpoint of epoch 2 is written


def run(config, out, arrays, extra=()):
    "train_run with callbacks `extra` added to the method's and a StepLog; returns (result or None, log)."
    log, factory = StepLog(), METHODS[config.method]
    METHODS[config.method] = lambda c: factory(c) + [log, *extra]
    try: return train_run(config, out, arrays=arrays, progress=False), log
    finally: METHODS[config.method] = factory


def test_resume_mid_phase(arrays, tmp_path):
    config = TrainConfig(arch='resnet20', epochs=3, bs=16, subset=170, test_subset=20, method='bimp',
                         method_options={'sparsity': 0.9, 'pretrain': 0.4, 'retrain_schedule': 'ALLR'})
    full, full_log = run(config, tmp_path/'full', arrays)
    assert full['imp_plan']['starts'] == [11, 16, 21]              # phase 2 spans steps 16-20
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path/'cut', arrays, extra=[Interrupt()])
    ckpt = torch.load(tmp_path/'cut'/'checkpoint.pth', weights_only=False)
    state = ckpt['callbacks']['bimp']
    assert ckpt['epoch'] == 2
    assert state['phases_done'] == 2
    assert not state['completed']
    resumed, log = run(config, tmp_path/'cut', arrays)
    assert len(log.lrs) == 9                                       # steps 18-26 only
    # Until the interruption both runs compute the same, so phases 1 and 2 match.
    # The rest of phase 2 (steps 18-20) continues from the saved starting rate.
    assert resumed['imp_phases'][:2] == full['imp_phases'][:2]
    assert log.lrs[:3] == full_log.lrs[18:21]
    assert log.momentums == [0.9] * 9
    assert len(resumed['imp_phases']) == 3
    assert resumed['imp_phases'][2]['step'] == 21
    assert resumed['kept_weights'] == full['kept_weights'] == round(0.1 * PRUNABLE)
    assert [h['epoch'] for h in resumed['history']] == [0, 1, 2]


def run_cli(*args):
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore'}
    return subprocess.run([sys.executable, '-m', 'ong_misguide.cli', *args], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.parametrize('method, starts', [('imp', [18, 21, 24]), ('bimp', [14, 18, 22])])
def test_cli_train_exact_sparsity(method, starts, data_root, tmp_path):
    out = tmp_path/method
    done = run_cli('train', '--method', method, '--sparsity', '0.9', '--epochs', '3', '--subset', '640',
                   '--test_subset', '200', '--bs', '64', '--precision', 'bf16', '--data', str(data_root),
                   '--out', str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads((out/'result.json').read_text())
    assert result['kept_weights'] == round(0.1 * PRUNABLE)
    assert result['prunable_weights'] == PRUNABLE
    assert result['imp_plan']['starts'] == starts
    assert result['retrain_schedule'] == 'LLR'
    sd = torch.load(out/'model.pth', weights_only=True)
    model = create_cifar_model('resnet20'); model.load_state_dict(sd)
    assert sparsity_report(model)['nonzero'] == round(0.1 * PRUNABLE)


# ---- bad input ---------------------------------------------------------------------------------------------------

def config(method='imp', epochs=3, **options):
    return TrainConfig(method=method, epochs=epochs, method_options=options)


@pytest.mark.parametrize('options, message', [
    ({'sparsity': 0.9, 'retrain_schedule': 'cosine'}, 'Valid schedules: FT, LRW, SLR, CLR, LLR, ALLR'),
    ({'sparsity': 0.9, 'retrain_schedule': 3}, 'Valid schedules: FT, LRW, SLR, CLR, LLR, ALLR'),
    ({'sparsity': 0.9, 'phases': 0}, 'phases=0 is invalid'),
    ({'sparsity': 0.9, 'phases': -2}, 'phases=-2 is invalid'),
    ({'sparsity': 0.9, 'phases': 1.5}, 'phases=1.5 is invalid'),
    ({'sparsity': 0.9, 'phases': 'three'}, "phases='three' is invalid"),
    ({}, 'needs a target sparsity'),
    ({'sparsity': 1.0}, 'sparsity=1.0 is invalid'),
    ({'sparsity': 0.9, 'score': 'residual'}, "Options ['score'] do not apply"),
    ({'sparsity': 0.9, 'allocation': 'lamp'}, 'global, uniform, erk'),
    ({'sparsity': 0.9, 'pretrain': 0.5, 'retrain': 0.1}, 'not both'),
    ({'sparsity': 0.9, 'pretrain': 1.5}, 'must lie in (0, 1)'),
    ({'sparsity': 0.9, 'retrain': 0}, 'retrain=0 is below 1'),
    ({'sparsity': 0.9, 'pretrain': 3}, 'leaves no epochs for retraining'),
    ({'sparsity': 0.9, 'retrain': 1}, 'leaves no epochs for dense training'),
    ({'sparsity': 0.9, 'warmup': 1.2}, 'warmup=1.2 is invalid'),
    ({'sparsity': 0.9, 'retrain_schedule': 'LRW', 'warmup': 0.1}, 'does not apply to LRW'),
])
@pytest.mark.parametrize('factory', [imp_method, bimp_method])
def test_bad_options_raise(factory, options, message):
    with pytest.raises(InputError) as info:
        factory(config(factory.__name__.removesuffix('_method'), **options))
    assert message in str(info.value)


def test_cli_bad_method_options(data_root, tmp_path):
    small = ['--epochs', '3', '--subset', '200', '--test_subset', '100', '--data', str(data_root)]
    done = run_cli('train', '--method', 'bimp', *small, '--out', str(tmp_path/'x'))
    assert done.returncode == 2
    assert 'needs a target sparsity' in done.stderr
    assert 'Traceback' not in done.stderr
    done = run_cli('train', '--method', 'imp', '--sparsity', '0.9', '--rank', '4', *small, '--out', str(tmp_path/'y'))
    assert done.returncode == 2
    assert "Options ['rank'] do not apply" in done.stderr
