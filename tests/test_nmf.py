"""Tests of ong_misguide.nmf against scikit-learn's coordinate-descent NMF, and of its guards."""
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from ong_misguide.core import InputError
from ong_misguide.models import create_cifar_model
from ong_misguide.nmf import factorize_layers, nmf, weight_magnitudes


@pytest.fixture(scope='module')
def mats():
    "Weight magnitudes of a seeded random ResNet20, plus a random non-negative matrix."
    torch.manual_seed(0)
    m = weight_magnitudes(create_cifar_model('resnet20'))
    m['random'] = torch.rand(100, 300, generator=torch.Generator().manual_seed(1))
    return m


def sk_error(M, k, solver='cd', init='nndsvda'):
    X = M.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConvergenceWarning)
        sk = NMF(k, solver=solver, init=init, max_iter=200, random_state=0)
        W = sk.fit_transform(X)
    return float(np.linalg.norm(X - W @ sk.components_) / np.linalg.norm(X))


SEL = ['conv1', 'layers.0.1.conv2', 'layers.1.0.conv1', 'layers.1.2.conv2', 'layers.2.0.conv2', 'fc', 'random']


@pytest.mark.parametrize('init', ['nndsvda', 'nndsvd', 'random'])
def test_error_within_1pct_of_sklearn(mats, init):
    for name in SEL:
        M = mats[name]
        k = min(8, *M.shape)
        ours = float(nmf(M, k, init=init, name=name).error)
        assert ours <= 1.01 * sk_error(M, k, init=init), name


def test_mu_within_1pct_of_sklearn_mu(mats):
    for name in ('layers.1.0.conv1', 'fc', 'random'):
        ours = float(nmf(mats[name], 8, solver='mu').error)
        assert ours <= 1.01 * sk_error(mats[name], 8, solver='mu'), name


def test_same_factors_as_sklearn_cd():
    X = torch.rand(12, 30, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConvergenceWarning)
        sk = NMF(3, solver='cd', init='nndsvda', max_iter=50, tol=0)
        W = sk.fit_transform(X.numpy())
    r = nmf(X, 3, max_iter=50, tol=0)
    np.testing.assert_allclose(r.W.numpy(), W, atol=1e-4)
    np.testing.assert_allclose(r.H.numpy(), sk.components_, atol=1e-4)


def test_exact_low_rank_recovered():
    g = torch.Generator().manual_seed(0)
    W0, H0 = torch.rand(30, 3, generator=g), torch.rand(3, 20, generator=g)
    W0[torch.rand(30, 3, generator=g) < 0.5] = 0
    H0[torch.rand(3, 20, generator=g) < 0.5] = 0
    M = W0 @ H0
    r = nmf(M, 3, max_iter=1000, tol=0)
    assert float(r.error) < 1e-5
    assert float((M - r.W @ r.H).norm() / M.norm()) < 1e-5


def test_error_is_relative_frobenius(mats):
    M = mats['layers.1.0.conv2']
    r = nmf(M, 5)
    assert math.isclose(float(r.error), float((M - r.W @ r.H).norm() / M.norm()), rel_tol=1e-4)


