"""The black-box oracle: exact query counting, budget refusal, hard labels, no gradient leaks, defences."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ong_misguide.core import InputError
from ong_misguide.models import create_cifar_model
from ong_misguide.oracle import (DEFENCES, INPUT_SPACES, AdaptiveMisinformationOracle, MisGUIDEOracle, Oracle,
                                 QueryBudgetExceeded, ReverseSigmoidOracle, RoundingOracle, TopOneOracle,
                                 from_normalized, images_to_space, make_oracle, to_normalized)


@pytest.fixture(scope='module')
def net():
    torch.manual_seed(0)
    return create_cifar_model('resnet20')


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_exact_count_and_budget_refusal(net):
    oracle = Oracle(net, budget=50)
    for n in (10, 20, 15):
        oracle(torch.randn(n, 3, 32, 32))
    assert oracle.count == 45
    assert oracle.remaining == 5
    with pytest.raises(QueryBudgetExceeded) as e:
        oracle(torch.randn(6, 3, 32, 32))
    assert e.value.requested == 6
    assert e.value.used == 45
    assert e.value.budget == 50
    assert oracle.count == 45  # a refused query counts nothing
    oracle(torch.randn(5, 3, 32, 32))
    assert oracle.count == 50
    with pytest.raises(QueryBudgetExceeded):
        oracle(torch.randn(1, 3, 32, 32))


def test_unlimited_and_state_dict(net):
    oracle = Oracle(net)
    oracle(torch.randn(7, 3, 32, 32))
    assert oracle.remaining is None
    assert oracle.count == 7
    other = Oracle(net, budget=10)
    other.load_state_dict(oracle.state_dict())
    assert other.count == 7
    assert other.remaining == 3


def test_probabilities_and_hard_labels(net):
    x = torch.randn(12, 3, 32, 32)
    with torch.no_grad():
        ref = net.eval()(x).softmax(1)
    net.train()
    p = Oracle(net, channels_last=False)(x)
    assert p.dtype == torch.float32
    assert p.shape == (12, 10)
    torch.testing.assert_close(p, ref, atol=1e-5, rtol=1e-4)
    onehot = Oracle(net, hard_label=True)(x)
    assert onehot.dtype == torch.float32
    assert torch.equal(onehot, F.one_hot(ref.argmax(1), 10).float())
    idx = Oracle(net, hard_label=True, label_format='index')(x)
    assert idx.dtype == torch.int64
    assert torch.equal(idx, ref.argmax(1))


def test_no_gradients_leak_and_victim_unchanged(net):
    before = snapshot(net)
    was_training = net.training
    oracle = Oracle(net, budget=1000)
    x = torch.randn(16, 3, 32, 32, requires_grad=True)
    out = oracle(x)
    assert not out.requires_grad
    assert out.grad_fn is None
    # Even an attacker that tries to backpropagate through the answer gets nothing from the victim.
    with pytest.raises(RuntimeError):
        out.sum().backward()
    assert x.grad is None
    assert all(p.grad is None for p in net.parameters())
    assert all(not p.requires_grad for p in oracle.backend.model.parameters())
    assert not oracle.backend.model.training
    for _ in range(3):
        oracle(torch.randn(32, 3, 32, 32) * 5)
    after = snapshot(net)
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert net.training == was_training


def test_victim_kinds(net, tmp_path):
    x = torch.randn(4, 3, 32, 32)
    ref = Oracle(net)(x)
    # A run folder as written by `ong-misguide train`.
    from ong_misguide.train import TrainConfig
    run = tmp_path/'run'
    run.mkdir()
    (run/'result.json').write_text(json.dumps({'config': TrainConfig(arch='resnet20').to_dict()}))
    torch.save(net.state_dict(), run/'model.pth')
    torch.testing.assert_close(Oracle(str(run))(x), ref)

    # A fastai Learner.
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from torch.utils.data import DataLoader, TensorDataset
    ds = TensorDataset(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))
    learn = Learner(DataLoaders(DataLoader(ds, 4), DataLoader(ds, 4)), net, loss_func=nn.CrossEntropyLoss())
    torch.testing.assert_close(Oracle(learn)(x), ref)

    # Any object with a query method; it receives normalised images.
    class API:
        seen = None
        def query(self, xs, client_id=None):
            API.seen = (xs.clone(), client_id)
            return torch.full((len(xs), 10), 0.1)
    o = Oracle(API(), input_space='pixels', budget=8)
    px = torch.rand(4, 3, 32, 32)
    out = o.query(px, client_id='alice')
    assert torch.allclose(out, torch.full((4, 10), 0.1))
    assert o.count == 4
    torch.testing.assert_close(API.seen[0], to_normalized(px, 'pixels'))
    assert API.seen[1] == 'alice'


def test_bad_input(net, tmp_path):
    with pytest.raises(InputError, match='does not exist'):
        Oracle(str(tmp_path/'missing'))
    with pytest.raises(InputError, match='query\\(x\\) method'):
        Oracle(42)
    with pytest.raises(InputError, match='positive integer'):
        Oracle(net, budget=-3)
    with pytest.raises(InputError, match='normalized, pixels, tanh'):
        Oracle(net, input_space='uint8')
    with pytest.raises(InputError, match='onehot, index'):
        Oracle(net, label_format='logits')
    with pytest.raises(InputError, match='float tensor'):
        Oracle(net)(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(InputError, match='none, top1, rounding, reverse_sigmoid, adaptive_misinformation, misguide'):
        make_oracle(net, 'blur')
    with pytest.raises(InputError, match='does not exist'):
        MisGUIDEOracle(tmp_path/'missing.pth')


def test_input_spaces_roundtrip():
    px = torch.rand(3, 3, 32, 32)
    norm = to_normalized(px, 'pixels')
    for space in INPUT_SPACES:
        torch.testing.assert_close(to_normalized(from_normalized(norm, space), space), norm)
    u8 = (px * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    torch.testing.assert_close(images_to_space(u8, 'tanh'), (torch.as_tensor(u8).permute(0, 3, 1, 2) / 255) * 2 - 1)


def test_defences(net):
    x = torch.randn(32, 3, 32, 32) * 3
    ref = Oracle(net)(x)
    top = TopOneOracle(net)(x)
    assert torch.equal(top, F.one_hot(ref.argmax(1), 10).float())
    torch.testing.assert_close(RoundingOracle(net, decimals=2)(x), torch.round(ref, decimals=2))
    rs = ReverseSigmoidOracle(net, beta=1.0, gamma=0.1)(x)
    torch.testing.assert_close(rs.sum(1), torch.ones(32))
    assert (rs >= 0).all()
    assert (rs - ref).abs().max() > 1e-3
    # the perturbation flattens the answer: the recovered logit spread shrinks
    spread = lambda p: (p.clamp_min(1e-12).log().amax(1) - p.clamp_min(1e-12).log().amin(1)).mean()
    assert spread(rs) < spread(ref)
    am = AdaptiveMisinformationOracle(net, tau=0.6)
    pa = am(x)
    torch.testing.assert_close(pa.sum(1), torch.ones(32))
    alpha = am.alpha(ref).squeeze(1)
    sure, unsure = alpha < 1e-3, alpha > 1 - 1e-3
    assert sure.any() or unsure.any()
    torch.testing.assert_close(pa[sure], ref[sure], atol=1e-3, rtol=0)
    assert (pa[unsure].argmax(1) != ref[unsure].argmax(1)).all()
    # hard-label mode gives the top-1 of the defended answer; counting is shared by every defence
    for name in DEFENCES:
        if name == 'misguide': continue
        o = make_oracle(net, name, budget=40, hard_label=True)
        out = o(x)
        assert out.shape == (32, 10)
        assert torch.equal(out.sum(1), torch.ones(32))
        assert o.count == 32
        with pytest.raises(QueryBudgetExceeded):
            o(x[:9])
    with pytest.raises(InputError, match='beta=-1'):
        ReverseSigmoidOracle(net, beta=-1)
    with pytest.raises(InputError, match='tau=1.5'):
        AdaptiveMisinformationOracle(net, tau=1.5)


def test_misguide_oracle_over_a_query_object(net):
    class Fake:
        seen = []
        def query(self, x, client_id=None):
            Fake.seen.append((x.clone(), client_id))
            return torch.softmax(torch.zeros(len(x), 10), 1)
    o = make_oracle(Fake(), 'misguide', budget=10, input_space='tanh')
    x = torch.rand(10, 3, 32, 32) * 2 - 1
    assert o(x).shape == (10, 10)
    assert o.count == 10
    pixels, client = Fake.seen[-1]
    torch.testing.assert_close(pixels, (x + 1) / 2)  # MisGUIDE takes pixels in [0, 1]
    assert client == 'attacker'


def test_real_misguide_behind_the_oracle(net):
    misguide = pytest.importorskip('ong_misguide.misguide')
    from ong_misguide.detector import QUICK_VIT, DetectorConfig, OODDetector
    torch.manual_seed(0)
    detector = OODDetector(DetectorConfig(**QUICK_VIT, precision='fp32'))
    api = misguide.MisGUIDE(net, detector, threshold=0.5, secret_seed=1)
    o = make_oracle(api, 'misguide', budget=64)
    x = torch.randn(16, 3, 32, 32)  # normalised images, some outside the pixel range: clipped to [0, 1]
    p = o(x)
    assert p.shape == (16, 10)
    assert not p.requires_grad
    assert o.count == 16
    torch.testing.assert_close(p.sum(1), torch.ones(16))
    assert api.stats['clients']['attacker']['served'] == 16
    hard = make_oracle(api, 'misguide', hard_label=True, label_format='index')(x)
    assert hard.dtype == torch.int64
    assert torch.equal(hard, p.argmax(1))
