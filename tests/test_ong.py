"""ONG in process: the NMF scores, rank parsing, the registered methods' options and bad input."""
import pytest
import torch
import torch.nn as nn
from fastai.learner import Learner

from ong_misguide.core import InputError
from ong_misguide.data import cifar_dls, load_lossless_cifar10
from ong_misguide.masking import get_masks, prunable_layers, sparsity_report
from ong_misguide.models import create_cifar_model
from ong_misguide.nmf import factorize_layers
from ong_misguide.ong import (DEFAULT_RANK, ONG, NMFScore, layer_rank, magnitude_method, nmf_score, ong_method,
                              parse_rank, random_method)
from ong_misguide.train import METHODS, TrainConfig

R20 = 268336


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Train on one thread: these models are small, and on a busy machine a second OpenMP thread mostly spin-waits."
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='module')
def dls(data_root):
    return cifar_dls(arrays=load_lossless_cifar10(data_root), subset=60, test_subset=10, bs=8, seed=0)


def test_methods_registered():
    for name in ('ong', 'magnitude', 'random'):
        assert name in METHODS


@pytest.mark.parametrize('text, value', [('4', 4), ('0.25', 0.25), (' 2 ', 2), ('1.0', 1.0), (3, 3), (0.5, 0.5)])
def test_parse_rank_valid(text, value):
    parsed = parse_rank(text)
    assert parsed == value
    assert type(parsed) is type(value)


@pytest.mark.parametrize('bad, message', [(0, 'below 1'), ('0', 'below 1'), (-2, 'below 1'), (1.5, 'must lie in'),
                                          ('x', 'not a number'), (float('inf'), 'invalid'), (True, 'invalid')])
def test_parse_rank_invalid(bad, message):
    with pytest.raises(InputError, match=message): parse_rank(bad)


def test_layer_rank_clips_and_scales():
    assert layer_rank(8, 10, 64) == 8
    assert layer_rank(100, 10, 64) == 10
    assert layer_rank(0.25, 64, 576) == 16
    assert layer_rank(0.01, 16, 27) == 1


def test_scores_are_reconstruction_residual_geometric():
    M = torch.rand(8, 12)
    (W, H), = factorize_layers({'m': M}, 2).factors.values()
    R = W @ H
    assert torch.allclose(nmf_score(M, W, H, 'reconstruction'), R)
    assert torch.allclose(nmf_score(M, W, H, 'residual'), (M - R).abs())
    assert torch.allclose(nmf_score(M, W, H, 'geometric'), (M * R).sqrt())


def test_nmf_scorer_shapes_and_ranks():
    model = create_cifar_model('resnet20')
    layers = prunable_layers(model)
    scorer = NMFScore(rank=0.25, max_iter=20)
    scores = scorer(layers)
    for name, m in layers.items():
        assert scores[name].shape == m.weight.shape
        assert (scores[name] >= 0).all()
    assert scorer.ranks['conv1'] == 4
    assert scorer.ranks['layers.2.0.conv2'] == 16
    assert set(scorer.errors) == set(layers)


def test_ong_prunes_once_and_reports(dls):
    learn = Learner(dls, create_cifar_model('resnet20'), loss_func=nn.CrossEntropyLoss(),
                    cbs=ONG(sparsity=0.8, max_iter=20))
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    first = {k: v.clone() for k, v in get_masks(learn.model).items()}
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    for k, v in get_masks(learn.model).items(): assert torch.equal(first[k], v)
    assert sparsity_report(learn.model)['nonzero'] == round(0.2 * R20)
    rep = learn.ong.report()
    for key in ('sparsity', 'layer_sparsity', 'mask_seconds', 'nmf_rank', 'nmf_relative_error', 'floor_changed'):
        assert key in rep
    assert abs(rep['sparsity'] - 0.8) < 1e-5
    assert learn.ong.last_pruned == 0


def test_scores_give_different_masks():
    torch.manual_seed(0)
    layers = prunable_layers(create_cifar_model('resnet20'))
    from ong_misguide.masking import allocate
    masks = {s: allocate(NMFScore(1, s, max_iter=20)(layers), 0.9).masks['layers.1.0.conv2'] for s in
             ('reconstruction', 'residual', 'geometric')}
    assert not torch.equal(masks['reconstruction'], masks['residual'])
    assert not torch.equal(masks['reconstruction'], masks['geometric'])


def test_method_options():
    cfg = lambda method, **o: TrainConfig(method=method, method_options=o)
    ong = ong_method(cfg('ong', sparsity=0.7, rank='3', score='residual', allocation='erk'))[0]
    assert (ong.scorer.rank, ong.scorer.score, ong.allocation) == (3, 'residual', 'erk')
    assert ong_method(cfg('ong', sparsity=0.7))[0].scorer.rank == DEFAULT_RANK
    assert type(random_method(cfg('random', sparsity=0.7))[0].scorer).__name__ == 'RandomScore'
    with pytest.raises(InputError, match="Options \\['rank'\\] do not apply"):
        magnitude_method(cfg('magnitude', sparsity=0.5, rank=2))
    with pytest.raises(InputError, match='needs a target sparsity'): random_method(cfg('random'))
    with pytest.raises(InputError, match='global, uniform, erk'): ong_method(cfg('ong', sparsity=0.5, allocation='lamp'))
    with pytest.raises(InputError, match='sparsity=-0.5 is invalid'): ong_method(cfg('ong', sparsity=-0.5))
    with pytest.raises(InputError, match='not a number'): ong_method(cfg('ong', sparsity=0.5, rank='high'))


def test_bad_weights_and_models(dls):
    bad = create_cifar_model('resnet20')
    with torch.no_grad(): bad.layers[2][1].conv1.weight[3, 0, 1, 1] = float('inf')
    learn = Learner(dls, bad, loss_func=nn.CrossEntropyLoss(), cbs=ONG(sparsity=0.5))
    with pytest.raises(InputError, match="'layers.2.1.conv1' has NaN or infinite weights"): learn.fit(1)
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.BatchNorm1d(3072)), loss_func=nn.CrossEntropyLoss(),
                    cbs=ONG())
    with pytest.raises(InputError, match='no prunable layers'): learn.fit(1)
    learn = Learner(dls, create_cifar_model('resnet20'), loss_func=nn.CrossEntropyLoss(), cbs=ONG(exclude=['head']))
    with pytest.raises(InputError, match="'head' names no module"): learn.fit(1)
    with pytest.raises(InputError, match='sparsity=1 is invalid'): ONG(sparsity=1)
    with pytest.raises(InputError, match='below 1'): ONG(rank=0)
