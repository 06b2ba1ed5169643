"""Held-out evaluation is held out: for every way of giving data, no row that is evaluated on is ever given to `step`,
and the rows of one text fall on one side of the split only."""
import tempfile
from pathlib import Path

import pytest
import torch

from sae_nb.config import SAEConfig
from sae_nb.data import (ActivationStore, ActivationShardDataset, InMemoryActivations, StreamingActivations, as_batch,
                         collect_activations, load_texts, load_model)
from sae_nb.trainer import SAETrainer, Callback, train_sae
from sae_nb.sweep import train_sweep
from sae_nb.cli import sae_train


@pytest.fixture(scope='module')
def tiny():
    model, tok = load_model('tiny-gpt2')
    return model, tok, load_texts('shakespeare')[:120]


@pytest.fixture
def recorded(monkeypatch):
    "Every batch given to any trainer's `step`, as (trainer, batch) pairs."
    seen, step = [], SAETrainer.step
    def spy(self, batch):
        seen.append((self, as_batch(batch)))
        return step(self, batch)
    monkeypatch.setattr(SAETrainer, 'step', spy)
    return seen


def key(x):
    "A fingerprint of each row: exact float projections, equal only for equal rows."
    return set(map(tuple, (x.float() @ torch.linspace(-1, 1, x.shape[-1] * 2).view(x.shape[-1], 2)).tolist()))


def cfg(**kw):
    base = dict(input_dim=32, expansion_factor=2, k=4, batch_size=256, max_epochs=2, learning_rate=3e-3, warmup_steps=2,
                log_every=5, eval_every=5, eval_tokens=600, checkpoint_every=0, device='cpu',
                checkpoint_dir=tempfile.mkdtemp())
    return SAEConfig(**{**base, **kw})


def check_disjoint(trainer, batches, text_derived=True):
    "No trained row is a held-out row; with texts, no trained text is a held-out text, and held-out texts are whole."
    s = trainer.state
    assert s.eval_x is not None and s.split and s.split['tokens'] == len(s.eval_x) >= trainer.cfg.eval_tokens
    trained = torch.cat([b.acts for b in batches])
    if text_derived:  # a token is a (text, position); equal rows also occur in different texts (a first word)
        tokens = lambda b: set(zip(b.sequence_ids.tolist(), b.positions.tolist()))
        assert not set().union(*map(tokens, batches)) & tokens(s.eval_batch), "an evaluation token was trained on"
    else: assert not key(trained) & key(s.eval_x), "an evaluation row was trained on"
    held = torch.tensor(s.split['text_ids'])
    assert not torch.isin(torch.cat([b.sequence_ids for b in batches]), held).any(), "a held-out text was trained on"
    test_ids = s.eval_meta['sequence_ids']
    assert set(test_ids.tolist()) == set(held.tolist())
    if text_derived: assert s.split['texts'] < len(s.eval_x), "texts of one token: the split is not by whole texts"
    return trained


def test_tensor(recorded):
    x = torch.randn(6000, 32)
    tr = SAETrainer(cfg(), progress=False).train(x)
    trained = check_disjoint(tr, [b for t, b in recorded], text_derived=False)
    assert len(trained) == 2 * (6000 - len(tr.state.eval_x))   # everything else, every epoch
    assert key(trained) | key(tr.state.eval_x) == key(x)


def test_in_memory_with_texts(tiny, recorded):
    model, tok, texts = tiny
    cap = collect_activations(model, tok, texts, layer=1, progress=False)
    tr = SAETrainer(cfg(), progress=False).train(InMemoryActivations(cap, batch_size=256, epochs=2))
    check_disjoint(tr, [b for t, b in recorded])
    held = torch.isin(cap.sequence_ids, torch.tensor(tr.state.split['text_ids']))
    assert int(held.sum()) == len(tr.state.eval_x)   # every token of a held-out text is held out


@pytest.mark.parametrize('mode', ['capture', 'memory', 'stream'])
def test_train_sae(tiny, recorded, mode):
    model, tok, texts = tiny
    tr = train_sae(model, texts, cfg(), layer=1, tokenizer=tok, mode=mode, store=tempfile.mkdtemp(), progress=False)
    check_disjoint(tr, [b for t, b in recorded])


