"""Transcoders and skip-transcoders (02c_transcoders) beyond what the notebook shows: a resumed run ends exactly where
an uninterrupted one does, held-out evaluation measures the target, data without a target is refused by name,
W_skip survives checkpoints and folding, the three train_sae modes capture the same pairs, and the command line
trains one in place of a module."""
from dataclasses import replace

import pytest
import torch

from sae_nb.architecture import SparseAutoencoder
from sae_nb.cli import run_command, sae_train
from sae_nb.config import SAEConfig
from sae_nb.data import ActivationStore, Batch, InMemoryActivations, load_texts
from sae_nb.evaluation import evaluate
from sae_nb.sweep import train_sweep
from sae_nb.testing import tiny_gpt2
from sae_nb.trainer import SAETrainer, load_checkpoint, resample_dead_latents, train_sae, train_step


@pytest.fixture(scope='module')
def pairs():
    "Inputs of a toy MLP with a linear part, and its outputs: [tokens, 16] each."
    g = torch.Generator().manual_seed(0)
    W1, W2 = torch.randn(16, 48, generator=g) / 4, torch.randn(48, 16, generator=g) / 7
    A = torch.randn(16, 16, generator=g)
    x = torch.randn(6_000, 16, generator=g)
    return x, torch.relu(x @ W1) @ W2 + x @ A

def _cfg(tmp_path, activation='skip_transcoder', **kw):
    return SAEConfig(**{**dict(input_dim=16, expansion_factor=4, k=6, activation=activation, batch_size=256,
                               learning_rate=3e-3, warmup_steps=2, log_every=2, eval_every=4, eval_tokens=512,
                               checkpoint_every=6, checkpoint_dir=str(tmp_path/'ckpt'), device='cpu'), **kw})

def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tmp_path, pairs):
    x, y = pairs
    full = SAETrainer(_cfg(tmp_path/'a'), progress=False).train(Batch(x, target=y))
    stopped = SAETrainer(replace(_cfg(tmp_path/'b'), max_steps=6), progress=False).train(Batch(x, target=y))
    sae, payload, _ = load_checkpoint(stopped.last_checkpoint)
    assert torch.equal(sae.W_skip, stopped.sae.W_skip) and sae.W_skip.abs().sum() > 0  # saved, and trained from zero
    assert torch.equal(payload['eval_meta']['target'], full.state.eval_meta['target'])  # held-out targets kept
    resumed = SAETrainer(_cfg(tmp_path/'b'), progress=False).train(Batch(x, target=y),
                                                                   resume_from=stopped.last_checkpoint)
    assert resumed.state.step == full.state.step
    for name, value in full.sae.state_dict().items(): assert torch.equal(resumed.sae.state_dict()[name], value), name
    assert resumed.history['fvu'] == full.history['fvu']
    assert resumed.state.eval_history == full.state.eval_history

def test_held_out_figures_measure_the_target(tmp_path, pairs):
    x, y = pairs
    trainer = SAETrainer(_cfg(tmp_path, max_epochs=6), progress=False).train(Batch(x, target=y))
    held = trainer.state.eval_batch
    assert held.target is not None and len(held) >= 512
    with torch.no_grad(): pred = trainer.sae(held.acts).x_hat
    expected = float((pred - held.target).pow(2).sum() / (held.target - held.target.mean(0)).pow(2).sum())
    assert trainer.state.eval_history['eval_fvu'][-1] == pytest.approx(expected, rel=1e-4)
    assert evaluate(trainer.sae, held).fvu == pytest.approx(expected, rel=1e-4)  # `evaluate` agrees
    assert expected < 0.5

