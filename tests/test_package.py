"""The exported package matches the notebooks, and the command line is installed."""
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_module_comes_from_a_notebook():
    modules = {p.stem for p in (REPO/'ong_misguide').glob('*.py')} - {'__init__', '_modidx'}
    exported = set()
    for nb in (REPO/'nbs').glob('*.ipynb'):
        exported |= set(re.findall(r'#\| default_exp ([\w.]+)', nb.read_text()))
    assert modules <= exported, f'modules without a notebook: {sorted(modules - exported)}'


def test_console_script_installed():
    assert shutil.which('ong-misguide'), 'ong-misguide is not on PATH: pip install -e .'
    done = subprocess.run(['ong-misguide', '--help'], capture_output=True, text=True)
    assert done.returncode == 0 and 'train' in done.stdout
