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
def _scratch_tempdir():
    "Every temporary folder the tests and their subprocesses make goes in one, removed when the session ends."
    if os.environ.get('SAE_NB_SCRATCH'):  # under .ci/test, whose scratch folder is removed when it exits
        yield; return
    from sae_nb.testing import scratch_tempdir
    with scratch_tempdir('sae_nb-pytest-'): yield  # a short path: Chromium's and wandb's sockets live under it
