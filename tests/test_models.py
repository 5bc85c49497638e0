"""CIFAR ResNets: parameter counts, output shapes and the timm registry."""
import pytest
import timm
import torch

from ong_misguide.core import InputError
from ong_misguide.models import ARCHS, create_cifar_model

# Published parameter counts: He et al. 2016 (table 6) for ResNet20/56/110; common CIFAR ResNet18/34 code.
EXPECTED_MILLIONS = {'resnet20': 0.27, 'resnet56': 0.85, 'resnet110': 1.7, 'resnet18': 11.2, 'resnet34': 21.3}


@pytest.mark.parametrize('arch, millions', EXPECTED_MILLIONS.items())
def test_parameter_counts(arch, millions):
    n = sum(p.numel() for p in create_cifar_model(arch).parameters())
    assert abs(n / 1e6 - millions) / millions < 0.02, f'{arch}: {n} parameters'


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('classes', [10, 100])
def test_output_shapes(arch, classes):
    model = timm.create_model(f'cifar_{arch}', num_classes=classes).eval()
    with torch.no_grad(): out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, classes)


def test_convolutions_have_no_bias():
    model = create_cifar_model('resnet56')
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 55 and all(c.bias is None for c in convs)


def test_option_a_shortcuts_have_no_parameters():
    model = create_cifar_model('resnet20')
    assert sum(1 for m in model.modules() if type(m).__name__ == 'ShortcutA') == 2
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())


def test_unknown_arch_lists_valid_names():
    with pytest.raises(InputError, match='resnet20, resnet32, resnet44'):
        create_cifar_model('resnet50')
