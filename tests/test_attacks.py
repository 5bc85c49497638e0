"""Extraction attacks over the oracle: exact query counts, resume without double counting, losses, bad input."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ong_misguide.attacks import (ATTACKS, DFME, AttackLoop, DisGUIDE, clamped_log, extract, kl_to_student,
                                  recovered_logits, soft_cross_entropy)
from ong_misguide.cli import main
from ong_misguide.core import InputError
from ong_misguide.models import create_cifar_model
from ong_misguide.oracle import Oracle, QueryBudgetExceeded, TopOneOracle

TINY = {'dfme': dict(batch_size=8), 'maze': dict(batch_size=8, ndirs=2, iter_exp=2),
        'disguide': dict(batch_size=8, replay_size=64), 'knockoff': dict(batch_size=8, epochs=2, lr_step=1)}
COMMON = dict(student='resnet20', precision='bf16')


@pytest.fixture(scope='module')
def victim():
    torch.manual_seed(0)
    return create_cifar_model('resnet20').eval()


@pytest.fixture
def cifar_test_set(monkeypatch, cifar10_arrays):
    "The real CIFAR-10 test set, decoded once per session instead of once per attack run."
    monkeypatch.setattr('ong_misguide.attacks.load_cifar_arrays', lambda dataset='cifar10', path=None: cifar10_arrays)
    return cifar10_arrays


@pytest.fixture(scope='module')
def pool():
    return np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)


def run(attack, victim, budget, pool=None, **kw):
    return extract(attack, victim, budget, hparams={**COMMON, **TINY[attack]}, test_subset=50, progress=False,
                   pool=pool, **kw)


@pytest.mark.parametrize('attack', list(ATTACKS))
def test_each_attack_spends_exactly_its_budget(attack, victim, pool, cifar_test_set):
    before = {k: v.clone() for k, v in victim.state_dict().items()}
    cost = {'dfme': 8 * 7, 'maze': 8 * (4 + 3), 'disguide': 8, 'knockoff': 8}[attack]
    r = run(attack, victim, 3 * cost + cost // 2, pool)
    assert r['cost_per_iteration'] == cost
    assert r['queries'] == 3 * cost
    assert r['iterations'] == 3
    assert r['unused_budget'] == cost // 2
    assert all(np.isfinite(e[k]) for e in r['log'] for k in e if k.startswith('loss'))
    assert 0 <= r['clone_accuracy'] <= 1
    assert 0 <= r['clone_fidelity'] <= 1
    assert all(torch.equal(before[k], v) for k, v in victim.state_dict().items())
    assert all(p.grad is None for p in victim.parameters())
    if attack == 'knockoff':
        assert r['post_epochs'] == 2
        assert r['log'][-1]['phase'] == 'train'


@pytest.mark.parametrize('attack', ['disguide', 'knockoff'])
def test_hard_label_mode(attack, victim, pool, cifar_test_set):
    r = run(attack, victim, 16, pool, label_mode='hard')
    assert r['queries'] == 16
    assert r['label_mode'] == 'hard'


def test_hard_label_answers_are_all_the_attack_sees(victim):
    oracle = Oracle(victim, hard_label=True, input_space='tanh', budget=8 * 4)
    atk = DisGUIDE(oracle, label_mode='hard', **COMMON, **TINY['disguide'])
    loop = AttackLoop(atk, 32, progress=False)
    loop.run()
    assert oracle.count == 32
    ys = atk.replay.y[:len(atk.replay)]
    assert set(ys.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(ys.sum(1), torch.ones(len(ys)))


def test_soft_label_attack_trains_on_probabilities_not_argmax(victim):
    oracle = Oracle(victim, input_space='tanh', budget=16)
    atk = DisGUIDE(oracle, **COMMON, **TINY['disguide'])
    AttackLoop(atk, 16, progress=False).run()
    ys = atk.replay.y[:len(atk.replay)]
    assert ((ys > 0) & (ys < 1)).any()


def test_student_loss_decreases_on_a_fixed_batch(victim):
    torch.manual_seed(1)
    oracle = Oracle(victim)
    atk = DFME(oracle, student='resnet20', batch_size=16, lr_S=0.05)
    x = torch.randn(16, 3, 32, 32)
    answers = oracle(x)
    losses = [atk.student_step(x, answers) for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0]


def test_clamped_logs_are_finite_for_one_hot_answers():
    onehot = F.one_hot(torch.arange(10), 10).float()
    for t in (clamped_log(onehot), recovered_logits(onehot), kl_to_student(onehot, torch.randn(10, 10)),
              soft_cross_entropy(torch.randn(10, 10), onehot)):
        assert torch.isfinite(t).all()
    z = recovered_logits(onehot)
    assert z.argmax(1).tolist() == list(range(10))


def test_soft_attack_against_top1_defence_stays_finite(victim):
    oracle = TopOneOracle(victim, budget=2 * 56)
    atk = DFME(oracle, **COMMON, batch_size=8)
    log = AttackLoop(atk, 2 * 56, progress=False).run()
    assert oracle.count == 112
    assert all(np.isfinite(e['loss_S']) for e in log)
    assert all(np.isfinite(e['loss_G']) for e in log)
    assert all(torch.isfinite(p).all() for p in atk.student.parameters())


def test_oracle_refuses_an_attack_that_overspends(victim):
    oracle = Oracle(victim, budget=50)
    atk = DFME(oracle, **COMMON, batch_size=8)
    with pytest.raises(QueryBudgetExceeded):
        AttackLoop(atk, 56, progress=False).run()
    assert oracle.count <= 50


@pytest.mark.parametrize('attack', ['dfme', 'disguide', 'knockoff'])
def test_resume_never_double_counts(attack, victim, pool, tmp_path, monkeypatch, cifar_test_set):
    cls = ATTACKS[attack]
    cost = {'dfme': 56, 'disguide': 8, 'knockoff': 8}[attack]
    budget, n_iter = 6 * cost, 6
    calls = {'n': 0}
    original = cls.step

    def interrupted(self):
        calls['n'] += 1
        if calls['n'] == 5: raise KeyboardInterrupt  # after the checkpoint at iteration 4, before 5 finishes
        return original(self)

    monkeypatch.setattr(cls, 'step', interrupted)
    kw = dict(out=tmp_path, checkpoint_every=2 * cost, log_every=cost)
    with pytest.raises(KeyboardInterrupt):
        run(attack, victim, budget, pool, **kw)
    assert (tmp_path/'checkpoint.pth').exists()
    assert not (tmp_path/'result.json').exists()
    assert json.loads((tmp_path/'progress.json').read_text())['queries'] == 4 * cost
    monkeypatch.setattr(cls, 'step', original)
    calls['n'] = 0
    r = run(attack, victim, budget, pool, **kw)
    assert r['queries'] == budget
    assert r['iterations'] == n_iter
    assert r['queries_discarded_by_interruptions'] == 0
    assert [e['queries'] for e in r['log'] if e['phase'] == 'query'] == [cost * i for i in range(1, n_iter + 1)]
    assert not (tmp_path/'checkpoint.pth').exists()


def test_queries_lost_after_a_checkpoint_are_reported(victim, tmp_path, monkeypatch, cifar_test_set):
    original = DisGUIDE.step
    calls = {'n': 0}

    def interrupted(self):
        calls['n'] += 1
        if calls['n'] == 4: raise KeyboardInterrupt  # iteration 3 finished after the checkpoint at 2
        return original(self)

    monkeypatch.setattr(DisGUIDE, 'step', interrupted)
    kw = dict(out=tmp_path, checkpoint_every=16)
    with pytest.raises(KeyboardInterrupt):
        run('disguide', victim, 40, **kw)
    monkeypatch.setattr(DisGUIDE, 'step', original)
    r = run('disguide', victim, 40, **kw)
    assert r['queries'] == 40
    assert r['queries_discarded_by_interruptions'] == 8


def test_run_folder_guards(victim, tmp_path, cifar_test_set):
    run('disguide', victim, 16, out=tmp_path)
    with pytest.raises(InputError, match='--overwrite'):
        run('disguide', victim, 16, out=tmp_path)
    assert run('disguide', victim, 24, out=tmp_path, overwrite=True)['queries'] == 24
    (tmp_path/'result.json').unlink()
    torch.save({'config': {'attack': 'dfme'}}, tmp_path/'checkpoint.pth')
    with pytest.raises(InputError, match='different options'):
        run('disguide', victim, 16, out=tmp_path)


def test_bad_input(victim):
    with pytest.raises(InputError, match='dfme, maze, disguide, knockoff'):
        extract('jbda', victim, 100)
    with pytest.raises(InputError, match='none, top1, rounding'):
        extract('dfme', victim, 100, defence='dp')
    with pytest.raises(InputError, match='at least --budget 1920'):
        extract('maze', victim, 1919, progress=False)
    with pytest.raises(InputError, match='unknown hyperparameters'):
        extract('dfme', victim, 5000, hparams={'grad_n': 2})
    with pytest.raises(InputError, match="label_mode='hard'"):
        extract('maze', victim, 5000, label_mode='hard')
    with pytest.raises(InputError, match='drop --hard_label .* hard-label mode \\(disguide, knockoff\\)'):
        extract('dfme', victim, 5000, label_mode='hard')


def test_cli_bad_input(tmp_path):
    def cli(*args):
        err = io.StringIO()
        with contextlib.redirect_stderr(err): status = main(['attack', *args])
        return status, err.getvalue()
    status, err = cli('--attack', 'zoo', '--victim', str(tmp_path), '--budget', '100')
    assert status == 2
    assert 'dfme, maze, disguide, knockoff' in err
    status, err = cli('--defence', 'blur', '--victim', str(tmp_path), '--budget', '100')
    assert status == 2
    assert 'reverse_sigmoid' in err
    status, err = cli('--victim', str(tmp_path/'missing'), '--budget', '100')
    assert status == 2
    assert 'does not exist' in err
    status, err = cli('--victim', str(tmp_path))
    assert status == 2
    assert '--budget is missing' in err
    status, err = cli('--victim', str(tmp_path), '--budget', '10', '--defence', 'misguide')
    assert status == 2
    assert '--misguide' in err
    status, err = cli('--victim', str(tmp_path), '--budget', '10', '--hparams', '{bad')
    assert status == 2
    assert 'not JSON' in err


def test_cli_end_to_end(victim, tmp_path, cifar_test_set):
    from ong_misguide.train import TrainConfig
    run_dir = tmp_path/'victim'
    run_dir.mkdir()
    (run_dir/'result.json').write_text(json.dumps({'config': TrainConfig(arch='resnet20').to_dict()}))
    torch.save(victim.state_dict(), run_dir/'model.pth')
    out = io.StringIO()
    args = ['attack', '--attack', 'disguide', '--victim', str(run_dir), '--budget', '20', '--out', str(tmp_path/'a'),
            '--quick', '--hparams', json.dumps({'batch_size': 8, 'replay_size': 64}), '--test_subset', '50',
            '--defence', 'reverse_sigmoid', '--device', 'cpu']
    with contextlib.redirect_stdout(out): status = main(args)
    assert status == 0
    printed = json.loads(out.getvalue().strip().splitlines()[-1])
    assert printed['queries'] == 16
    assert printed['iterations'] == 2
    result = json.loads((tmp_path/'a'/'result.json').read_text())
    assert result['defence'] == 'reverse_sigmoid'
    assert result['hparams']['student'] == 'resnet20'
    err = io.StringIO()
    with contextlib.redirect_stderr(err): status = main(args)
    assert status == 2
    assert '--overwrite' in err.getvalue()
