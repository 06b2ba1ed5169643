"""The docs site builds offline and works in a browser: every page loads in headless Chromium, no internal link or
image is broken, and screenshots of the home page and of an API page are saved to tests/artifacts/."""
import importlib.util, re, shutil, subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse, unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT/'tests'/'artifacts'

def _build_docs():
    spec = importlib.util.spec_from_file_location('build_docs', ROOT/'.ci/build_docs.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

class _Refs(HTMLParser):
    "Collect the links and image sources of a page."
    def __init__(self):
        super().__init__(); self.links, self.images = [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'a' and a.get('href'): self.links.append(a['href'])
        if tag in ('img', 'script') and a.get('src'): self.images.append(a['src'])
        if tag == 'link' and a.get('href') and a.get('rel') == 'stylesheet': self.images.append(a['href'])

def _internal(ref:str) -> bool:
    u = urlparse(ref)
    return not (u.scheme or u.netloc or ref.startswith(('#', 'mailto:', 'data:', 'javascript:')))

def _chromium() -> str:
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    assert exe, "Chromium is missing: .ci/setup.sh installs Debian's `chromium` package (apt-get install chromium)."
    return exe

def _browser(*args, timeout=120) -> str:
    flags = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--hide-scrollbars']
    res = subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    docs = _build_docs()
    out = tmp_path_factory.mktemp('site')
    docs.build_site(docs.proc_nbs(), out)
    return out, docs

def test_every_sidebar_notebook_becomes_a_page(site):
    out, docs = site
    pages = [out/Path(nb).with_suffix('.html') for nb in docs.sidebar_notebooks()]
    missing = [str(p.relative_to(out)) for p in pages if not p.is_file()]
    assert not missing, f"pages not built: {missing}"
    home = (out/'index.html').read_text()
    assert 'sae_nb' in home and 'Train your first SAE' in home  # the sidebar reaches the tutorials

def test_no_internal_link_or_image_is_broken(site):
    out, _ = site
    broken = []
    for page in out.rglob('*.html'):
        refs = _Refs(); refs.feed(page.read_text(errors='replace'))
        for ref in refs.links + refs.images:
            if not _internal(ref): continue
            path = unquote(urlparse(ref).path)
            target = (out/path.lstrip('/') if path.startswith('/') else page.parent/path).resolve()  # '/x': from the site root
            if urlparse(ref).path and not (target.is_file() or (target/'index.html').is_file()):
                broken.append(f"{page.relative_to(out)} -> {ref}")
    assert not broken, "broken internal links or images:\n" + '\n'.join(broken[:30])

def test_api_pages_show_signatures_plots_and_tables(site):
    out, _ = site
    arch = (out/'02_architecture.html').read_text()
    assert 'SparseAutoencoder.encode_full' in arch, "show_doc's heading is missing from the API page"
    assert 'class="nf">encode_full' in arch and '# [batch, input_dim]' in arch, "no signature with its docments"
    assert '<table' in (out/'02a_kernels.html').read_text(), "markdown tables do not render"
    bench = (out/'08_benchmarks.html').read_text()
    assert 'data:image/png;base64' in bench or '<img' in bench, "the benchmarks page lost its plots"

def test_every_page_loads_in_chromium_and_screenshots_are_saved(site):
    out, docs = site
    for nb in docs.sidebar_notebooks():
        page = out/Path(nb).with_suffix('.html')
        dom = _browser('--dump-dom', page.as_uri())
        title = docs.notebook_title(ROOT/'nbs'/nb) if nb != 'index.ipynb' else 'sae_nb'
        assert '<body' in dom and title.split()[0] in dom, f"{nb}: Chromium rendered no page"
    ARTIFACTS.mkdir(exist_ok=True)
    for name, page in (('home.png', 'index.html'), ('api_architecture.png', '02_architecture.html')):
        shot = ARTIFACTS/name
        shot.unlink(missing_ok=True)
        _browser(f'--screenshot={shot}', '--window-size=1280,1600', (out/page).as_uri())
        assert shot.is_file() and shot.stat().st_size > 20_000, f"{name}: no screenshot (or a blank one)"
