"""A training process killed with SIGKILL and resumed from its newest checkpoint ends with exactly the weights of
an uninterrupted run (on CPU, one thread, so the arithmetic is deterministic)."""
import os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import torch

SCRIPT = textwrap.dedent('''
    import sys, torch
    torch.set_num_threads(1)
    from sae_nb.config import SAEConfig
    from sae_nb.trainer import SAETrainer, Callback
    from sae_nb.testing import synthetic_activations
    ckpt, resume = sys.argv[1], sys.argv[2] == 'resume'
    x = synthetic_activations(n_tokens=40_000, input_dim=32, n_features=128, seed=3).x
    cfg = SAEConfig(input_dim=32, expansion_factor=4, k=4, batch_size=256, max_epochs=2, learning_rate=3e-3,
                    warmup_steps=10, lr_schedule='cosine', log_every=5, eval_every=25, eval_tokens=1024,
                    dead_feature_window=5_000, resample_dead_every=50, checkpoint_every=7, keep_checkpoints=2,
                    checkpoint_dir=ckpt, device='cpu')
    class ReportStart(Callback):
        def on_start(self, trainer): print('start step', trainer.state.step, 'of', trainer.total_steps, flush=True)
    trainer = SAETrainer(cfg, progress=False, callbacks=[ReportStart()]).train(x, resume_from=ckpt if resume else None)
    trainer.sae.save(ckpt + '/final')
''')

def run(ckpt:Path, mode:str, **kw):
    return subprocess.Popen([sys.executable, '-c', SCRIPT, str(ckpt), mode], **kw)

def final_weights(ckpt:Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(ckpt/'final'/'sae.safetensors'))

def test_kill_9_then_resume_gives_the_uninterrupted_weights(tmp_path):
    straight = tmp_path/'straight'
    assert run(straight, 'fresh').wait(timeout=300) == 0
    killed = tmp_path/'killed'
    proc = run(killed, 'fresh')
    deadline = time.time() + 120
    while not any(killed.glob('step_*')) and time.time() < deadline: time.sleep(0.05)
    time.sleep(0.3)  # let it run on past the first checkpoint, into later steps and checkpoint writes
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (killed/'final').exists(), "the run finished before it could be killed: make it longer"
    resume = run(killed, 'resume', stdout=subprocess.PIPE, text=True)
    out, _ = resume.communicate(timeout=300)
    assert resume.returncode == 0
    start, total = (int(w) for w in out.split('start step')[1].split()[::2][:2])
    assert 0 < start < total, f"the resumed run started at step {start} of {total}: it did not continue from a checkpoint"
    want, got = final_weights(straight), final_weights(killed)
    assert want.keys() == got.keys()
    for name in want: assert torch.equal(want[name], got[name]), f"{name} differs after kill -9 and resume"
