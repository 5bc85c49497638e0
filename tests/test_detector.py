"""The OOD detector as a user runs it: OOD image sources, training with fastai, calibration, saving, bad input."""
import numpy as np
import pytest
import torch

from ong_misguide.core import InputError
from ong_misguide.detector import (CORRUPTIONS, NOISE_KINDS, DetectorConfig, OODDetector, OODLoss,
                                   calibrate_threshold, corrupt_images, detection_metrics, detection_report,
                                   fit_detector, load_bsds_split, load_detector, make_ood_sets, noise_images,
                                   random_generator_images, save_detector, to_pixels, train_generator)
from ong_misguide.models import create_cifar_model

TINY = dict(depth=1, embed_dim=32, num_heads=2)


@pytest.fixture(scope='module')
def lossless(data_root):
    from ong_misguide.data import load_lossless_cifar10
    return load_lossless_cifar10(data_root)


def in_unit_range(x):
    return bool(((x >= 0) & (x <= 1)).all())


def test_generator_images_seeded_and_in_range():
    a = random_generator_images(20, seed=3, per_generator=4)
    assert a.shape == (20, 3, 32, 32)
    assert a.dtype == torch.float32
    assert in_unit_range(a)
    assert torch.equal(a, random_generator_images(20, seed=3, per_generator=4))
    assert not torch.equal(a, random_generator_images(20, seed=4, per_generator=4))


@pytest.mark.parametrize('kind', NOISE_KINDS)
def test_noise_kinds_in_range(kind):
    x = noise_images(9, seed=1, kinds=(kind,))
    assert x.shape == (9, 3, 32, 32)
    assert in_unit_range(x)
    assert x.std() > 0.01


@pytest.mark.parametrize('kind', CORRUPTIONS)
def test_corruptions_change_images(kind, lossless):
    x = to_pixels(lossless['x_test'][:6])
    y = corrupt_images(x, kind, seed=0)
    assert y.shape == x.shape
    assert in_unit_range(y)
    # Every image changes by far more than JPEG noise (about 0.03 per pixel).
    assert ((y - x).abs().flatten(1).mean(1) > 0.03).all()


def test_victim_guided_generator_leaves_victim_unchanged():
    victim = create_cifar_model('resnet20').train()
    before = {k: v.clone() for k, v in victim.state_dict().items()}
    gens = train_generator(victim, steps=2, bs=8, snapshots=(1,))
    assert len(gens) == 2
    assert victim.training
    for k, v in victim.state_dict().items():
        assert torch.equal(before[k], v), k
    assert all(p.grad is None for p in victim.parameters())
    assert all(p.requires_grad for p in victim.parameters())


def test_bsds_splits_share_no_crop(data_root):
    train, held = load_bsds_split(path=data_root), load_bsds_split(heldout=True, path=data_root)
    assert len(train) + len(held) == 2020
    train_keys = {img.tobytes() for img in train}
    assert not any(img.tobytes() in train_keys for img in held)


def test_ood_sets_train_and_heldout_differ(lossless):
    sources = ('generator', 'noise', 'augmented', 'bsds500')
    train = make_ood_sets(16, x_id=lossless['x_train'][:16], sources=sources)
    held = make_ood_sets(16, x_id=lossless['x_test'][:16], heldout=True, sources=sources)
    assert set(train) == set(held) == set(sources)
    for k in sources:
        assert train[k].shape == (16, 32, 32, 3)
        assert train[k].dtype == np.uint8
        assert not np.array_equal(train[k], held[k]), k


def test_ood_sets_reject_unknown_source():
    with pytest.raises(InputError, match='gan'):
        make_ood_sets(4, sources=('gan',))


@pytest.mark.parametrize('mode', ['binary', 'msp', 'energy'])
def test_scores_in_unit_interval(mode):
    det = OODDetector(DetectorConfig(mode=mode, **TINY))
    s = det.score(torch.rand(5, 3, 32, 32))
    assert s.shape == (5,)
    assert s.dtype == torch.float32
    assert in_unit_range(s)


