"""Shared pytest setup: real data location and the `slow` marker."""
import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent/'shared'/'data'

# Tests read the real CIFAR-10 copy from ONG_MISGUIDE_DATA when it is set, else from ../shared/data beside the checkout.
if not os.environ.get('ONG_MISGUIDE_DATA') and SHARED_DATA.is_dir():
    os.environ['ONG_MISGUIDE_DATA'] = str(SHARED_DATA)

warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: takes more than a minute on a 2-core CPU; run with -m slow')


def pytest_collection_modifyitems(config, items):
    if config.getoption('-m'): return
    skip = pytest.mark.skip(reason='slow test: run with -m slow')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)


@pytest.fixture(scope='session')
def data_root() -> Path:
    "The real data folder; tests that need it skip with a clear reason when it is missing."
    root = os.environ.get('ONG_MISGUIDE_DATA')
    if not root or not Path(root).is_dir():
        pytest.skip('real data not found: set ONG_MISGUIDE_DATA to the folder holding cifar10-jpg.tar.gz')
    return Path(root)


@pytest.fixture(scope='session')
def cifar10_arrays(data_root):
    "All of CIFAR-10 as uint8 arrays, decoded once per session (cached on disk between sessions)."
    from ong_misguide.data import load_cifar_arrays
    return load_cifar_arrays('cifar10', data_root)
