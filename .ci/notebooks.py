"""Run the notebooks as tests, as `nbdev_test` does, and fail when a committed output no longer matches a fresh run.

Every figure a notebook shows (in printed text, returned values and markdown tables) must be what the current code
gives: each number is compared with the committed one, within the last digit printed (and a relative 1e-6 for
float noise). A number printed with a unit of time or speed (`0.4s`, `106 ms`, `38,483 tokens/s`, `2.5x`) is a
timing and only counted, as is one after a timing key (`'seconds': 3.7`); cells whose other figures vary from run to run (a table of timings) say so with a comment
line starting `# output varies`, and only their shape is checked: the same count of numbers. Images and stderr (progress bars)
are not compared. Outputs are regenerated with `bash .ci/nb NAME` (the same single-threaded settings as here).

    python .ci/notebooks.py [--flags "slow gpu"] [--n_workers 2] [--timing] [notebook or folder ...]
"""
import argparse, json, os, re, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r'(?<![\w.])[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?!\d)')
VARIES = re.compile(r'^#\s*output varies', re.M)
TIMING = re.compile(r'\s?(?:s|ms|µs|us|sec|secs|seconds|minutes|min|h|tokens/s|tok/s|it/s|steps/s|GFLOP/s|TFLOP/s|GB/s|MB/s|x|×)'
                    r'(?![\w/])')


def _text(outputs:list) -> str:
    "The comparable text of a cell's outputs: stdout, returned values and markdown/plain displays."
    parts = []
    for o in outputs:
        if o.get('output_type') == 'stream':
            if o.get('name') == 'stdout': parts.append(''.join(o.get('text', '')))
        elif o.get('output_type') in ('execute_result', 'display_data'):
            data = o.get('data', {})
            for kind in ('text/markdown', 'text/plain'):
                if kind in data and not ('image/png' in data and kind == 'text/plain'):  # a figure's repr holds an address
                    parts.append(''.join(data[kind])); break
    return '\n'.join(parts)


TIMING_KEY = re.compile(r'(?:seconds|secs|_s|per_s|time|ms_per_step)[\'"]?\s*[:=|]\s*$')  # `'seconds': 3.7`, `| time_s | 9.2`

def _numbers(text:str) -> list:
    "Each number in `text`, and whether it is a timing (a unit of time or speed follows it, or a timing key precedes it)."
    return [(m.group(0), bool(TIMING.match(text, m.end()) or TIMING_KEY.search(text, max(0, m.start() - 40), m.start())))
            for m in NUMBER.finditer(text)]


def _value(s:str) -> float: return float(s.replace(',', ''))


def _same(committed:str, fresh:str) -> bool:
    "Equal within the last digit `committed` prints (and float noise)."
    a, b = _value(committed), _value(fresh)
    mantissa = committed.replace(',', '').lstrip('+-').split('e')[0].split('E')[0]
    exponent = int(re.split('[eE]', committed)[1]) if re.search('[eE]', committed) else 0
    decimals = len(mantissa.split('.')[1]) if '.' in mantissa else 0
    return abs(a - b) <= 10 ** (exponent - decimals) + 1e-6 * abs(a)


def compare(committed:list, fresh:list, varies:bool) -> str:
    "Why the fresh outputs of a cell do not match the committed ones ('' when they match)."
    old, new = _text(committed), _text(fresh)
    if bool(old.strip()) != bool(new.strip()):
        return 'the cell now shows nothing' if old.strip() else 'the cell shows output that is not committed'
    a, b = _numbers(old), _numbers(new)
    if len(a) != len(b): return f"{len(a)} figures committed, {len(b)} now"
    if varies: return ''
    diffs = [(x, y) for (x, timing), (y, _) in zip(a, b) if not timing and not _same(x, y)]
    return ', '.join(f"{x} → {y}" for x, y in diffs[:6]) + (f" (+{len(diffs) - 6} more)" if len(diffs) > 6 else '')