def test_store_source(tiny, recorded):
    model, tok, texts = tiny
    st = ActivationStore(tempfile.mkdtemp())
    run = st.capture(model, tok, texts, layers=1, shard_tokens=1500, progress=False)
    src = ActivationShardDataset(st, run, batch_size=256, epochs=2, buffer_tokens=2000)
    tr = SAETrainer(cfg(), progress=False).train(src)
    check_disjoint(tr, [b for t, b in recorded])
    assert tr.state.split['shards'] and tr.state.split['run_id'] == run


def test_streaming_source(tiny, recorded):
    model, tok, texts = tiny
    src = StreamingActivations(model, tok, texts, layer=1, batch_size=256, epochs=2, buffer_tokens=2000,
                               text_batch_size=16)
    tr = SAETrainer(cfg(), progress=False).train(src)
    check_disjoint(tr, [b for t, b in recorded])


def test_cli(tiny, recorded, tmp_path):
    summary = sae_train(model='tiny-gpt2', layer='1', max_texts=200, expansion_factor=2, k=4, batch_size=256,
                        max_epochs=2, store=str(tmp_path/'store'), out=str(tmp_path/'out'), quiet=True)
    trainers = {id(t): t for t, _ in recorded}
    assert len(trainers) == 1
    tr = next(iter(trainers.values()))
    check_disjoint(tr, [b for t, b in recorded])
    assert 'held-out tokens' in summary['measured_on'] and 'never trained on' in summary['measured_on']


def test_sweep(recorded):
    x = torch.randn(6000, 32)
    sweep = train_sweep({'a': cfg(batch_size=128), 'b': cfg(batch_size=512, expansion_factor=4)}, x)
    for tr in sweep.trainers:
        check_disjoint(tr, [b for t, b in recorded if t is tr], text_derived=False)


class Stop(Exception): pass


class StopAt(Callback):
    def __init__(self, n): self.n = n
    def on_step(self, trainer):
        if trainer.state.step == self.n: raise Stop()


def test_resume(tiny, recorded):
    model, tok, texts = tiny
    cap = collect_activations(model, tok, texts, layer=1, progress=False)
    c = cfg(checkpoint_every=5)
    source = lambda: InMemoryActivations(cap, batch_size=256, epochs=2)
    with pytest.raises(Stop): SAETrainer(c, progress=False, callbacks=[StopAt(7)]).train(source())
    before = list(recorded)
    tr = SAETrainer(c, progress=False).train(source(), resume_from=c.checkpoint_dir)
    assert 0 < len(before) < len(recorded)
    check_disjoint(tr, [b for t, b in recorded])   # before and after the resume
    straight = SAETrainer(cfg(), progress=False).train(source())
    assert straight.state.split == tr.state.split   # the same texts held out after a resume


def test_a_source_held_out_by_its_user(tiny, recorded):
    "Holding out by hand, then training: the trainer evaluates on those texts and holds nothing else out."
    model, tok, texts = tiny
    cap = collect_activations(model, tok, texts, layer=1, progress=False)
    src = InMemoryActivations(cap, batch_size=256, epochs=2)
    mine = src.hold_out(1000)
    tr = SAETrainer(cfg(), progress=False).train(src)
    check_disjoint(tr, [b for t, b in recorded])
    assert tr.state.split == src.split and torch.equal(tr.state.eval_x, mine.acts)
    assert src.n_tokens == len(cap) - len(mine)   # counted out once


def test_nothing_to_hold_out(tiny):
    "One text cannot be split: the run trains on it and makes no held-out figure, rather than failing."
    model, tok, texts = tiny
    src = StreamingActivations(model, tok, texts[:1], layer=1, batch_size=64, epochs=1)
    tr = SAETrainer(cfg(max_steps=2), progress=False).train(src)
    assert tr.state.split is None and tr.state.eval_x is None and tr.state.step == 2


def test_resume_refuses_a_checkpoint_without_its_split(tmp_path):
    "A checkpoint that does not say what it held out cannot be resumed without training on its evaluation tokens."
    c = cfg(checkpoint_every=5, checkpoint_dir=str(tmp_path))
    SAETrainer(c, progress=False).train(torch.randn(6000, 32))
    (ckpt,) = [p for p in sorted(tmp_path.glob('step_*'))][-1:]
    payload = torch.load(ckpt/'trainer_state.pt', weights_only=True)
    del payload['split']
    torch.save(payload, ckpt/'trainer_state.pt')
    with pytest.raises(Exception, match="recorded which texts it held out"):
        SAETrainer(c, progress=False).train(torch.randn(6000, 32), resume_from=ckpt)
