"""Tests marked `slow` or `gpu` run only when TEST_FLAGS names the flag, as nbdev_test does for notebook cells:
`TEST_FLAGS=slow bash .ci/test` runs the slow ones (a `gpu` test also needs CUDA)."""
import os
import pytest

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: takes minutes; runs with TEST_FLAGS=slow')
    config.addinivalue_line('markers', 'gpu: needs CUDA; runs with TEST_FLAGS=gpu')

def pytest_collection_modifyitems(config, items):
    flags = os.environ.get('TEST_FLAGS', '').split()
    for item in items:
        for flag in ('slow', 'gpu'):
            if flag in item.keywords and flag not in flags:
                item.add_marker(pytest.mark.skip(reason=f"flagged {flag}: run with TEST_FLAGS={flag}"))

@pytest.fixture(autouse=True, scope='session')
def _scratch_tempdir(tmp_path_factory):
    "Every temporary folder the tests and their subprocesses make goes under pytest's own, which it prunes."
    import tempfile
    before = tempfile.tempdir, os.environ.get('TMPDIR')
    tempfile.tempdir = os.environ['TMPDIR'] = str(tmp_path_factory.mktemp('scratch'))
    yield
    tempfile.tempdir = before[0]
    if before[1] is None: os.environ.pop('TMPDIR')
    else: os.environ['TMPDIR'] = before[1]
