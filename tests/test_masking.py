"""The masking engine as a user meets it: persistence of masks (deepcopy, pickle, learn.save/load, export/load_learner,
a resumed run), the dense and sparse checkpoint formats with the size bound, optimizer state, re-pruning, shared
parameters, DataParallel names, reporting and bad input."""
import copy
import pickle
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.learner import Learner, load_learner
from fastai.optimizer import Adam as FastaiAdam
from fastai.optimizer import OptimWrapper

from ong_misguide.core import InputError
from ong_misguide.data import cifar_dls, load_lossless_cifar10
from ong_misguide.masking import (MagnitudeScore, MaskedTraining, Polynomial, Pruner, RandomScore, allocate,
                                  dense_state_dict, get_masks, layer_sparsity_chart, load_sparse, prunable_layers,
                                  save_sparse, set_masks, sparsity_report)
from ong_misguide.models import create_cifar_model
from ong_misguide.train import sgd_opt_func

R20 = 268336


def pruned(arch='resnet20', sparsity=0.9, seed=0):
    "A model pruned by magnitude at `sparsity` (masks on the model), without training."
    torch.manual_seed(seed)
    model = create_cifar_model(arch)
    layers = prunable_layers(model)
    set_masks(model, allocate(MagnitudeScore()(layers), sparsity).masks)
    return model


def same_masks(a, b):
    ma, mb = get_masks(a), get_masks(b)
    return ma.keys() == mb.keys() and all(torch.equal(ma[k].cpu(), mb[k].cpu()) for k in ma)


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
    return cifar_dls(arrays=load_lossless_cifar10(data_root), subset=60, test_subset=10, bs=8, seed=0)


def learner(dls, cbs, opt_func=None, model=None):
    torch.manual_seed(0)
    learn = Learner(dls, model or create_cifar_model('resnet20'), loss_func=nn.CrossEntropyLoss(),
                    opt_func=opt_func or sgd_opt_func(), lr=0.05, wd=1e-3, cbs=cbs)
    learn.path = Path(tempfile.mkdtemp())
    return learn


def fit(learn, n=1):
    with learn.no_bar(), learn.no_logging(): learn.fit(n)


def nonzero(model):
    return sparsity_report(model)['nonzero']


# --- persistence -----------------------------------------------------------------------------------------------

def test_deepcopy_and_pickle_keep_masks():
    model = pruned()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert same_masks(model, clone)
        assert nonzero(clone) == round(0.1 * R20)
    assert not any(k.endswith('weight_mask') for k in model.state_dict())   # plain state_dict


def test_callback_state_survives_deepcopy_and_pickle(dls):
    learn = learner(dls, Pruner(MagnitudeScore(), sparsity=0.8))
    fit(learn)
    for cb in (copy.deepcopy(learn.pruner), pickle.loads(pickle.dumps(learn.pruner))):
        state = cb.state_dict()
        assert state['steps_done'] == len(dls.train)
        assert state['last_pruned'] == 0
        for k, v in get_masks(learn.model).items(): assert torch.equal(state['masks'][k], v)


def test_save_load_same_learner_keeps_masks_and_zeros(dls):
    learn = learner(dls, Pruner(MagnitudeScore(), sparsity=0.9))
    fit(learn)
    masks = {k: v.clone() for k, v in get_masks(learn.model).items()}
    learn.save('p')
    with torch.no_grad():   # spoil the weights: every pruned weight non-zero again
        for p in learn.model.parameters(): p.add_(0.01)
    learn.load('p')
    assert nonzero(learn.model) == round(0.1 * R20)
    fit(learn)
    assert nonzero(learn.model) == round(0.1 * R20)
    assert all(torch.equal(masks[k], v) for k, v in get_masks(learn.model).items())


def test_dense_checkpoint_with_dense_optimizer_state_cannot_revive(dls):
    # A dense model trained with momentum, saved with its optimizer state, then loaded into a pruned learner.
    dense = learner(dls, [])
    fit(dense)
    dense.save('dense')
    learn = learner(dls, Pruner(MagnitudeScore(), sparsity=0.9))
    fit(learn)
    masks = {k: v.clone() for k, v in get_masks(learn.model).items()}
    learn.load(dense.path/'models'/'dense')   # dense weights and momentum buffers
    assert nonzero(learn.model) > round(0.5 * R20)
    fit(learn)
    assert nonzero(learn.model) == round(0.1 * R20)
    assert all(torch.equal(masks[k], v) for k, v in get_masks(learn.model).items())
    state = learn.opt.opt.state
    for k, m in masks.items():
        buf = state[learn.model.get_submodule(k).weight]['momentum_buffer']
        assert not buf[~m].any()


