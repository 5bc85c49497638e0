"""Data loaders checked against the lossless CIFAR-10 subset and for invalid input."""
import numpy as np
import pytest
import torch

from ong_misguide.core import InputError
from ong_misguide.data import (CIFAR_STATS, balanced_subset, cifar_dls, load_cifar100_sample, load_cifar_arrays,
                               load_lossless_cifar10, load_ood_images)


def test_lossless_subset_first_labels(data_root):
    ll = load_lossless_cifar10(data_root)
    assert list(ll['y_test'][:5]) == [3, 8, 8, 0, 6]
    assert ll['x_train'].shape == (4000, 32, 32, 3)
    assert ll['x_test'].dtype == np.uint8


def test_jpeg_folder_matches_lossless_order(cifar10_arrays, data_root):
    ll = load_lossless_cifar10(data_root)
    assert list(cifar10_arrays['classes']) == list(ll['classes'])
    # Within a class the JPEG copy keeps the original order, so the k-th image of class c agrees closely.
    for c in range(10):
        lossless = ll['x_test'][ll['y_test'] == c].astype(np.float64)
        jpeg = cifar10_arrays['x_test'][cifar10_arrays['y_test'] == c][:len(lossless)].astype(np.float64)
        per_image = np.abs(lossless - jpeg).mean(axis=(1, 2, 3))
        assert per_image.max() < 20, f'class {c}: an image differs by {per_image.max():.1f}/255'
        assert per_image.mean() < 10


def test_pixel_statistics_match_published(cifar10_arrays):
    x = cifar10_arrays['x_train'].astype(np.float64) / 255
    mean = x.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(mean, CIFAR_STATS['cifar10'][0], atol=0.005)


def test_normalised_batches(cifar10_arrays):
    dls = cifar_dls('cifar10', bs=128, subset=5000, arrays=cifar10_arrays, seed=1)
    xt, _ = dls.train.one_batch()
    assert xt.dtype == torch.float32 and xt.shape == (128, 3, 32, 32)
    x, y = dls.valid.one_batch()
    assert x.shape == (256, 3, 32, 32), 'validation batches are twice the training batch size'
    assert abs(float(x.mean())) < 0.2
    # The BIMP framework's std (0.2023, 0.1994, 0.2010) is smaller than the per-pixel std of the training set
    # (0.245, 0.243, 0.261 on this copy), so normalised pixels have a std of about 1.2-1.3, not 1.
    assert 1.1 < float(x.std()) < 1.35
    assert int(y.max()) < 10


def test_split_is_seeded_and_disjoint(cifar10_arrays):
    a = cifar_dls('cifar10', bs=64, subset=1000, arrays=cifar10_arrays, seed=3)
    b = cifar_dls('cifar10', bs=64, subset=1000, arrays=cifar10_arrays, seed=3)
    assert torch.equal(a.valid.dataset.x, b.valid.dataset.x)
    train = {bytes(t.numpy()) for t in a.train.dataset.x}
    assert not any(bytes(t.numpy()) in train for t in a.valid.dataset.x)


def test_subset_is_class_balanced(cifar10_arrays):
    idx = balanced_subset(cifar10_arrays['y_train'], 500, seed=0)
    assert np.bincount(cifar10_arrays['y_train'][idx]).tolist() == [50] * 10


@pytest.mark.parametrize('kwargs, message', [
    (dict(subset=60000), 'subset=60000'),
    (dict(subset=100, bs=128), 'fewer than one batch'),
    (dict(bs=0), 'bs=0'),
    (dict(dataset='svhn'), 'cifar10, cifar100'),
])
def test_invalid_loader_options(cifar10_arrays, kwargs, message):
    with pytest.raises(InputError, match=message):
        cifar_dls(**{'arrays': cifar10_arrays, **kwargs})


def test_missing_and_malformed_data_folders(tmp_path):
    with pytest.raises(InputError, match='does not exist'):
        load_cifar_arrays('cifar10', tmp_path/'nowhere')
    with pytest.raises(InputError, match='No cifar10 data'):
        load_cifar_arrays('cifar10', tmp_path)
    (tmp_path/'cifar10'/'train'/'cat').mkdir(parents=True)
    (tmp_path/'cifar10'/'test'/'cat').mkdir(parents=True)
    with pytest.raises(InputError, match='contains no image files'):
        load_cifar_arrays('cifar10', tmp_path)


def test_cifar100_sample_and_ood_images(data_root):
    c100 = load_cifar100_sample(data_root)
    assert c100['x_test'].shape == (20, 32, 32, 3) and int(c100['y_test'].max()) < 100
    ood = load_ood_images(data_root)
    assert ood.shape == (2020, 32, 32, 3) and ood.dtype == np.uint8


def test_cifar100_pipeline_rotates(data_root):
    c100 = load_cifar100_sample(data_root)
    arrays = {'x_train': np.concatenate([c100['x_test']] * 10), 'y_train': np.arange(200) % 100,
              'x_test': c100['x_test'], 'y_test': c100['y_test'], 'classes': np.array([str(i) for i in range(100)])}
    dls = cifar_dls('cifar100', bs=16, arrays=arrays, valid_pct=0.5)
    names = [type(t).__name__ for t in dls.train.after_batch.fs]
    assert 'Rotate' in names
    x, _ = dls.train.one_batch()
    assert x.shape == (16, 3, 32, 32) and torch.isfinite(x).all()
