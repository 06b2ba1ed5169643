"""What Weights & Biases prints while sae_nb trains with a progress bar: nothing offline (the default), inside a git
repository or outside one, and one warning, before the bar, when an online run cannot start. The runs happen in a
fresh process whose stderr is read whole, as a user would see it. (`05_trainer` reads a run's logged metrics back.)"""
import os, re, shutil, subprocess, sys
from pathlib import Path

import pytest

SCRIPT = '''
import sys, torch
from functools import partial
import sae_nb.trainer as trainer
from sae_nb.config import SAEConfig
trainer.WandbCallback = partial(trainer.WandbCallback, timeout=3)  # an online start gives up after 3 s
for case in sys.argv[1:]:
    mode, folder = case.split('=')
    print(f'== {case}', file=sys.stderr, flush=True)
    cfg = SAEConfig(input_dim=8, expansion_factor=2, k=2, batch_size=32, log_every=2, eval_every=4, eval_tokens=64,
                    checkpoint_every=0, device='cpu', wandb_project='sae-nb-test', wandb_mode=mode, checkpoint_dir=folder)
    trainer.SAETrainer(cfg, progress=True).train(torch.randn(640, 8))
'''


@pytest.fixture(scope='module')
def printed(tmp_path_factory) -> dict:
    "Train offline outside a git repository and inside one, then online with no network: what each printed."
    tmp = tmp_path_factory.mktemp('wandb_output')
    outside, repo = tmp/'outside', tmp/'repo'
    outside.mkdir(); repo.mkdir()
    has_git = shutil.which('git') is not None
    if has_git: subprocess.run(['git', 'init', '-q', str(repo)], check=True)
    cases = {'offline, outside git': f'offline={outside}/run', 'online, no network': f'online={outside}/online'}
    if has_git: cases['offline, in a git repository'] = f'offline={repo}/run'  # the folder does not exist yet
    env = {k: v for k, v in os.environ.items() if not k.startswith('WANDB_')}  # wandb's defaults, as a user has them
    env.update(WANDB_API_KEY='x' * 40, WANDB_BASE_URL='http://127.0.0.1:9',  # a key, and a server that refuses
               WANDB_CONFIG_DIR=str(tmp/'config'), WANDB_CACHE_DIR=str(tmp/'cache'), WANDB_DATA_DIR=str(tmp/'data'))
    res = subprocess.run([sys.executable, '-c', SCRIPT, *cases.values()], cwd=outside, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    sections = re.split(r'^== (.*)$', res.stderr, flags=re.M)[1:]
    by_case = dict(zip(sections[::2], sections[1::2]))
    return {name: by_case[case] for name, case in cases.items()}


def _lines(text:str) -> list:
    "Lines as a terminal shows them: a progress bar redraws its line with carriage returns."
    return [l for l in re.split(r'[\r\n]', text) if l.strip()]


def test_offline_prints_nothing_but_the_progress_bar(printed):
    for name in ('offline, outside git', 'offline, in a git repository'):
        if name not in printed: continue
        other = [l for l in _lines(printed[name]) if not l.startswith('training:')]
        assert not other, f"{name}: wandb printed {other}"
        assert 'git root' not in printed[name]


def test_online_without_network_warns_once_before_the_bar(printed):
    text = printed['online, no network']
    about_wandb = [l for l in _lines(text) if 'wandb' in l.lower()]
    assert len(about_wandb) == 1, "expected one line about wandb:\n" + '\n'.join(about_wandb)
    line = about_wandb[0]
    assert 'UserWarning: wandb could not start an online run (CommError:' in line
    assert 'connection refused' in line and 'logging offline instead, in ' in line
    assert text.index('UserWarning') < text.index('training:'), "the warning broke into the progress bar"
    folder = Path(re.search(r'`wandb sync (\S+)`', line).group(1))
    assert folder.name.startswith('offline-run-') and any(folder.glob('run-*.wandb')), folder
    assert folder.parent.parent.name == 'online', f"not beside the checkpoints: {folder}"
