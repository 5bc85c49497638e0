"""`ong-misguide train` run as a user runs it: one real run, resuming, and every invalid-input case."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [str(Path(sys.executable).parent/'ong-misguide')]


def run_cli(*args, cwd=None):
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore'}
    return subprocess.run(CLI + list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


QUICK = ['--arch', 'resnet20', '--epochs', '1', '--bs', '64', '--subset', '640', '--test_subset', '200',
         '--precision', 'bf16']


def test_train_writes_result_and_model(tmp_path, data_root):
    out = tmp_path/'run'
    done = run_cli('train', *QUICK, '--data', str(data_root), '--out', str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads((out/'result.json').read_text())
    for key in ('config', 'test_accuracy', 'valid_accuracy', 'epoch_seconds', 'parameters'):
        assert key in result
    assert 0 <= result['test_accuracy'] <= 1
    assert len(result['valid_accuracy']) == 1 and len(result['epoch_seconds']) == 1
    assert result['parameters'] == 269722
    assert (out/'model.pth').is_file() and not (out/'checkpoint.pth').exists()
    # A second run into the same folder is refused, with the way out in the message.
    again = run_cli('train', *QUICK, '--data', str(data_root), '--out', str(out))
    assert again.returncode == 2 and '--overwrite' in again.stderr
    assert 'Traceback' not in again.stderr
    from ong_misguide.train import load_run
    model, config = load_run(out)
    assert config.subset == 640 and not model.training


@pytest.mark.parametrize('args, message', [
    (['--dataset', 'svhn'], 'cifar10, cifar100'),
    (['--arch', 'resnet50'], 'resnet20, resnet32'),
    (['--epochs', '0'], 'epochs=0'),
    (['--bs', '-8'], 'bs=-8'),
    (['--lr', '0'], 'lr=0'),
    (['--subset', '70000'], 'subset=70000'),
    (['--subset', '100', '--bs', '128'], 'fewer than one batch'),
    (['--schedule', 'step'], 'onecycle, linear, cosine'),
    (['--precision', 'fp8'], 'fp32, bf16, fp16'),
    (['--sparsity', '0.9'], 'pruning methods only'),
])
def test_invalid_options_are_one_line_errors(tmp_path, data_root, args, message):
    done = run_cli('train', '--data', str(data_root), '--out', str(tmp_path/'out'), *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert 'Traceback' not in done.stderr
    assert not (tmp_path/'out'/'result.json').exists()


def test_missing_and_malformed_data_folder(tmp_path):
    done = run_cli('train', '--data', str(tmp_path/'nowhere'), '--out', str(tmp_path/'out'))
    assert done.returncode == 2 and 'does not exist' in done.stderr
    (tmp_path/'data'/'cifar10'/'train').mkdir(parents=True)
    done = run_cli('train', '--data', str(tmp_path/'data'), '--out', str(tmp_path/'out'))
    assert done.returncode == 2 and 'No cifar10 data' in done.stderr


def test_unwritable_output_folder(tmp_path, data_root):
    blocker = tmp_path/'file'
    blocker.write_text('not a folder')
    done = run_cli('train', '--data', str(data_root), '--out', str(blocker/'run'))
    assert done.returncode == 2 and 'not writable' in done.stderr


def test_help_names_every_option_unit():
    done = run_cli('train', '--help')
    assert done.returncode == 0
    for option in ('--epochs', '--bs', '--lr', '--subset', '--data', '--out', '--overwrite', '--precision'):
        assert option in done.stdout
    top = run_cli('--help')
    assert top.returncode == 0 and 'train' in top.stdout