def test_data_without_a_target_is_refused_by_name(tmp_path, pairs):
    x, y = pairs
    sae = SparseAutoencoder(_cfg(tmp_path, activation='transcoder'), device='cpu')
    opt = torch.optim.Adam(sae.parameters())
    with pytest.raises(ValueError, match="transcoder predicts another hook point.*the batch has no target"):
        train_step(sae, opt, x[:64], None)
    with pytest.raises(ValueError, match="give the data as a Batch with target="):
        evaluate(sae, x[:64])
    with pytest.raises(ValueError, match="one row per token"):
        SAETrainer(_cfg(tmp_path), progress=False).train(Batch(x, target=y[:, :8]))

def test_a_plain_sae_given_a_target_predicts_it(tmp_path, pairs):
    "The target rides in the batch whatever the variant: a top-k SAE given one is trained on input → target."
    x, y = pairs
    cfg = _cfg(tmp_path, activation='topk', eval_every=0, max_epochs=6)
    trainer = SAETrainer(cfg, progress=False).train(Batch(x, target=y))
    with torch.no_grad(): pred = trainer.sae(x).x_hat
    assert ((pred - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()) < 0.6

def test_a_sweep_trains_transcoders_beside_an_sae_on_one_stream(tmp_path, pairs):
    "Each config reads every batch once; the transcoders fit the batch's target."
    x, y = pairs
    configs = {'tc': _cfg(tmp_path/'1', activation='transcoder', eval_every=0),
               'skip': _cfg(tmp_path/'2', eval_every=0), 'relu_tc': _cfg(tmp_path/'3', eval_every=0,
                                                                      variant_settings={'latents': 'relu'},
                                                                      l1_penalty_coeff=1e-3)}
    results = train_sweep(configs, Batch(x, target=y))
    for name, trainer in zip(configs, results.trainers):
        assert trainer.state.tokens_seen == len(x), name
        assert trainer.history['fvu'][-1] < trainer.history['fvu'][0], name
    assert results.trainers[2].history['l1_loss'][-1] > 0  # ReLU latents: the L1 penalty is on

def test_folding_the_input_scale_keeps_the_outputs(tmp_path, pairs):
    x, y = pairs
    cfg = _cfg(tmp_path, normalize_activations='expected_average_only_in', eval_every=0, max_steps=8)
    sae = SAETrainer(cfg, progress=False).train(Batch(x * 30, target=y)).sae.eval()
    assert sae._scale != 1.0
    with torch.no_grad():
        before = sae(x[:64] * 30).x_hat
        after = sae.folded()(x[:64] * 30).x_hat
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)

def test_resampling_points_the_encoder_at_inputs_and_the_decoder_at_targets(tmp_path, pairs):
    x, y = pairs
    sae = SparseAutoencoder(_cfg(tmp_path, activation='transcoder'), device='cpu')
    dead = torch.zeros(64, dtype=torch.bool); dead[:3] = True
    with torch.no_grad(): y_hat = sae(x[:256]).x_hat
    assert resample_dead_latents(sae, torch.optim.Adam(sae.parameters()), y[:256], y_hat, dead,
                                 torch.Generator().manual_seed(0), inputs=x[:256]) == 3
    enc = torch.nn.functional.normalize(sae.W_enc[:, :3].T.detach(), dim=-1)
    dec = sae.W_dec[:3].detach()
    # each revived latent reads the input and writes the (bias-free) target of one and the same token
    cos_in = enc @ torch.nn.functional.normalize(x[:256], dim=-1).T
    cos_out = dec @ torch.nn.functional.normalize(y[:256] - sae.b_dec.detach(), dim=-1).T
    for i in range(3):
        token = int(cos_in[i].argmax())
        assert cos_in[i, token] > 0.999 and cos_out[i, token] > 0.999

@pytest.fixture(scope='module')
def tiny():
    model, tok = tiny_gpt2()
    return model, tok, load_texts('shakespeare')[:80]

