"""Stores larger than memory: writing holds one shard at a time, reading holds the mixing buffer and one shard
whatever the size of the run (counted in rows, not timed), shards are mapped rather than read whole, and training
from a store resumes exactly, its held-out texts still held out."""
import os
from pathlib import Path

import pytest
import torch

from sae_nb.config import SAEConfig
from sae_nb.data import ActivationShardDataset, ActivationStore, Captured, StoreError
from sae_nb.trainer import Callback, SAETrainer


def most_in_flight(src) -> int:
    "The most rows `src` holds at once over its epochs: taken from its chunks and not yet given out."
    taken, chunks, given, most = [0], src._chunks, 0, 0
    def counted(epoch, g):
        for c in chunks(epoch, g): taken[0] += len(src._training_rows(c)); yield c  # held-out rows never enter
    src._chunks = counted
    for b in src: most = max(most, taken[0] - given); given += len(b)
    return most


def texts_of(n_tokens:int, width:int=4, text_len:int=10, seed:int=0) -> Captured:
    "Random activations of texts `text_len` tokens long."
    ids = torch.arange(n_tokens)
    return Captured({0: torch.randn(n_tokens, width, generator=torch.Generator().manual_seed(seed))}, ids,
                    ids // text_len, ids % text_len)


@pytest.mark.parametrize('run_length', [1, 4])
def test_rows_held_stay_under_buffer_plus_one_shard_as_the_store_grows(tmp_path, run_length):
    store, buffer, shard = ActivationStore(tmp_path), 2000, 500
    held = {}
    for multiple in (1, 4, 16):
        run = store.save_run(texts_of(multiple * buffer), shard_tokens=shard)
        src = ActivationShardDataset(store, run, batch_size=128, buffer_tokens=buffer, epochs=2, run_length=run_length)
        src.hold_out(300)  # the held-out pool is read too, before training
        held[multiple] = most_in_flight(src)
    assert all(h < buffer + shard for h in held.values()), held
    assert held[16] <= held[4] + shard and held[16] < 16 * buffer / 10  # does not grow with the run


def test_save_run_from_a_generator_holds_one_shard_and_equals_the_whole_tensor(tmp_path):
    store, x = ActivationStore(tmp_path), torch.randn(10_000, 6)
    files = lambda: sorted(store.root.rglob('*.safetensors'))
    unwritten = []
    def parts():
        for i in range(0, len(x), 700):
            unwritten.append(i - sum(_rows(f) for f in files()))  # rows taken that no shard file holds yet
            yield x[i:i + 700]
    run = store.save_run(parts(), shard_tokens=2000)
    assert max(unwritten) < 2000 + 700
    assert store.save_run(x, shard_tokens=2000) == run  # the same bytes, the same run
    assert torch.equal(store.load_run(run), x)
    meta = store.meta(run)
    assert meta['tokens'] == 10_000 and meta['n_texts'] == 10_000 and meta['dtype'] == 'float32'
    assert [p.name for p in store.root.iterdir()] == [run]  # no temporary folder left


def _rows(path:Path) -> int:
    from safetensors import safe_open
    with safe_open(str(path), 'pt') as f: return f.get_slice('activations').get_shape()[0]


def test_a_save_that_fails_half_way_leaves_nothing(tmp_path):
    store = ActivationStore(tmp_path/'store')
    def parts():
        for _ in range(5): yield torch.randn(1000, 4)
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"): store.save_run(parts(), shard_tokens=1000)
    assert not (tmp_path/'store').exists()  # no run, no temporary folder, no empty store folders
    with pytest.raises(StoreError, match="Nothing to store"): store.save_run(iter([]))
    with pytest.raises(TypeError, match="give tensors of"): store.save_run([torch.zeros(3, 4), 'text'])
    assert store.runs() == []


@pytest.mark.parametrize('bad', [0, -5, 2.5, None])
def test_a_bad_buffer_size_is_refused_by_name(tmp_path, bad):
    store = ActivationStore(tmp_path)
    run = store.save_run(torch.randn(100, 4))
    with pytest.raises(ValueError, match=f"buffer_tokens={bad!r} must be a whole number of tokens, at least 1"):
        ActivationShardDataset(store, run, buffer_tokens=bad)


@pytest.mark.skipif(not Path('/proc/self/status').exists(), reason="reads RssAnon from /proc (Linux)")
def test_a_shard_is_mapped_not_read_until_rows_are_taken(tmp_path):
    store = ActivationStore(tmp_path)
    run = store.save_run(torch.randn(65_536, 128), shard_tokens=65_536)  # one shard of 32 MiB
    anon = lambda: int(next(l for l in open('/proc/self/status') if l.startswith('RssAnon')).split()[1]) * 1024
    before = anon()
    shard = store.load_shard(run, 0, verify=True)
    assert anon() - before < 8 * 2**20  # the 32 MiB of activations are not copied into memory
    assert shard['activations'].shape == (65_536, 128) and torch.isfinite(shard['activations'][-1]).all()


def _train(store, run, ckpt:Path, stop_at=None, resume=False) -> dict:
    cfg = SAEConfig(input_dim=8, expansion_factor=4, k=4, batch_size=128, max_epochs=2, learning_rate=3e-3,
                    warmup_steps=5, lr_schedule='cosine', log_every=3, eval_every=20, eval_tokens=400,
                    checkpoint_every=7, keep_checkpoints=2, checkpoint_dir=str(ckpt), device='cpu')
    class Crash(Callback):
        def on_step(self, trainer):
            if trainer.state.step == stop_at: raise KeyboardInterrupt("killed")
    src = ActivationShardDataset(store, run, batch_size=128, epochs=2, buffer_tokens=1000)
    trainer = SAETrainer(cfg, progress=False, callbacks=[Crash()])
    trainer.train(src, resume_from=ckpt if resume else None)
    return trainer, src


def test_training_from_a_store_resumes_exactly_with_the_same_texts_held_out(tmp_path):
    threads = torch.get_num_threads(); torch.set_num_threads(1)  # deterministic arithmetic
    try:
        store = ActivationStore(tmp_path/'store')
        run = store.save_run(texts_of(6000, width=8, seed=1), shard_tokens=700)
        whole, _ = _train(store, run, tmp_path/'a')
        with pytest.raises(KeyboardInterrupt): _train(store, run, tmp_path/'b', stop_at=31)
        resumed, src = _train(store, run, tmp_path/'b', resume=True)
        for name, want in whole.sae.state_dict().items():
            assert torch.equal(want, resumed.sae.state_dict()[name]), f"{name} differs after the resume"
        assert resumed.state.split == whole.state.split and resumed.state.split['texts'] > 0
        held = torch.tensor(resumed.state.split['text_ids'])
        src.load_state_dict(dict(epoch=0, batch_in_epoch=0, tokens_seen=0))  # one more pass: what training saw
        seen = torch.cat([b.sequence_ids for b in src])
        assert not torch.isin(seen, held).any() and len(seen) == 2 * (6000 - resumed.state.split['tokens'])
    finally: torch.set_num_threads(threads)


def test_capture_writes_each_shard_as_it_fills(tmp_path, monkeypatch):
    import sae_nb.data as data
    model, tok = data.load_model('tiny-gpt2')
    store, real, unwritten, parts = ActivationStore(tmp_path), data.iter_captures, [], []
    def counted(*args, **kwargs):
        taken = 0
        for cap in real(*args, **kwargs):
            unwritten.append(taken - sum(_rows(f) for f in store.root.rglob('*.safetensors')))  # not yet in a shard
            taken += len(cap); parts.append(len(cap))
            yield cap
    monkeypatch.setattr(data, 'iter_captures', counted)
    texts = data.load_texts('shakespeare')[:160]
    run = store.capture(model, tok, texts, layers=1, shard_tokens=1000, text_batch_size=4, progress=False)
    meta = store.meta(run)
    assert meta['tokens'] > 10 * 1000 and len(meta['shards']) > 10
    assert max(unwritten) < 1000 + max(parts)  # one shard and one batch of texts, not the corpus
