"""Nothing is lost under faults: training and capture processes killed with SIGKILL (once, and at 20 random
moments), and a full or read-only disk while checkpointing. Training runs on CPU with one thread, so its arithmetic
is deterministic and a resumed run must end with exactly the weights of an uninterrupted one."""
import errno, json, os, random, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch

TRAIN = textwrap.dedent('''
    import sys, torch
    torch.set_num_threads(1)
    from sae_nb.config import SAEConfig
    from sae_nb.trainer import SAETrainer, Callback
    from sae_nb.testing import synthetic_activations
    ckpt, resume, epochs = sys.argv[1], sys.argv[2] == 'resume', int(sys.argv[3])
    x = synthetic_activations(n_tokens=20_000, input_dim=32, n_features=128, seed=3).x
    cfg = SAEConfig(input_dim=32, expansion_factor=4, k=4, batch_size=128, max_epochs=epochs, learning_rate=3e-3,
                    warmup_steps=10, lr_schedule='cosine', log_every=3, eval_every=40, eval_tokens=1024,
                    dead_feature_window=4_000, resample_dead_every=60, checkpoint_every=4, keep_checkpoints=2,
                    checkpoint_dir=ckpt, device='cpu')
    class ReportStart(Callback):
        def on_start(self, trainer): print('start', trainer.state.step, flush=True)
    trainer = SAETrainer(cfg, progress=False, callbacks=[ReportStart()]).train(x, resume_from=ckpt if resume else None)
    trainer.sae.save(ckpt + '/final')
''')

def _start(script:str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', script, *map(str, args)], stdout=subprocess.PIPE, text=True)

def _weights(folder:Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(folder/'sae.safetensors'))

def _assert_same_weights(a:Path, b:Path):
    want, got = _weights(a), _weights(b)
    assert want.keys() == got.keys()
    for name in want: assert torch.equal(want[name], got[name]), f"{name} differs after kill -9 and resume"

def test_kill_9_after_the_first_checkpoint_then_resume_gives_the_uninterrupted_weights(tmp_path):
    from sae_nb.trainer import list_checkpoints
    straight, killed = tmp_path/'straight', tmp_path/'killed'
    assert _start(TRAIN, straight, 'fresh', 2).wait(timeout=300) == 0
    proc = _start(TRAIN, killed, 'fresh', 2)
    deadline = time.time() + 120
    while not list_checkpoints(killed) and time.time() < deadline: time.sleep(0.02)
    time.sleep(0.3)  # on past the first checkpoint, into later steps and checkpoint writes
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (killed/'final').exists(), "the run finished before it could be killed: make it longer"
    resume = _start(TRAIN, killed, 'resume', 2)
    out, _ = resume.communicate(timeout=300)
    assert resume.returncode == 0
    start = int(out.split()[1])
    assert start > 0, "the resumed run started from step 0: it did not continue from a checkpoint"
    _assert_same_weights(straight/'final', killed/'final')

@pytest.mark.slow
def test_training_killed_at_20_random_moments_resumes_to_the_uninterrupted_weights(tmp_path):
    from sae_nb.trainer import load_checkpoint, list_checkpoints
    straight = tmp_path/'straight'
    assert _start(TRAIN, straight, 'fresh', 12).wait(timeout=600) == 0
    ckpt, rng, kills, steps_seen = tmp_path/'killed', random.Random(0), 0, []
    while kills < 20:
        proc = _start(TRAIN, ckpt, 'resume' if list_checkpoints(ckpt) else 'fresh', 12)
        line = proc.stdout.readline()  # training has begun: imports and data are done
        steps_seen.append(int(line.split()[1]))
        time.sleep(rng.uniform(0.0, 0.25))  # lands in a step, a checkpoint write (every 4 steps) or a log (every 3)
        proc.send_signal(signal.SIGKILL); proc.wait()
        assert not (ckpt/'final').exists(), "the run finished before its 20th kill: make it longer"
        kills += 1
        if list_checkpoints(ckpt):
            sae, payload, path = load_checkpoint(ckpt)  # the newest complete checkpoint always loads
            assert payload['step'] == int(path.name.split('_')[1]) and sae.W_dec.isfinite().all()
    assert steps_seen[-1] > 0 and sorted(steps_seen) == steps_seen, f"resumes did not move forward: {steps_seen}"
    assert _start(TRAIN, ckpt, 'resume', 12).wait(timeout=600) == 0
    _assert_same_weights(straight/'final', ckpt/'final')

CAPTURE = textwrap.dedent('''
    import sys, torch
    torch.set_num_threads(1)
    from sae_nb.data import ActivationStore
    from sae_nb.testing import tiny_gpt2
    model, tok = tiny_gpt2()
    texts = [f"line {i}: " + "to be or not to be, that is the question " * (1 + i % 5) for i in range(3000)]
    print('start', flush=True)
    run = ActivationStore(sys.argv[1]).capture(model, tok, texts, layers=1, shard_tokens=2048, text_batch_size=16, progress=False)
    print('done', run, flush=True)
''')

@pytest.mark.slow
def test_capture_killed_at_random_moments_never_leaves_a_run_that_looks_complete(tmp_path):
    from sae_nb.data import ActivationStore
    store, rng = ActivationStore(tmp_path), random.Random(1)
    for _ in range(6):
        proc = _start(CAPTURE, tmp_path)
        proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 3.0))
        proc.send_signal(signal.SIGKILL); proc.wait()
        for run in store.runs():  # a run that looks complete must be complete: every shard there, every checksum right
            assert len(store.load_run(run, verify=True)) == store.meta(run)['tokens']
        assert all(not (d/'meta.json').exists() or d.name in store.runs() for d in store.root.glob('*'))
    out, _ = _start(CAPTURE, tmp_path).communicate(timeout=600)  # capturing again finishes (or finds) the run
    run = out.split('done')[1].split()[0]
    assert store.runs() == [run]
    meta = store.meta(run)
    assert len(store.load_run(run, verify=True)) == meta['tokens'] > 0 and len(meta['shards']) > 3