def test_fresh_learner_resumes_from_callback_state(dls):
    learn = learner(dls, Pruner(RandomScore(3), sparsity=0.7))
    fit(learn)
    learn.save('p')
    state = learn.pruner.state_dict()
    learn2 = learner(dls, Pruner(RandomScore(99), sparsity=0.7))   # another seed would choose other masks
    learn2.load(learn.path/'models'/'p')
    learn2.pruner.load_state_dict(state)
    fit(learn2)
    assert same_masks(learn.model, learn2.model)
    assert learn2.pruner.steps_done == 2 * len(dls.train)
    assert nonzero(learn2.model) == round(0.3 * R20)


def test_export_load_learner(dls):
    learn = learner(dls, Pruner(MagnitudeScore(), sparsity=0.9))
    fit(learn)
    learn.export('e.pkl')
    learn2 = load_learner(learn.path/'e.pkl')
    assert same_masks(learn.model, learn2.model)
    learn2.dls = dls
    fit(learn2)
    assert same_masks(learn.model, learn2.model)
    assert nonzero(learn2.model) == round(0.1 * R20)


def test_masked_training_with_given_masks(dls):
    masks = get_masks(pruned(sparsity=0.5, seed=4))
    learn = learner(dls, MaskedTraining(masks))
    fit(learn)
    assert nonzero(learn.model) == round(0.5 * R20)
    assert set(learn.masked_training.state_dict()['masks']) == set(masks)


def test_train_run_resume_keeps_masks(tmp_path, data_root):
    # An interrupted `ong` run resumes from RunCheckpoint with the masks of its first epoch.
    from ong_misguide.ong import ONG  # noqa: F401  (registers the methods)
    from ong_misguide.train import METHODS, TrainConfig, train_run, load_run

    class StopAfterFirstEpoch(Callback):
        order = 99
        def after_epoch(self):
            if self.epoch == 0: raise KeyboardInterrupt

    arrays = load_lossless_cifar10(data_root)
    cfg = TrainConfig(arch='resnet20', epochs=2, bs=16, subset=160, test_subset=20, method='ong',
                      method_options={'sparsity': 0.8, 'rank': 2})
    seen = {}
    original = METHODS['ong']

    def ong_interrupted(config):
        cbs = original(config)
        seen.setdefault('ong', []).append(cbs[0])
        return cbs + ([StopAfterFirstEpoch()] if len(seen['ong']) == 1 else [])

    METHODS['ong'] = ong_interrupted
    try:
        with pytest.raises(KeyboardInterrupt): train_run(cfg, tmp_path/'run', arrays=arrays, progress=False)
        first = {k: v.clone() for k, v in get_masks(seen['ong'][0].learn.model).items()}
        result = train_run(cfg, tmp_path/'run', arrays=arrays, progress=False)
    finally:
        METHODS['ong'] = original
    second = get_masks(seen['ong'][1].learn.model)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert seen['ong'][1].last_pruned == 0          # not pruned again after the resume
    assert result['kept_weights'] == round(0.2 * R20)
    assert (tmp_path/'run'/'layer_sparsity.png').is_file()
    model, _ = load_run(tmp_path/'run')             # model.pth is the plain dense format
    assert nonzero(model) == round(0.2 * R20)


# --- checkpoint formats ----------------------------------------------------------------------------------------

def test_dense_state_dict_loads_into_unpruned_model():
    model = pruned()
    fresh = create_cifar_model('resnet20')
    fresh.load_state_dict(dense_state_dict(model))   # strict: no extra keys
    assert nonzero(fresh) == round(0.1 * R20)
    assert get_masks(fresh) == {}


@pytest.mark.parametrize('arch, sparsities', [('resnet20', (0.0, 0.5, 0.9, 0.99)), ('resnet18', (0.5, 0.9, 0.99))])
def test_sparse_checkpoint_round_trip_and_size(tmp_path, arch, sparsities):
    for s in sparsities:
        model = pruned(arch, s)
        torch.save(dense_state_dict(model), tmp_path/'dense.pth')
        save_sparse(model, tmp_path/'sparse.pth')
        dense_size, sparse_size = (tmp_path/'dense.pth').stat().st_size, (tmp_path/'sparse.pth').stat().st_size
        assert sparse_size <= (1 - s) * 1.15 * dense_size + 2**20, (arch, s, sparse_size, dense_size)
        sd, masks = load_sparse(tmp_path/'sparse.pth')
        ref = dense_state_dict(model)
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
        fresh = create_cifar_model(arch)
        load_sparse(tmp_path/'sparse.pth', fresh)
        assert same_masks(model, fresh)


def test_sparse_checkpoint_keeps_masks_not_zeros(tmp_path):
    # A kept weight that happens to be zero stays kept: masks come from the decision, not from weight == 0.
    model = pruned(sparsity=0.5)
    name, mask = next(iter(get_masks(model).items()))
    i = int(mask.reshape(-1).nonzero()[0])
    with torch.no_grad(): model.get_submodule(name).weight.view(-1)[i] = 0.0
    save_sparse(model, tmp_path/'s.pth')
    _, masks = load_sparse(tmp_path/'s.pth')
    assert masks[name].reshape(-1)[i]
    assert torch.equal(masks[name], mask)


