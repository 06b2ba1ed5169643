"""The project's shape: every notebook exports a module and every module has a notebook, the docs sidebar
lists every notebook, README.md is what nbs/index.ipynb renders to, and notebooks are committed clean."""
import configparser, importlib.util, json, re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/'nbs'

def notebooks():
    "Notebooks that are part of the package (scratch notebooks start with `_`)."
    return sorted(p for p in NBS.rglob('*.ipynb') if not any(part.startswith(('_', '.')) for part in p.relative_to(NBS).parts))

def default_exp(nb:Path):
    for cell in json.loads(nb.read_text())['cells']:
        m = re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(cell['source']), re.M)
        if m: return m.group(1)

def test_every_notebook_exports_a_module_and_every_module_has_a_notebook():
    exported = {default_exp(nb) for nb in notebooks()} - {None}
    modules = {p.stem for p in (ROOT/'sae_nb').glob('*.py')} - {'__init__', '_modidx'}
    assert exported, "no notebook has a #| default_exp"
    assert modules == exported, f"modules without a notebook (stale?): {modules - exported}; notebooks not exported: {exported - modules}"

def test_reading_order_numbers_are_unique():
    numbers = [re.match(r'(\d+[a-z]?)_', nb.name).group(1) for nb in notebooks() if re.match(r'\d', nb.name)]
    assert len(numbers) == len(set(numbers)), f"two notebooks share a number: {sorted(numbers)}"

def test_sidebar_lists_every_notebook_in_reading_order():
    side = yaml.safe_load((NBS/'sidebar.yml').read_text())['website']['sidebar']['contents']
    flat = [c for c in side if isinstance(c, str)] + [x for c in side if isinstance(c, dict) for x in c.get('contents', [])]
    want = [str(nb.relative_to(NBS)) for nb in notebooks()]
    assert sorted(flat) == sorted(want), f"nbs/sidebar.yml is out of step: missing {set(want)-set(flat)}, extra {set(flat)-set(want)}"
    assert flat[0] == 'index.ipynb'

def test_notebooks_are_committed_clean():
    dirty = [nb.name for nb in notebooks() if any(c.get('execution_count') for c in json.loads(nb.read_text())['cells'])]
    assert not dirty, f"run nbdev_clean: {dirty} carry execution counts"

def test_version_matches_settings():
    import sae_nb
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'settings.ini')
    assert sae_nb.__version__ == cfg['DEFAULT']['version']

def test_readme_is_built_from_the_index_notebook():
    spec = importlib.util.spec_from_file_location('build_docs', ROOT/'.ci/build_docs.py')
    build_docs = importlib.util.module_from_spec(spec); spec.loader.exec_module(build_docs)
    want = build_docs.readme_text(build_docs.proc_nbs())
    assert (ROOT/'README.md').read_text() == want, "README.md is stale: run `bash .ci/docs --readme-only` and commit it"

def test_quarto_config_is_where_nbdev_reads_it():
    assert (NBS/'_quarto.yml').resolve() == (ROOT/'_quarto.yml').resolve()
    assert yaml.safe_load((ROOT/'_quarto.yml').read_text())['project']['type'] == 'website'

def test_every_file_the_quarto_config_names_exists():
    "Quarto fails on a missing stylesheet or metadata file; nbdev writes nbdev.yml itself when it builds the docs."
    quarto = yaml.safe_load((ROOT/'_quarto.yml').read_text())
    css = quarto['format']['html'].get('css', [])
    named = ([css] if isinstance(css, str) else css) + [f for f in quarto.get('metadata-files', []) if f != 'nbdev.yml']
    missing = [f for f in named if not (NBS/f).is_file()]
    assert named and not missing, f"_quarto.yml names files that nbs/ lacks: {missing}"

def _mixes_imports(src:str) -> bool:
    lines = [l for l in src.splitlines() if l.strip() and not l.lstrip().startswith('#')]
    imports = [l for l in lines if re.match(r'\s*(import|from)\s+\S+', l)]
    return bool(imports) and len(imports) < len(lines)

def test_no_cell_mixes_imports_with_code():
    "nbdev's docs processing runs every cell that imports something on its own: such cells must hold only imports."
    bad = [f"{nb.name}: {''.join(c['source'])[:60]!r}" for nb in notebooks() for c in json.loads(nb.read_text())['cells']
           if c['cell_type'] == 'code' and not re.search(r'^#\|\s*export', ''.join(c['source']), re.M)
           and _mixes_imports(''.join(c['source']))]
    assert not bad, "move these imports into a cell of their own:\n" + '\n'.join(bad)

def test_test_flags_are_space_separated():
    "nbdev splits tst_flags on spaces: 'slow|gpu' would be one flag and no slow cell would be skipped."
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'settings.ini')
    assert set(cfg['DEFAULT']['tst_flags'].split()) >= {'slow', 'gpu'}
    flagged = {m for nb in notebooks() for c in json.loads(nb.read_text())['cells']
               for m in re.findall(r'^#\|\s*(slow|gpu)\s*$', ''.join(c['source']), re.M)}
    assert flagged <= set(cfg['DEFAULT']['tst_flags'].split())

def test_exported_code_has_no_undefined_names():
    "A name a notebook's test cells imported but the exported cells did not shows up only here, not in nbdev_test."
    from pyflakes.api import checkPath
    from pyflakes.reporter import Reporter
    import io
    out = io.StringIO()
    for py in sorted((ROOT/'sae_nb').glob('*.py')): checkPath(str(py), Reporter(out, out))
    undefined = [l for l in out.getvalue().splitlines() if 'undefined name' in l]
    assert not undefined, '\n'.join(undefined)

def test_code_lines_fit_in_120_characters():
    "Notebooks are read as pages: no line of code runs past 120 characters."
    long = [f"{nb.relative_to(NBS)}: {line.strip()[:70]!r} ({len(line)})" for nb in notebooks()
            for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code'
            for line in ''.join(c['source']).splitlines() if len(line) > 120]
    assert not long, f"{len(long)} lines over 120 characters:\n" + '\n'.join(long[:40])

MACHINE_PATH = re.compile(r'(?<![\w.])(?:/tmp/|/work/|/home/|/root/|/Users/|[A-Z]:\\\\)')

def test_committed_outputs_hold_no_machine_paths():
    "What a notebook shows must not depend on where it ran: no temporary folders or home directories in its outputs."
    found = [f"{nb.relative_to(NBS)} cell {i}: {m.string[max(0, m.start() - 30):m.end() + 30]!r}"
             for nb in notebooks() for i, c in enumerate(json.loads(nb.read_text())['cells'])
             for o in c.get('outputs', []) for m in [MACHINE_PATH.search(json.dumps(o))] if m]
    assert not found, '\n'.join(found)

def test_no_control_characters_in_notebook_text():
    r"A TeX `\frac` or `\bar` written through a Python string without r'' becomes a form feed or a backspace."
    bad = [f"{nb.relative_to(NBS)} cell {c.get('id')}: {ch!r}" for nb in notebooks() for c in json.loads(nb.read_text())['cells']
           for ch in set(''.join(c['source'])) if ord(ch) < 32 and ch not in '\n\t']
    assert not bad, '\n'.join(bad)
