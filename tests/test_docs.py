"""The documentation site builds offline and its pages render in headless Chromium."""
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SITE = REPO/'docs'/'_site'
BROWSER = shutil.which('chromium') or shutil.which('chromium-browser')


@pytest.fixture(scope='module')
def site():
    subprocess.run([sys.executable, 'docs/build.py'], cwd=REPO, check=True, timeout=900)
    return SITE


def render(page: Path) -> str:
    "Return the DOM of `page` after Chromium has run its scripts."
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([BROWSER, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
                               '--no-first-run', '--disable-background-networking', '--disable-component-update',
                               '--disable-sync', f'--user-data-dir={profile}', '--virtual-time-budget=3000',
                               '--dump-dom', page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def notebook_pages():
    return sorted(p.stem for p in (REPO/'nbs').glob('*.ipynb'))


def image_outputs(name: str) -> int:
    nb = json.loads((REPO/'nbs'/f'{name}.ipynb').read_text())
    return sum('image/png' in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', []))


def test_readme_matches_index_notebook():
    done = subprocess.run([sys.executable, 'docs/build.py', '--check-readme'], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(BROWSER is None, reason='chromium is not installed (apt-get install chromium)')
@pytest.mark.parametrize('name', notebook_pages())
def test_page_renders_with_headings_code_and_figures(site, name):
    page = site/f'{name}.html'
    assert page.is_file(), f'{page} was not built'
    dom = render(page)
    assert re.search(r'<h1[^>]*>', dom), f'{name}: no heading'
    code_blocks = len(re.findall(r'<pre', dom))
    assert code_blocks > 0, f'{name}: no code'
    figures = len(re.findall(r'<img[^>]+src="data:image/png', dom))
    assert figures >= image_outputs(name), f'{name}: {figures} figures rendered, notebook has {image_outputs(name)}'
    assert 'Traceback (most recent call last)' not in dom, f'{name}: an error output is shown'


@pytest.mark.skipif(BROWSER is None, reason='chromium is not installed (apt-get install chromium)')
def test_benchmark_page_renders(site):
    page = site/'benchmarks.html'
    if not (REPO/'docs'/'benchmarks.md').exists(): pytest.skip('no benchmark page yet')
    dom = render(page)
    assert re.search(r'<h1[^>]*>', dom)
