"""MisGUIDE as a user runs it: valid and deterministic responses, budgets, an untouched victim, saving, bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ong_misguide.core import InputError
from ong_misguide.detector import DetectorConfig, OODDetector
from ong_misguide.misguide import (STRATEGIES, BudgetExceeded, MisGUIDE, content_uniforms, load_misguide,
                                   misleading_response)
from ong_misguide.models import create_cifar_model

TINY = dict(depth=1, embed_dim=32, num_heads=2)


@pytest.fixture(scope='module')
def victim():
    torch.manual_seed(0)
    return create_cifar_model('resnet20')


@pytest.fixture(scope='module')
def detector():
    torch.manual_seed(1)
    return OODDetector(DetectorConfig(**TINY))


@pytest.fixture(scope='module')
def images():
    return torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def make_api(victim, detector, **kwargs):
    kwargs.setdefault('threshold', 0.0)       # every query is flagged
    kwargs.setdefault('secret_seed', 7)
    return MisGUIDE(victim, detector, **kwargs)


def assert_valid(probs, n, c=10):
    assert probs.shape == (n, c)
    assert probs.dtype == torch.float32
    assert torch.isfinite(probs).all()
    assert (probs >= 0).all()
    assert torch.allclose(probs.sum(1), torch.ones(n), atol=1e-5)


@pytest.mark.parametrize('strategy', STRATEGIES)
def test_misled_answers_are_valid(victim, detector, images, strategy):
    api = make_api(victim, detector, strategy=strategy, p_mislead=1.0)
    answer = api.query(images)
    assert_valid(answer, len(images))
    assert api.stats['total']['misled'] == len(images)
    honest = api._victim_probs(images)
    assert (answer.argmax(1) != honest.argmax(1)).all()


def test_reverse_makes_least_likely_class_win(victim, detector, images):
    api = make_api(victim, detector, strategy='reverse')
    honest = api._victim_probs(images)
    assert torch.equal(api.query(images).argmax(1), honest.argmin(1))


def test_unflagged_answers_are_honest(victim, detector, images):
    api = make_api(victim, detector, threshold=1.0)
    assert torch.equal(api.query(images), api._victim_probs(images))
    assert api.stats['total'] == {'served': len(images), 'flagged': 0, 'misled': 0}


def test_p_mislead_zero_never_misleads(victim, detector, images):
    api = make_api(victim, detector, p_mislead=0.0)
    assert torch.equal(api.query(images), api._victim_probs(images))
    assert api.stats['total']['flagged'] == len(images)


def test_same_query_same_answer(victim, detector, images):
    api = make_api(victim, detector, p_mislead=0.5, strategy='random_class')
    first = api.query(images, client_id='a')
    assert torch.equal(api.query(images, client_id='b'), first)
    perm = torch.randperm(len(images))
    assert torch.equal(api.query(images[perm])[torch.argsort(perm)], first)
    assert torch.equal(api.query(images.double().numpy()), first)
    # In a batch of another size the victim's float arithmetic may differ in the last bits, as it does without the
    # defence, but the decision and the misleading class are the same.
    alone = api.query(images[5:6])
    assert torch.allclose(alone, first[5:6], atol=1e-6)
    assert torch.equal(alone.argmax(1), first[5:6].argmax(1))


def test_different_queries_different_answers(victim, detector, images):
    api = make_api(victim, detector, p_mislead=0.5, strategy='random_class')
    answer = api.query(images)
    honest = api._victim_probs(images)
    misled = (answer != honest).any(1)
    # With p = 0.5 over 40 images, both outcomes occur, and misled images point at several wrong classes.
    assert 0 < misled.sum() < len(images)
    assert len(set(answer[misled].argmax(1).tolist())) > 1


def test_secret_seed_changes_decisions(victim, detector, images):
    a = make_api(victim, detector, p_mislead=0.5, secret_seed=1).query(images)
    b = make_api(victim, detector, p_mislead=0.5, secret_seed=2).query(images)
    assert not torch.equal(a, b)


def test_tiny_perturbation_same_decision(victim, detector, images):
    api = make_api(victim, detector, p_mislead=0.5, strategy='random_class')
    first = api.query(images)
    nudged = (images + 1e-6 * torch.randn_like(images)).clamp(0, 1)
    again = api.query(nudged)
    assert torch.equal(again.argmax(1), first.argmax(1))
    assert torch.allclose(again, first, atol=1e-4)


def test_content_uniforms_ignore_negative_zero():
    x = torch.zeros(1, 3, 32, 32)
    from ong_misguide.misguide import check_images
    assert torch.equal(content_uniforms(check_images(-x), 5), content_uniforms(check_images(x), 5))


def test_hard_label_answers_top1(victim, detector, images):
    soft = make_api(victim, detector, p_mislead=0.5).query(images)
    hard = make_api(victim, detector, p_mislead=0.5, hard_label=True).query(images)
    assert hard.dtype == torch.int64
    assert hard.shape == (len(images),)
    assert torch.equal(hard, soft.argmax(1))


def test_chunks_give_same_answers(victim, detector, images):
    whole = make_api(victim, detector, p_mislead=0.5).query(images)
    chunked = make_api(victim, detector, p_mislead=0.5, chunk_size=7).query(images)
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_empty_batch_returns_empty_answer(victim, detector):
    api = make_api(victim, detector, budget=3)
    out = api.query(torch.empty(0, 3, 32, 32), client_id='c')
    assert out.shape == (0, 10)
    assert out.dtype == torch.float32
    assert api.remaining('c') == 3
    hard = make_api(victim, detector, hard_label=True).query(np.empty((0, 3, 32, 32), np.float32))
    assert hard.shape == (0,)


def test_budget_counts_exactly(victim, detector, images):
    api = make_api(victim, detector, budget=10)
    api.query(images[:7], client_id='eve')
    with pytest.raises(BudgetExceeded, match='at most 3 more') as info:
        api.query(images[:4], client_id='eve')
    assert isinstance(info.value, InputError)
    assert api.stats['clients']['eve']['served'] == 7
    api.query(images[:3], client_id='eve')
    assert api.remaining('eve') == 0
    with pytest.raises(BudgetExceeded):
        api.query(images[:1], client_id='eve')
    assert api.stats['clients']['eve']['served'] == 10
    # Other clients have their own budget.
    api.query(images[:10], client_id='bob')
    assert api.stats['total']['served'] == 20


def test_stats_per_client(victim, detector, images):
    api = make_api(victim, detector, p_mislead=0.5)
    api.query(images[:10], client_id='a')
    api.query(images[10:25], client_id=None)
    stats = api.stats
    assert stats['clients']['a']['served'] == 10
    assert stats['clients'][None]['served'] == 15
    assert stats['total']['flagged'] == 25
    assert 0 < stats['total']['misled'] < 25
    stats['clients']['a']['served'] = 0      # a copy: the counters stay
    assert api.stats['clients']['a']['served'] == 10


@pytest.mark.parametrize('was_training', [True, False])
def test_victim_unchanged_by_queries(detector, images, was_training):
    model = create_cifar_model('resnet20')
    model.train(was_training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    api = make_api(model, detector, p_mislead=0.5)
    api.query(images)
    api.predict(images[0])
    assert model.training == was_training
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k
    assert all(p.grad is None for p in model.parameters())


def test_learner_victim_unchanged(detector, images, data_root):
    from ong_misguide.data import cifar_dls, load_lossless_cifar10
    from ong_misguide.train import TrainConfig, make_learner
    c = load_lossless_cifar10(data_root)
    arrays = {'x_train': c['x_train'][:200], 'y_train': c['y_train'][:200], 'x_test': c['x_test'][:50],
              'y_test': c['y_test'][:50], 'classes': c['classes']}
    learn = make_learner(TrainConfig(arch='resnet20'), cifar_dls('cifar10', bs=32, arrays=arrays))
    learn.model.train()
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    api = make_api(learn, detector)
    assert api.vocab[0] == 'airplane'
    api.query(images)
    assert learn.model.training
    for k, v in learn.model.state_dict().items():
        assert torch.equal(before[k], v), k


def test_predict_like_fastai(victim, detector, images):
    api = make_api(victim, detector, p_mislead=0.5, vocab=[f'c{i}' for i in range(10)])
    name, idx, probs = api.predict(images[3])
    assert torch.equal(probs, api.query(images[3:4])[0])
    assert name == f'c{int(idx)}'
    assert int(idx) == int(probs.argmax())
    uint8 = (images[3].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert api.predict(uint8)[2].shape == (10,)


def test_save_load_round_trip(victim, detector, images, tmp_path):
    api = make_api(victim, detector, p_mislead=0.5, strategy='mixture', alpha=0.7, budget=100)
    path = api.save(tmp_path/'defended.pth')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['defended.pth']   # no temporary files left
    loaded = load_misguide(path)
    assert loaded.settings() == api.settings()
    assert loaded.arch == 'resnet20'
    assert torch.equal(loaded.query(images), api.query(images))
    assert load_misguide(tmp_path).budget == 100


def test_load_rejects_other_files(tmp_path):
    other = tmp_path/'other.pth'
    torch.save({'model': torch.zeros(1)}, other)
    with pytest.raises(InputError, match='not a defended model'):
        load_misguide(other)
    with pytest.raises(InputError, match='not found'):
        load_misguide(tmp_path/'missing.pth')


def test_save_rejects_unknown_architecture(detector, tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    api = make_api(net, detector)
    with pytest.raises(InputError, match='create_cifar_model'):
        api.save(tmp_path/'x.pth')


BAD_IMAGES = {
    'uint8': (lambda x: (x * 255).to(torch.uint8), 'divide uint8 images by 255'),
    'int64': (lambda x: x.long(), 'torch.int64'),
    'bool': (lambda x: x > 0.5, 'torch.bool'),
    'one image': (lambda x: x[0], 'x[None]'),
    'channels last': (lambda x: x.permute(0, 2, 3, 1), 'permute'),
    'wrong size': (lambda x: torch.nn.functional.interpolate(x, size=16), '(40, 3, 16, 16)'),
    'rank 5': (lambda x: x[None], 'N x 3 x 32 x 32'),
    'nan': (lambda x: torch.where(torch.arange(40)[:, None, None, None] == 3, float('nan'), x), 'NaN or infinite'),
    'inf': (lambda x: torch.where(torch.arange(40)[:, None, None, None] == 3, float('inf'), x), 'NaN or infinite'),
    'normalised': (lambda x: (x - 0.5) / 0.25, 'outside [0, 1]'),
    '0-255 floats': (lambda x: x * 255, 'outside [0, 1]'),
    'list': (lambda x: x.tolist(), 'type list'),
}


@pytest.mark.parametrize('case', sorted(BAD_IMAGES))
def test_bad_images_rejected(victim, detector, images, case):
    api = make_api(victim, detector, budget=100)
    change, message = BAD_IMAGES[case]
    with pytest.raises(InputError, match=message.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[')):
        api.query(change(images), client_id='x')
    assert api.remaining('x') == 100


def test_tiny_overshoot_is_clipped(victim, detector, images):
    api = make_api(victim, detector)
    assert api.query(images + 5e-5).shape == (40, 10)


@pytest.mark.parametrize('kwargs, message', [
    ({'threshold': 1.5}, 'threshold=1.5'),
    ({'threshold': -0.1}, 'threshold=-0.1'),
    ({'threshold': float('nan')}, 'threshold=nan'),
    ({'p_mislead': 1.01}, 'p_mislead=1.01'),
    ({'p_mislead': -0.5}, 'p_mislead=-0.5'),
    ({'alpha': 0.0}, 'alpha=0.0'),
    ({'strategy': 'swap'}, 'random_class, reverse, mixture'),
    ({'budget': 0}, 'budget=0'),
    ({'chunk_size': 0}, 'chunk_size=0'),
    ({'vocab': ['a', 'b']}, 'vocab has 2 names'),
])
def test_bad_settings_rejected(victim, detector, kwargs, message):
    with pytest.raises(InputError, match=message.replace('(', r'\(')):
        make_api(victim, detector, **kwargs)


def test_uncalibrated_detector_needs_threshold(victim, detector):
    with pytest.raises(InputError, match='calibrate_threshold'):
        MisGUIDE(victim, detector)


def test_detector_for_other_input_size_rejected(victim):
    big = OODDetector(DetectorConfig(img_size=64, patch_size=8, **TINY))
    with pytest.raises(InputError, match='64x64'):
        make_api(victim, big)


def test_non_model_rejected(detector):
    with pytest.raises(InputError, match='fastai Learner'):
        MisGUIDE('model.pth', detector, threshold=0.5)


def test_misleading_response_keeps_values_for_permutations():
    probs = torch.softmax(torch.randn(50, 10), 1)
    u = torch.rand(50, dtype=torch.float64)
    for strategy in ('random_class', 'reverse'):
        out = misleading_response(probs, u, strategy)
        assert torch.equal(out.sort(1).values, probs.sort(1).values), strategy


def test_normalized_input_space_same_answers(victim, detector, images):
    from ong_misguide.data import CIFAR_STATS
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR_STATS['cifar10'])
    pixels_api = make_api(victim, detector, p_mislead=0.5)
    normalized_api = make_api(victim, detector, p_mislead=0.5, input_space='normalized')
    expected = pixels_api.query(images)
    got = normalized_api.query((images - mean) / std)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    with pytest.raises(InputError, match='normalised pixel range'):
        normalized_api.query(images * 10)


def test_oracle_can_wrap_defended_model(victim, detector, images):
    oracle = pytest.importorskip('ong_misguide.oracle')
    from ong_misguide.data import CIFAR_STATS
    api = make_api(victim, detector, p_mislead=0.5, input_space='normalized')
    answers = oracle.Oracle(api, budget=100, input_space='pixels').query(images)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR_STATS['cifar10'])
    assert torch.allclose(answers, api.query((images - mean) / std), atol=1e-5)


CLI = [sys.executable, '-m', 'ong_misguide.cli']


def run_cli(*args):
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore'}
    return subprocess.run(CLI + list(args), capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.parametrize('command, option', [('fit-detector', '--p_mislead'), ('evaluate', '--defended')])
def test_cli_help(command, option, capsys):
    from ong_misguide.cli import main
    with pytest.raises(SystemExit) as info:
        main(['defend', command, '--help'])
    assert info.value.code == 0
    assert option in capsys.readouterr().out


def test_cli_fit_detector_needs_run(tmp_path, capsys):
    from ong_misguide.cli import main
    assert main(['defend', 'fit-detector', '--out', str(tmp_path/'d')]) == 2
    assert '--run' in capsys.readouterr().err


@pytest.mark.parametrize('args, message', [
    (['--p_mislead', '2'], 'p_mislead=2'),
    (['--alpha', '0'], 'alpha=0'),
    (['--strategy', 'nosuch'], "strategy='nosuch'"),
    (['--mode', 'nosuch'], "mode='nosuch'"),
    (['--quick', '--pretrained'], '--pretrained'),
])
def test_cli_fit_detector_checks_options_first(tmp_path, capsys, args, message):
    from ong_misguide.cli import main
    # The victim folder does not exist: each bad option must be reported before the victim is loaded.
    assert main(['defend', 'fit-detector', '--run', str(tmp_path/'missing'), '--out', str(tmp_path/'d'), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_evaluate_missing_model(tmp_path, capsys):
    from ong_misguide.cli import main
    assert main(['defend', 'evaluate', '--defended', str(tmp_path/'none.pth')]) == 2
    assert 'not found' in capsys.readouterr().err


@pytest.mark.slow
def test_cli_fit_and_evaluate(tmp_path, data_root):
    run = tmp_path/'victim'
    done = run_cli('train', '--arch', 'resnet20', '--epochs', '1', '--bs', '64', '--subset', '640',
                   '--test_subset', '200', '--precision', 'bf16', '--data', str(data_root), '--out', str(run))
    assert done.returncode == 0, done.stderr
    out = tmp_path/'defence'
    done = run_cli('defend', 'fit-detector', '--run', str(run), '--out', str(out), '--quick', '--n_id', '512',
                   '--n_ood', '128', '--n_cal', '200', '--epochs', '1', '--data', str(data_root))
    assert done.returncode == 0, done.stderr
    fit = json.loads((out/'fit.json').read_text())
    assert 0 <= fit['threshold'] <= 1
    assert set(fit['ood_images']) >= {'generator', 'generator_trained', 'noise', 'augmented', 'bsds500'}
    again = run_cli('defend', 'fit-detector', '--run', str(run), '--out', str(out), '--quick')
    assert again.returncode == 2
    assert '--overwrite' in again.stderr
    done = run_cli('defend', 'evaluate', '--defended', str(out), '--test_subset', '200', '--n_ood', '100',
                   '--generator_steps', '2', '--data', str(data_root))
    assert done.returncode == 0, done.stderr
    result = json.loads((out/'evaluation.json').read_text())
    assert result['test_images'] == 200
    assert 0 <= result['fpr_test'] <= 1
    assert result['undefended_accuracy'] - result['defended_accuracy'] <= result['fpr_test'] + 1e-9
    for name in ('generator', 'generator_trained', 'noise', 'augmented', 'bsds500'):
        assert 0 <= result['sources'][name]['auroc'] <= 1
