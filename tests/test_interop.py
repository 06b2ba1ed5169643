"""Interchange with SAELens and sparsify. The committed fixtures are checked by nbs/02b_formats.ipynb in every run;
here the slow suite rebuilds them with the real libraries, installed into their own environment, and checks again."""
import subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT/'tests'/'fixtures'/'interop'


@pytest.mark.slow
def test_live_round_trip_through_the_real_libraries(tmp_path):
    setup = subprocess.run(['bash', str(ROOT/'tests'/'interop'/'setup.sh')], capture_output=True, text=True, timeout=1800)
    if setup.returncode != 0:  # the libraries come from PyPI: without it there is nothing to run them with
        pytest.skip(f"SAELens and sparsify could not be installed: {setup.stderr.strip().splitlines()[-1:]}")
    python = ROOT/'.interop-venv'/'bin'/'python'
    made = subprocess.run([str(python), str(ROOT/'tests'/'interop'/'make_fixtures.py'), '--out', str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stderr[-3000:]
    from sae_nb.formats import interchange_report
    rows = interchange_report(tmp_path)
    failed = [(r['variant'], r['direction'], r['result']) for r in rows if not r['ok']]
    assert not failed, failed
    committed = sorted(p.name for p in FIXTURES.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == committed, "the committed fixtures are out of date: rerun make_fixtures.py"