def _trainer(tmp_path, **kw):
    from sae_nb.config import SAEConfig
    from sae_nb.trainer import SAETrainer
    cfg = SAEConfig(input_dim=8, expansion_factor=2, k=2, batch_size=32, checkpoint_every=0, eval_every=0,
                    checkpoint_dir=str(tmp_path/'ckpt'), device='cpu', **kw)
    tr = SAETrainer(cfg, progress=False)
    return tr.train(torch.randn(64, 8))

@pytest.mark.parametrize('err, words', [(errno.ENOSPC, 'No space left'), (errno.EROFS, 'Read-only file system')])
def test_full_or_read_only_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, err, words):
    from sae_nb import trainer as T
    tr = _trainer(tmp_path)
    first = tr.last_checkpoint
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    tr.state.step += 1
    real_save = torch.save
    def failing_save(obj, f, *a, **k):  # the disk fills (or turns read-only) half-way through the write
        Path(f).write_bytes(b'partial')
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(T.torch, 'save', failing_save)
    with pytest.raises(OSError) as e: T.save_checkpoint(tr, tr.cfg.checkpoint_dir)
    msg = str(e.value)
    assert words in msg and 'previous checkpoints are untouched' in msg and 'checkpoint_dir' in msg
    monkeypatch.setattr(T.torch, 'save', real_save)
    assert T.list_checkpoints(tr.cfg.checkpoint_dir) == [first]  # nothing half-written beside it
    assert not list(Path(tr.cfg.checkpoint_dir).glob('.tmp-*'))
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    T.load_checkpoint(first)

def test_read_only_checkpoint_folder_says_so(tmp_path, monkeypatch):
    import tempfile
    from sae_nb import trainer as T
    tr = _trainer(tmp_path)
    first = tr.last_checkpoint
    def read_only(*a, **k): raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(T.tempfile, 'mkdtemp', read_only)
    tr.state.step += 1
    with pytest.raises(OSError, match='Read-only file system.*previous checkpoints are untouched'):
        T.save_checkpoint(tr, tr.cfg.checkpoint_dir)
    monkeypatch.undo()
    assert T.list_checkpoints(tr.cfg.checkpoint_dir) == [first]