def test_score_keeps_training_mode():
    det = OODDetector(DetectorConfig(**TINY)).train()
    det.score(torch.rand(2, 3, 32, 32))
    assert det.training


def test_calibration_meets_target_fpr():
    det = OODDetector(DetectorConfig(**TINY))
    x = torch.rand(400, 3, 32, 32)
    thr = calibrate_threshold(det, x, fpr=0.05)
    assert det.threshold.item() == thr
    assert (det.score(x) > thr).float().mean() <= 0.05


@pytest.mark.parametrize('fpr', [0, 1, -0.1, 2])
def test_calibration_rejects_bad_fpr(fpr):
    det = OODDetector(DetectorConfig(**TINY))
    with pytest.raises(InputError, match='fpr='):
        calibrate_threshold(det, torch.rand(10, 3, 32, 32), fpr=fpr)


def test_oe_loss_pushes_ood_to_uniform():
    loss = OODLoss('msp')
    uniform_logits = torch.zeros(1, 10)
    peaked_logits = torch.tensor([[9.0] + [0.0] * 9])
    ood = torch.tensor([-1])
    assert loss(uniform_logits, ood) < loss(peaked_logits, ood)


def test_fit_detector_separates_noise(lossless):
    x_id, y_id = lossless['x_train'][:256], lossless['y_train'][:256]
    ood = {'noise': make_ood_sets(256, sources=('noise',))['noise']}
    det, learn = fit_detector(x_id, y_id, ood, DetectorConfig(**TINY), epochs=8, bs=32, lr=3e-3, progress=False)
    assert not det.training
    calibrate_threshold(det, lossless['x_train'][1000:1200], fpr=0.05)
    held = make_ood_sets(200, heldout=True, sources=('noise',))
    report = detection_report(det, lossless['x_test'][:200], held)
    assert report['sources']['noise']['auroc'] > 0.8, report


def test_fit_detector_rejects_labels_beyond_classes(lossless):
    with pytest.raises(InputError, match='num_classes=3'):
        fit_detector(lossless['x_train'][:64], lossless['y_train'][:64], {'noise': lossless['x_train'][:64]},
                     DetectorConfig(mode='msp', num_classes=3, **TINY), epochs=1, progress=False)


def test_fit_detector_needs_ood(lossless):
    with pytest.raises(InputError, match='No OOD images'):
        fit_detector(lossless['x_train'][:64], lossless['y_train'][:64], {}, DetectorConfig(**TINY), progress=False)


def test_detection_metrics_known_values():
    m = detection_metrics([0.1, 0.2, 0.3, 0.4], [0.35, 0.5], threshold=0.3)
    assert m['auroc'] == pytest.approx(7 / 8)
    assert m['tpr'] == 1.0
    assert m['fpr'] == 0.25


def test_detector_save_load_round_trip(tmp_path):
    det = OODDetector(DetectorConfig(mode='energy', **TINY))
    calibrate_threshold(det, torch.rand(100, 3, 32, 32), fpr=0.1)
    path = save_detector(det, tmp_path/'det.pth')
    back = load_detector(path)
    assert back.config == det.config
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(back.score(x), det.score(x))
    assert back.threshold.item() == det.threshold.item()


def test_load_detector_rejects_other_files(tmp_path):
    bad = tmp_path/'bad.pth'
    torch.save({'weights': torch.zeros(2)}, bad)
    with pytest.raises(InputError, match='save_detector'):
        load_detector(bad)
    with pytest.raises(InputError, match='not found'):
        load_detector(tmp_path/'missing.pth')


def test_pretrained_with_overrides_rejected():
    with pytest.raises(InputError, match='pretrained=False'):
        OODDetector(DetectorConfig(**TINY), pretrained=True)


def test_to_pixels_rejects_float():
    with pytest.raises(InputError, match='uint8'):
        to_pixels(np.zeros((1, 32, 32, 3), dtype=np.float32))
