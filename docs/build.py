"""Build the documentation site offline into docs/_site, and README.md from nbs/index.ipynb.

The published site is built by nbdev with Quarto (`nbdev_docs`, configured in nbs/_quarto.yml). Where Quarto
cannot be installed, this script renders the same executed notebooks with Material for MkDocs and
mkdocs-jupyter, which converts notebooks with nbconvert and keeps their stored outputs (text, tables, figures).
It applies nbdev's cell directives first: `#| hide` cells are dropped and directive lines are removed.

Why this renderer: it shows the notebooks' stored outputs without executing them again, and one generated
config file gives navigation and offline search. Sphinx with MyST-NB would need its own conf.py and toctree, and
plain nbconvert gives single pages without navigation or search. Material for MkDocs 9.8 announces its end of
life for May 2027 and names Zensical, which reads the same mkdocs.yml, as its successor.

Usage: python docs/build.py [--readme-only] [--check-readme]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS, DOCS = ROOT/'nbs', ROOT/'docs'
STAGE, SITE = DOCS/'_build', DOCS/'_site'
DIRECTIVE = re.compile(r'^\s*#\|\s*([\w-]+)(.*)$')


def directives(source: str) -> dict[str, str]:
    "Return the nbdev directives (`#| name value`) at the top of a cell's source."
    found = {}
    for line in source.splitlines():
        m = DIRECTIVE.match(line)
        if not m: break
        found[m.group(1)] = m.group(2).strip()
    return found


def strip_directives(source: str) -> str:
    lines = source.splitlines()
    while lines and DIRECTIVE.match(lines[0]): lines.pop(0)
    return '\n'.join(lines)


def clean_stream(text: str) -> str:
    "Keep the final state of lines rewritten with carriage returns (progress bars)."
    return '\n'.join(line.split('\r')[-1] for line in text.split('\n'))


def process_notebook(nb: dict) -> dict:
    "Apply nbdev's directives for display: drop hidden cells, remove directive lines, tidy progress output."
    cells = []
    for cell in nb['cells']:
        src = ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']
        if cell['cell_type'] == 'code':
            d = directives(src)
            if 'hide' in d or 'default_exp' in d: continue
            src = strip_directives(src)
            if not src.strip(): continue
            outputs = []
            for o in cell.get('outputs', []):
                if o.get('output_type') == 'stream':
                    text = ''.join(o['text']) if isinstance(o['text'], list) else o['text']
                    if o.get('name') == 'stderr' and 'Warning' in text: continue
                    o = {**o, 'text': clean_stream(text)}
                outputs.append(o)
            cell = {**cell, 'source': src, 'outputs': outputs}
        else:
            cell = {**cell, 'source': src}
        cells.append(cell)
    return {**nb, 'cells': cells}


def title_of(nb: dict, fallback: str) -> str:
    for cell in nb['cells']:
        if cell['cell_type'] == 'markdown':
            src = ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']
            m = re.search(r'^#\s+(.+)$', src, re.M)
            if m: return m.group(1).strip()
    return fallback


def readme_text(nb: dict) -> str:
    "Render a processed notebook as GitHub Markdown: prose as is, code fenced, text outputs fenced."
    parts = ['<!-- Generated from nbs/index.ipynb by docs/build.py: edit the notebook, not this file. -->']
    for cell in nb['cells']:
        src = cell['source']
        if cell['cell_type'] == 'markdown': parts.append(src)
        elif cell['cell_type'] == 'code':
            parts.append(f'```python\n{src}\n```')
            for o in cell.get('outputs', []):
                text = o.get('text') or ''.join(o.get('data', {}).get('text/plain', ''))
                if isinstance(text, list): text = ''.join(text)
                if text.strip(): parts.append(f'```\n{text.rstrip()}\n```')
    return '\n\n'.join(parts) + '\n'


def build_readme(check: bool = False) -> bool:
    nb = process_notebook(json.loads((NBS/'index.ipynb').read_text()))
    text = readme_text(nb)
    if check: return (ROOT/'README.md').read_text() == text
    (ROOT/'README.md').write_text(text)
    return True


def build_site():
    if STAGE.exists(): shutil.rmtree(STAGE)
    src = STAGE/'src'
    src.mkdir(parents=True)
    nav = []
    for path in sorted(NBS.glob('*.ipynb'), key=lambda p: (p.name != 'index.ipynb', p.name)):
        nb = process_notebook(json.loads(path.read_text()))
        (src/path.name).write_text(json.dumps(nb))
        nav.append({title_of(nb, path.stem): path.name})
    # Hand-written pages and their images: every file under docs/ except this script and the build output.
    for f in sorted(DOCS.rglob('*')):
        rel = f.relative_to(DOCS)
        if f.is_dir() or rel.parts[0] in ('_build', '_site') or f.name == 'build.py': continue
        (src/rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, src/rel)
        if f.suffix == '.md':
            m = re.search(r'^#\s+(.+)$', f.read_text(), re.M)
            nav.append({m.group(1).strip() if m else f.stem: str(rel)})
    config = {
        'site_name': 'ong_misguide',
        'site_description': 'ONG sparse training and the MisGUIDE defence against model extraction',
        'docs_dir': str(src), 'site_dir': str(SITE), 'use_directory_urls': False,
        'theme': {'name': 'material', 'features': ['navigation.sections', 'content.code.copy']},
        'plugins': ['search', {'mkdocs-jupyter': {'include_source': True, 'execute': False,
                                                  'ignore_h1_titles': False, 'include_requirejs': False}}],
        'markdown_extensions': ['tables', 'admonition', 'fenced_code', 'toc'],
        'nav': nav,
    }
    (STAGE/'mkdocs.yml').write_text(json.dumps(config, indent=1))
    if SITE.exists(): shutil.rmtree(SITE)
    env = {**os.environ, 'NO_MKDOCS_2_WARNING': '1'}
    subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--quiet', '-f', str(STAGE/'mkdocs.yml')], check=True, env=env)
    return nav


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--readme-only', action='store_true', help='only regenerate README.md')
    parser.add_argument('--check-readme', action='store_true',
                        help='exit with status 1 if README.md differs from nbs/index.ipynb')
    args = parser.parse_args()
    if args.check_readme:
        ok = build_readme(check=True)
        if not ok: print('README.md is out of date: run python docs/build.py --readme-only', file=sys.stderr)
        sys.exit(0 if ok else 1)
    build_readme()
    if not args.readme_only:
        nav = build_site()
        print(f'built {len(nav)} pages into {SITE}')


if __name__ == '__main__':
    main()