def test_batched_equals_unbatched(mats):
    names = [f'layers.1.{i}.conv2' for i in range(3)]
    sub = {n: mats[n] for n in names}
    for init in ('nndsvda', 'random'):
        res = factorize_layers(sub, 6, init=init)
        for n in names:
            alone = nmf(mats[n], 6, init=init)
            W, H = res.factors[n]
            torch.testing.assert_close(W, alone.W, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(H, alone.H, rtol=1e-4, atol=1e-5)
            assert math.isclose(res.errors[n], float(alone.error), rel_tol=1e-5)
            assert res.n_iter[n] == int(alone.n_iter)
    batch = nmf(torch.stack(list(sub.values())), 6)
    torch.testing.assert_close(batch.W[2], nmf(mats[names[2]], 6).W, rtol=1e-4, atol=1e-5)


def test_fraction_rank_per_shape(mats):
    sub = {n: mats[n] for n in ('fc', 'conv1', 'layers.2.0.conv1')}
    res = factorize_layers(sub, 0.5)
    assert list(res.factors) == list(sub)
    ks = {n: W.shape[1] for n, (W, H) in res.factors.items()}
    assert ks == {'fc': 5, 'conv1': 8, 'layers.2.0.conv1': 32}
    for n, (W, H) in res.factors.items():
        assert W.shape == (sub[n].shape[0], ks[n])
        assert H.shape == (ks[n], sub[n].shape[1])
        assert (W >= 0).all()
        assert (H >= 0).all()


def test_rank_clip_warning_names_layer(mats):
    with pytest.warns(UserWarning, match=r"rank=12 exceeds min\(m, n\)=10 of 'fc'"):
        res = factorize_layers({'fc': mats['fc'], 'conv1': mats['conv1']}, 12)
    assert res.factors['fc'][0].shape == (10, 10)
    assert res.factors['conv1'][0].shape == (16, 12)


@pytest.mark.parametrize('value,match', [
    (-1.0, "'layers.0.0.conv1' has 1 negative entries.*weight.abs"),
    (float('nan'), "'layers.0.0.conv1' has 1 NaN entries"),
    (float('inf'), "'layers.0.0.conv1' has 1 infinite entries"),
    (-float('inf'), "'layers.0.0.conv1' has 1 infinite entries"),
])
def test_bad_values_raise(mats, value, match):
    M = mats['layers.0.0.conv1'].clone()
    M[3, 5] = value
    with pytest.raises(InputError, match=match):
        factorize_layers({'conv1': mats['conv1'], 'layers.0.0.conv1': M}, 4)
    with pytest.raises(InputError, match=match):
        nmf(M, 4, name='layers.0.0.conv1')


@pytest.mark.parametrize('rank,match', [
    (0, 'rank=0'), (-2, 'rank=-2'), (0.0, 'fraction of min'), (-0.3, 'fraction of min'), (1.5, 'fraction of min'),
    (float('nan'), 'fraction of min'), (True, 'rank=True'), ('8', "rank='8'"), (None, 'rank=None'),
])
def test_bad_rank_raises(mats, rank, match):
    with pytest.raises(InputError, match=match):
        factorize_layers({'fc': mats['fc']}, rank)
    with pytest.raises(InputError, match=match):
        nmf(mats['fc'], rank)


def test_bad_shapes_raise():
    with pytest.raises(InputError, match=r"'w' has shape \(5,\) \(1-D\): pass a 2-D matrix"):
        factorize_layers({'w': torch.ones(5)}, 2)
    with pytest.raises(InputError, match=r"'w' has shape \(2, 3, 4\) \(3-D\).*reshape"):
        factorize_layers({'w': torch.ones(2, 3, 4)}, 2)
    with pytest.raises(InputError, match='pass a 2-D matrix \\(m x n\\) or a 3-D batch'):
        nmf(torch.ones(2, 3, 4, 5), 2)
    with pytest.raises(InputError, match="'w' is empty"):
        factorize_layers({'w': torch.ones(0, 4)}, 2)
    with pytest.raises(InputError, match='is empty'):
        nmf(torch.ones(3, 0), 1)
    with pytest.raises(InputError, match='pass a non-empty dict'):
        factorize_layers({}, 2)


def test_bad_options_raise(mats):
    M = mats['fc']
    for kw, match in ((dict(init='svd'), 'Valid values: nndsvda, nndsvd, random'), (dict(solver='als'), 'hals, mu'),
                      (dict(max_iter=0), 'max_iter=0'), (dict(tol=-1e-3), 'tol=-0.001'),
                      (dict(check_every=0), 'check_every=0'), (dict(seed=1.5), 'seed=1.5'),
                      (dict(target_error=-1), 'target_error=-1')):
        with pytest.raises(InputError, match=match):
            nmf(M, 2, **kw)


def test_deterministic_for_seed(mats):
    M = mats['layers.1.0.conv2']
    for init in ('nndsvda', 'nndsvd', 'random'):
        a, b = nmf(M, 8, init=init, seed=7), nmf(M, 8, init=init, seed=7)
        assert torch.equal(a.W, b.W)
        assert torch.equal(a.H, b.H)
        assert torch.equal(a.error, b.error)
    assert not torch.equal(nmf(M, 8, init='random', seed=1).W, nmf(M, 8, init='random', seed=2).W)


def test_float32_output(mats):
    M = mats['layers.1.0.conv1'].double()
    for solver in ('hals', 'mu'):
        r = nmf(M, 4, solver=solver)
        assert r.W.dtype == torch.float32
        assert r.H.dtype == torch.float32
        assert r.W.device == M.device
    W, H = factorize_layers({'a': M}, 4).factors['a']
    assert W.dtype == torch.float32
    assert H.dtype == torch.float32


def test_stops_early_and_at_target(mats):
    M = mats['layers.2.0.conv2']
    full = nmf(M, 8, tol=0)
    assert int(full.n_iter) == 200
    loose = nmf(M, 8, tol=1e-2)
    assert int(loose.n_iter) < 200
    target = 1.01 * float(full.error)
    hit = nmf(M, 8, tol=0, target_error=target, check_every=1)
    assert float(hit.error) <= target
    assert int(hit.n_iter) < 200


def test_zero_matrix():
    r = nmf(torch.zeros(6, 4), 2)
    assert float(r.error) == 0
    assert not r.W.isnan().any()
    assert not r.H.isnan().any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu(mats):
    M = mats['layers.1.0.conv2']
    cpu, gpu = nmf(M, 8), nmf(M.cuda(), 8)
    assert gpu.W.device.type == 'cuda'
    assert gpu.W.dtype == torch.float32
    assert abs(float(gpu.error) - float(cpu.error)) <= 1e-3 * float(cpu.error)