def test_train_sae_modes_capture_the_same_pairs(tmp_path, tiny, monkeypatch):
    "Every mode trains on aligned pairs: each batch's target is the MLP applied to that batch's inputs, row by row."
    import sae_nb.trainer as trainer_module
    model, tok, texts = tiny
    mlp, real_step, misaligned = model.transformer.h[1].mlp, trainer_module.train_step, []
    def checked_step(sae, optimizer, batch, *args, **kwargs):
        with torch.no_grad(): misaligned.append(float((mlp(batch.acts) - batch.target).abs().max()))
        return real_step(sae, optimizer, batch, *args, **kwargs)
    monkeypatch.setattr(trainer_module, 'train_step', checked_step)
    cfg = SAEConfig(input_dim=32, expansion_factor=2, k=4, activation='skip_transcoder', batch_size=512, max_epochs=1,
                    warmup_steps=2, log_every=2, eval_every=0, checkpoint_dir=str(tmp_path/'ckpt'), device='cpu')
    seen = {}
    for mode in ('capture', 'memory', 'stream'):
        misaligned.clear()
        tr = train_sae(model, texts, cfg, layer='transformer.h.1.mlp:input', target_layer='transformer.h.1.mlp',
                       tokenizer=tok, mode=mode, store=tmp_path/'store', progress=False)
        seen[mode] = tr.state.tokens_seen
        assert tr.history['fvu'][-1] < 1.0, mode
        assert misaligned and max(misaligned) < 1e-4, (mode, max(misaligned, default=None))
    assert len(set(seen.values())) == 1, seen

def test_the_command_line_trains_one_in_place_of_a_module(tmp_path, tiny):
    out, store = tmp_path/'out', tmp_path/'store'
    argv = ['--model', 'tiny-gpt2', '--layer', 'transformer.h.1.mlp', '--activation', 'skip_transcoder',
            '--max-texts', '80', '--expansion-factor', '2', '--k', '4', '--batch-size', '512', '--max-epochs', '1',
            '--store', str(store), '--out', str(out), '--quiet', '--no-wandb']
    assert run_command(sae_train, argv) == 0
    sae = SparseAutoencoder.load(out/'sae')
    assert sae.cfg.activation == 'skip_transcoder' and 'W_skip' in dict(sae.named_parameters())
    st = ActivationStore(store)
    assert [st.meta(r)['layers'] for r in st.runs()] == [['transformer.h.1.mlp:input', 'transformer.h.1.mlp']]
    assert 'transformer.h.1.mlp' in (out/'report.md').read_text()
    # from the stored run: the two hook points named again
    run = st.run_dir(st.runs()[0])
    assert run_command(sae_train, ['--shard-dir', str(run), '--layer', 'transformer.h.1.mlp', '--activation',
                                   'transcoder', '--expansion-factor', '2', '--k', '4', '--batch-size', '512',
                                   '--max-epochs', '1', '--out', str(tmp_path/'again'), '--quiet', '--no-wandb']) == 0
    assert run_command(sae_train, argv[:4] + ['--target-layer', '2', '--out', str(tmp_path/'bad'), '--quiet']) == 2


def test_stored_pairs_are_read_shard_by_shard_up_to_max_tokens(tmp_path):
    "sae_eval reads a transcoder's stored (input, target) rows a shard at a time and stops at max_tokens, aligned."
    from sae_nb.data import Captured
    from sae_nb.evaluation import _stored_pairs
    n = 1000
    x = torch.randn(n, 8); y = x * 2 + 1  # the target of each row is a function of its input: alignment is checkable
    cap = Captured({'m:input': x, 'm': y}, torch.zeros(n, dtype=torch.long), torch.arange(n) // 50, torch.arange(n) % 50)
    st = ActivationStore(tmp_path/'store')
    run = st.save_run(cap, shard_tokens=128)
    got = _stored_pairs(st, run, 'm:input', 'm', max_tokens=300)
    assert len(got) == 300
    torch.testing.assert_close(got.target, got.acts * 2 + 1)
    assert len(_stored_pairs(st, run, 'm:input', 'm', max_tokens=10_000)) == n