def test_load_sparse_rejects_other_files(tmp_path):
    torch.save({'a': torch.zeros(2)}, tmp_path/'plain.pth')
    with pytest.raises(InputError, match='not a sparse checkpoint'): load_sparse(tmp_path/'plain.pth')
    (tmp_path/'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(InputError, match='cannot be read'): load_sparse(tmp_path/'junk.pth')


# --- optimizer state, re-pruning, shared parameters, DataParallel ----------------------------------------------

@pytest.mark.parametrize('opt_func', [sgd_opt_func(), FastaiAdam], ids=['sgd', 'fastai-adam'])
def test_pruning_zeroes_existing_optimizer_state(dls, opt_func):
    # Dense training first (optimizer state everywhere), then prune the same learner: the state is masked.
    learn = learner(dls, [], opt_func=opt_func)
    fit(learn)
    pr = Pruner(MagnitudeScore(), sparsity=0.9)
    learn.add_cb(pr)
    fit(learn)
    states = learn.opt.opt.state if isinstance(learn.opt, OptimWrapper) else learn.opt.state
    checked = 0
    for k, m in get_masks(learn.model).items():
        p = learn.model.get_submodule(k).weight
        for v in states[p].values():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                assert not v[~m].any(); checked += 1
    assert checked >= 20


class PreferPruned:
    "Scores that prefer the weights an earlier step pruned (zero weights score highest)."
    def __call__(self, layers, learn=None):
        return {n: -m.weight.detach().abs() for n, m in layers.items()}


def test_repruning_replaces_masks_instead_of_multiplying(dls):
    learn = learner(dls, Pruner(MagnitudeScore(), sparsity=0.5))
    fit(learn)
    before = {k: v.clone() for k, v in get_masks(learn.model).items()}
    learn.pruner.scorer = PreferPruned()
    learn.pruner.prune(0.5)
    after = get_masks(learn.model)
    assert sum(int(v.sum()) for v in after.values()) == round(0.5 * R20)
    overlap = sum(int((before[k] & after[k]).sum()) for k in after)
    assert overlap < 0.01 * R20          # the new decision, not old * new


def test_gradual_schedule_prunes_at_the_right_steps(dls):
    n = len(dls.train)
    sched = Polynomial(0.8, begin=0, end=2 * n, every=n)
    learn = learner(dls, Pruner(MagnitudeScore(), schedule=sched))
    seen = []

    class Record(Callback):
        order = 99
        def after_batch(self):
            if self.training: seen.append(nonzero(self.learn.model))

    learn.add_cb(Record())
    fit(learn, 3)
    assert seen[0] == R20
    assert seen[n] == round(R20 * (1 - sched.sparsity_at(n)))
    assert seen[-1] == round(0.2 * R20)


def test_shared_parameter_counted_once(dls):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)
            self.b.weight = self.a.weight
        def forward(self, x): return self.b(self.a(x))

    m = Tied()
    assert list(prunable_layers(m)) == ['a']
    set_masks(m, allocate(MagnitudeScore()(prunable_layers(m)), 0.75).masks)
    rep = sparsity_report(m)
    assert rep['weights'] == 64
    assert rep['nonzero'] == 16


def test_dataparallel_names_have_no_module_prefix(dls):
    model = nn.DataParallel(create_cifar_model('resnet20'))
    learn = learner(dls, Pruner(MagnitudeScore(), sparsity=0.9), model=model)
    fit(learn)
    names = list(get_masks(learn.model))
    assert names[0] == 'conv1' and not any(n.startswith('module.') for n in names)
    assert nonzero(learn.model) == round(0.1 * R20)


# --- reporting and bad input -----------------------------------------------------------------------------------

def test_report_and_chart(tmp_path):
    model = pruned(sparsity=0.9)
    rep = sparsity_report(model)
    assert rep['weights'] == R20
    assert abs(rep['sparsity'] - 0.9) < 1e-5
    assert len(rep['layer_sparsity']) == 20
    fig = layer_sparsity_chart(rep['layer_sparsity'], tmp_path/'chart.png', title='test')
    assert type(fig).__name__ == 'Figure'
    assert len(fig.axes[0].patches) == 20
    assert (tmp_path/'chart.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_bad_input():
    model = create_cifar_model('resnet20')
    with pytest.raises(InputError, match="'nope' names no module.*conv1"): prunable_layers(model, exclude=['nope'])
    with pytest.raises(InputError, match='no prunable layers'): prunable_layers(nn.Sequential(nn.BatchNorm2d(3)))
    with pytest.raises(InputError, match='sparsity=1.0 is invalid'): Pruner(MagnitudeScore(), sparsity=1.0)
    with pytest.raises(InputError, match='needs a target'): Pruner(MagnitudeScore())
    with pytest.raises(InputError, match='floor=-1'): Pruner(MagnitudeScore(), sparsity=0.5, floor=-1)
    with pytest.raises(InputError, match="'fc' has shape"): set_masks(model, {'fc': torch.ones(3, 3, dtype=torch.bool)})