def run_notebook(fn:Path, skip_flags:set):
    "Execute `fn` like nbdev's test_nb; returns (passed, seconds, stale outputs as text)."
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    from nbdev.process import NBProcessor
    from nbdev.frontmatter import FrontmatterProc
    os.environ['IN_TEST'] = '1'
    nb = NBProcessor(fn, procs=FrontmatterProc, process=True).nb
    committed, ran = {}, set()
    def skip(cell):
        if cell.cell_type != 'code' or 'nbdev_export' + '(' in cell.source: return True
        direc = getattr(cell, 'directives_', {}) or {}
        if direc.get('eval:', [''])[0].lower() == 'false' or skip_flags & direc.keys(): return True
        committed[id(cell)] = cell.get('outputs', [])
        cell.outputs = []  # execnb keeps old outputs when a cell now shows nothing
        ran.add(id(cell))
        return False
    from sae_nb.testing import scratch_tempdir
    start, shell = time.time(), CaptureShell(fn)
    try:  # the notebook's temporary folders (and its subprocesses') go in one, removed when it ends
        with scratch_tempdir(f'{fn.stem}-'), working_directory(fn.parent):
            shell.run_all(nb, exc_stop=True, preproc=skip)
    except Exception:
        sys.stderr.write(shell.prettytb(fname=fn) + '\n')
        return False, time.time() - start, ''
    stale = []
    for i, cell in enumerate(nb.cells):
        if id(cell) not in ran: continue
        why = compare(committed[id(cell)], cell.get('outputs', []), bool(VARIES.search(cell.source)))
        if why: stale.append(f"  cell {i} ({cell.source.strip().splitlines()[0][:70]!r}): {why}")
    return not stale, time.time() - start, '\n'.join(stale)


def _notebooks(paths:list) -> list:
    found = []
    for p in map(Path, paths or [ROOT/'nbs']):
        if p.is_file(): found.append(p.resolve()); continue
        top = sorted(p.glob('*.ipynb'))  # like nbdev_test: a folder with a .notest file is left out of a folder run
        if not (p/'.notest').exists() or paths: found += [f.resolve() for f in top if not f.name.startswith('_')]
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('paths', nargs='*')
    ap.add_argument('--flags', default='', help='test flags to run that are normally skipped (e.g. "slow")')
    ap.add_argument('--n_workers', type=int, default=2)
    ap.add_argument('--timing', action='store_true')
    args = ap.parse_args(argv)
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context
    from nbdev.config import get_config
    skip = set(get_config().tst_flags.split()) - set(args.flags.split())
    # Triton's interpreter (02a_kernels' checks without a GPU) must be chosen before anything imports Triton, and a
    # worker runs several notebooks: one that imports it first (transformers may) would leave 02a without it
    import torch
    if not torch.cuda.is_available(): os.environ.setdefault('TRITON_INTERPRET', '1')
    files = _notebooks(args.paths)
    with ProcessPoolExecutor(max(1, min(args.n_workers, len(files))), mp_context=get_context('fork')) as pool:
        # by module name: IPython replaces __main__ in a worker once it has run a notebook
        sys.path.insert(0, str(Path(__file__).parent)); import notebooks
        results = list(pool.map(notebooks.run_notebook, files, [skip] * len(files)))
    failed = False
    for fn, (passed, seconds, stale) in zip(files, results):
        if stale: print(f"{fn.relative_to(ROOT)}: committed outputs are stale (regenerate: bash .ci/nb "
                        f"{fn.relative_to(ROOT/'nbs').with_suffix('')})\n{stale}")
        failed |= not passed
    if args.timing:
        for fn, (_, seconds, _) in sorted(zip(files, results), key=lambda r: -r[1][1]): print(f"{fn.name}: {seconds:.0f} s")
    print('Failed.' if failed else 'Success.')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
