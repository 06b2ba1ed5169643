"""The docs site builds offline without installing anything, and works in a browser with no network: every page
loads in headless Chromium under the name Quarto gives it, in the sidebar's order; every link between pages, and
every link to the project's published site, lands on a built page (and on its anchor); formulas are MathML and
nothing loads from another host; API pages show NamedTuples' fields, no dead [source] links, and progress bars as
their last state. Screenshots of the home page and of an API page are saved to tests/artifacts/."""
import html, importlib.util, os, re, shutil, subprocess
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
    "Collect a page's links, image sources, what it loads, its element ids, and its prose (text outside code)."
    SKIP = ('pre', 'code', 'script', 'style')
    def __init__(self):
        super().__init__()
        self.links, self.images, self.loads, self.ids, self.prose, self._skip = [], [], [], set(), [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag == 'a' and a.get('href'): self.links.append(a['href'])
        if tag == 'img' and a.get('src'): self.images.append(a['src'])
        if tag == 'script' and a.get('src'): self.loads.append(a['src'])
        if tag == 'link' and a.get('href'):
            self.loads.append(a['href'])
            if a.get('rel') == 'stylesheet': self.images.append(a['href'])
        if tag in self.SKIP or 'clipboard-copy-txt' in (a.get('class') or ''): self._skip.append(tag)
        elif self._skip and tag == self._skip[-1]: self._skip.append(tag)  # the same tag nested inside a skipped one
    def handle_endtag(self, tag):
        if self._skip and tag == self._skip[-1]: self._skip.pop()
    def handle_data(self, data):
        if self._skip and self._skip[-1] == 'script': self.loads += re.findall(r'import\(\s*["\']([^"\']+)', data)
        if not self._skip: self.prose.append(data)

def _refs(page:Path) -> _Refs:
    refs = _Refs(); refs.feed(page.read_text(errors='replace')); return refs

def _text(page:Path) -> str:
    "A page's text, tags taken out (code blocks included)."
    return html.unescape(re.sub(r'<[^>]+>', '', page.read_text()))

def _internal(ref:str) -> bool:
    u = urlparse(ref)
    return not (u.scheme or u.netloc or ref.startswith(('#', 'mailto:', 'data:', 'javascript:')))

def _chromium() -> str:
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    assert exe, "Chromium is missing: .ci/setup.sh installs Debian's `chromium` package (apt-get install chromium)."
    return exe

def _browser(*args, timeout=120) -> str:
    flags = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--hide-scrollbars']
    # Chromium's socket path under TMPDIR must stay short (it aborts at about 63 characters): /tmp where there is one
    env = {**os.environ, 'TMPDIR': '/tmp'} if os.path.isdir('/tmp') else None
    res = subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout

def test_processing_the_notebooks_installs_nothing(monkeypatch):
    "nbdev_proc_nbs installs Quarto with sudo, runs `pip install -e` and rewrites nbs/nbdev.yml: the build must not."
    import os, nbdev.doclinks, nbdev.quarto
    def forbidden(name):
        def call(*args, **kwargs): raise AssertionError(f"the docs build called {name}{args}")
        return call
    nbdev_steps = ['_ensure_quarto', 'install', 'install_quarto', 'refresh_quarto_yml', '_pre_docs']
    for mod, name in [(nbdev.quarto, n) for n in nbdev_steps] + [(nbdev.doclinks, '_build_modidx'),
                      (subprocess, 'run'), (subprocess, 'Popen'), (os, 'system')]:  # no program: no pip, sudo, quarto
        monkeypatch.setattr(mod, name, forbidden(name))
    proc = _build_docs().proc_nbs()
    assert (proc/'index.ipynb').is_file()

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    docs = _build_docs()
    out = tmp_path_factory.mktemp('site')
    docs.build_site(docs.proc_nbs(), out)
    return out, docs

def test_every_sidebar_notebook_becomes_its_quarto_page_in_sidebar_order(site):
    out, docs = site
    nbs = docs.sidebar_notebooks()
    pages = [docs.page_of(nb) for nb in nbs]
    def quarto_name(nb): return re.sub(r'^\d+[a-zA-Z0-9]*_', '', Path(nb).name.lower())  # 05_trainer.ipynb -> trainer
    quarto = [str(Path(nb).with_name(quarto_name(nb)).with_suffix('.html')) for nb in nbs]
    assert pages == quarto, "pages are not named as Quarto names them (05_trainer.ipynb -> trainer.html)"
    missing = [p for p in pages if not (out/p).is_file()]
    assert not missing, f"pages not built: {missing}"
    assert not (out/'05_trainer.html').exists()
    home = (out/'index.html').read_text()
    assert 'sae_nb' in home and 'Train your first SAE' in home  # the sidebar reaches the tutorials
    nav = list(dict.fromkeys(h for h in re.findall(r'<a href="([^"#]+)" class="md-nav__link', home) if h in pages))
    assert nav == pages, f"the site's navigation is not in nbs/sidebar.yml's order: {nav}"

def test_every_link_lands_on_a_built_page_and_anchor(site):
    "Local links and images resolve, #anchor included; links to the published site (doc_host + doc_baseurl) hit pages."
    out, docs = site
    out = out.resolve()
    url, refs = docs.site_url(), {p.resolve(): _refs(p) for p in out.rglob('*.html')}
    broken, checked = [], 0
    def target(page, path):  # '/x': from the site root
        return (out/path.lstrip('/') if path.startswith('/') else page.parent/path).resolve()
    for page, r in refs.items():
        for ref in r.links + r.images:
            u, where = urlparse(ref), f"{page.relative_to(out)} -> {ref}"
            if ref.startswith(url):
                checked += 1
                path = unquote(ref[len(url):].split('#')[0]).lstrip('/') or 'index.html'
                if not (out/path).is_file(): broken.append(where)
            elif _internal(ref) and u.path:
                checked += 1
                t = target(page, unquote(u.path))
                if not (t.is_file() or (t/'index.html').is_file()): broken.append(where)
                elif u.fragment and t in refs and unquote(u.fragment) not in refs[t].ids:
                    broken.append(where + ' (no such anchor)')
            elif ref.startswith('#') and len(ref) > 1:
                checked += 1
                if unquote(ref[1:]) not in r.ids: broken.append(where + ' (no such anchor)')
    readme = re.findall(re.escape(url) + r'/?([^)\s#"]*)', (ROOT/'README.md').read_text())
    broken += [f"README.md -> {url}/{p}" for p in readme if not (out/(p or 'index.html')).is_file()]
    assert checked > 500 and readme, f"only {checked} links checked"
    assert not broken, f"{len(broken)} of {checked} links are broken:\n" + '\n'.join(broken[:30])

def test_formulas_are_mathml_and_nothing_loads_from_another_host(site):
    out, _ = site
    remote, raw_tex = [], []
    for page in out.rglob('*.html'):
        r = _refs(page)
        remote += [f"{page.relative_to(out)}: {ref}" for ref in r.loads if urlparse(ref).netloc or ref.startswith('//')]
        tex = re.finditer(r'\$\$?[^$]{0,200}?\\[A-Za-z]+[^$]*\$', ''.join(r.prose))  # a $ then a \command in the prose
        raw_tex += [f"{page.relative_to(out)}: {m[0][:60]!r}" for m in tex]
    assert not remote, "pages load from other hosts (the site must work offline):\n" + '\n'.join(remote[:20])
    losses = (out/'losses.html').read_text()
    assert losses.count('<math') >= 10 and ('&#x02211;' in losses or '\u2211' in losses), "losses.html shows no sum"
    assert not raw_tex, "formulas left as TeX:\n" + '\n'.join(raw_tex[:20])

def test_render_math_leaves_code_and_prices_alone():
    docs = _build_docs()
    md = "$x_1$ and `$x$` and ``a $b$ c`` cost $5 and $10, \\$y$.\n```python\nprint('$z$')\n```\n$$\\sum_i a_i$$"
    res = docs.render_math(md)
    assert res.count('<math') == 2 and '<math display="block">' in res
    assert "`$x$`" in res and "``a $b$ c``" in res and "print('$z$')" in res and "$5 and $10" in res and "\\$y$" in res

def test_links_to_the_published_site_become_relative():
    docs = _build_docs()
    url = 'https://example.org/sae_nb'
    md = f"[a]({url}/trainer.html#sparseautoencoder.from_pretrained) [b]({url}) [c]({url}_other/x.html)"
    assert docs.site_links(md, 'tutorials/first_sae.html', url) == \
        f"[a](../trainer.html#sparseautoencoderfrom_pretrained) [b](../index.html) [c]({url}_other/x.html)"

def test_source_links_only_where_settings_name_a_source_url(site):
    out, docs = site
    cfg = docs.settings()
    assert not cfg.get('source_url'), "this test expects settings.ini without source_url"
    dead = [f"{p.relative_to(out)}: {l}" for p in out.rglob('*.html') for l in _refs(p).links
            if l.startswith(cfg['git_url'])]
    assert not dead, f"{len(dead)} links into git_url, which names no repository:\n" + '\n'.join(dead[:10])
    attrs = '{target="_blank" style="float:right"}'
    link = f"[source]({cfg['git_url']}/blob/{cfg['branch']}/sae_nb/data.py#L44){attrs}"
    md = f"---\n\n{link}\n\n### X\n"
    assert docs.source_links(md, dict(cfg, source_url='https://code.example/sae/tree/v1/')) == \
        "---\n\n[source](https://code.example/sae/tree/v1/sae_nb/data.py#L44)\n\n### X\n"
    assert '[source]' not in docs.source_links(md, cfg)

def test_signatures_of_classes_with_fields_show_the_fields(site):
    "fastcore renders a NamedTuple as `(*args, **kwargs)`; a class with named fields must show them."
    out, docs = site
    bad = []
    for page in out.rglob('*.html'):
        for name in re.findall(r'\bdef ([\w.]+)\(\s*\*args, \*\*kwargs\s*\)', _text(page)):
            obj = docs.package_symbol(name)
            if getattr(obj, '_fields', None) or getattr(obj, '__dataclass_fields__', None):
                bad.append(f"{page.relative_to(out)}: {name}")
    assert not bad, "signatures without the class's fields:\n" + '\n'.join(bad)
    arch = _text(out/'architecture.html')
    assert re.search(r'def Encoded\(\s*h:Optional\[torch\.Tensor\], # \[batch, latent_dim\]', arch)
    assert 'top_vals:Optional[torch.Tensor]=None' in arch

def test_progress_bars_show_their_last_state_not_stderr(site):
    out, _ = site
    stderr = re.compile(r'data-mime-type="application/vnd.jupyter.stderr">(.*?)</div>', re.S)
    progress = [f"{p.relative_to(out)}: {m[1][:80]!r}" for p in out.rglob('*.html')
                for m in stderr.finditer(p.read_text()) if re.search(r'\r|\d+%\||\d+/\d+ \[', m[1])]
    assert not progress, "progress bars shown as stderr:\n" + '\n'.join(progress)
    tour = _text(out/'tutorials/first_sae.html')
    assert len(re.findall(r'training: +\d+%', tour)) == 1 and 'training: 100%' in tour, "no single, finished bar"

def test_api_pages_show_signatures_plots_and_tables(site):
    out, _ = site
    arch = (out/'architecture.html').read_text()
    assert 'SparseAutoencoder.encode_full' in arch, "show_doc's heading is missing from the API page"
    assert 'class="nf">encode_full' in arch and '# [batch, input_dim]' in arch, "no signature with its docments"
    assert '<table' in (out/'kernels.html').read_text(), "markdown tables do not render"
    bench = (out/'benchmarks.html').read_text()
    assert 'data:image/png;base64' in bench or '<img' in bench, "the benchmarks page lost its plots"

def test_every_page_loads_in_chromium_and_screenshots_are_saved(site):
    out, docs = site
    for nb in docs.sidebar_notebooks():
        page = out/docs.page_of(nb)
        dom = _browser('--dump-dom', page.as_uri())
        title = docs.notebook_title(ROOT/'nbs'/nb) if nb != 'index.ipynb' else 'sae_nb'
        assert '<body' in dom and title.split()[0] in dom, f"{nb}: Chromium rendered no page"
    ARTIFACTS.mkdir(exist_ok=True)
    shots = (('home.png', 'index.html'), ('api_architecture.png', 'architecture.html'), ('formulas.png', 'losses.html'))
    for name, page in shots:
        shot = ARTIFACTS/name
        shot.unlink(missing_ok=True)
        _browser(f'--screenshot={shot}', '--window-size=1280,1600', (out/page).as_uri())
        assert shot.is_file() and shot.stat().st_size > 20_000, f"{name}: no screenshot (or a blank one)"
