"""The variant design is open: a variant defined here, outside the package, registered by name, trains, logs its own
loss term, evaluates, saves, loads, resumes exactly, sweeps and is written in SAELens' layout, with no change to
sae_nb."""
import math
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sae_nb.architecture import Encoded, SparseAutoencoder, VARIANTS, register_variant, SAELensLayout, UnsupportedFormat
from sae_nb.config import SAEConfig, ConfigError
from sae_nb.evaluation import evaluate
from sae_nb.sweep import train_sweep
from sae_nb.testing import synthetic_activations
from sae_nb.trainer import SAETrainer


@dataclass(frozen=True)
class ShiftSettings:
    "A toy variant's own settings."
    shift:float = 0.1  # latents fire above this
    energy_coeff:float = 0.01  # weight of its own loss term
    def __post_init__(self):
        if self.shift < 0: raise ValueError(f"shift={self.shift} must be ≥ 0.")

def _setup(sae): sae.gain = nn.Parameter(torch.ones(sae.cfg.latent_dim))  # a parameter of its own

def _energy(sae, x, x_hat, h, **context):  # a loss term of its own, under its own name
    return {'energy_loss': (sae.cfg.variant.energy_coeff, h.pow(2).sum(-1).mean() / context['variance'])}

def _to_saelens(sae, t):  # relu(pre − shift)·gain is SAELens' standard SAE with the shift in b_enc, the gain in W_dec
    t['b_enc'] = t['b_enc'] - sae.cfg.variant.shift
    t['W_dec'] = t['W_dec'] * sae.gain.detach()[:, None]
    return {}

@register_variant('shifted_relu', setup=_setup, losses=_energy, settings=ShiftSettings,
                  formats={'saelens': SAELensLayout('standard', reads=(), save=_to_saelens)})
def shifted_relu(sae, pre): return Encoded(F.relu(pre - sae.cfg.variant.shift) * sae.gain)


@pytest.fixture(scope='module')
def data(): return synthetic_activations(n_tokens=6_000, input_dim=16, n_features=48, mean_active=3, seed=0)

def _cfg(tmp_path, **kw):
    return SAEConfig(**{**dict(input_dim=16, expansion_factor=4, activation='shifted_relu', variant_settings={'shift': 0.05},
                               batch_size=256, learning_rate=3e-3, warmup_steps=2, log_every=2, eval_every=4,
                               eval_tokens=512, checkpoint_every=6, checkpoint_dir=str(tmp_path/'ckpt'), device='cpu'),
                        **kw})

def test_its_settings_are_checked_like_any_other():
    assert 'shifted_relu' in VARIANTS
    assert SAEConfig(activation='shifted_relu').variant == ShiftSettings()
    with pytest.raises(ConfigError, match="'shfit', which the shifted_relu variant does not have; its settings: shift"):
        SAEConfig(activation='shifted_relu', variant_settings={'shfit': 0.2})
    with pytest.raises(ConfigError, match="shift=-1 must be ≥ 0"):
        SAEConfig(activation='shifted_relu', variant_settings={'shift': -1})

def test_it_trains_logs_its_own_term_and_evaluates(tmp_path, data):
    trainer = SAETrainer(_cfg(tmp_path), progress=False).train(data.x)
    h = trainer.history
    assert 'energy_loss' in h and len(h['energy_loss']) == len(h['step']) and all(math.isfinite(v) for v in h['energy_loss'])
    assert h['fvu'][-1] < h['fvu'][0]  # it learns
    assert trainer.sae.gain.detach().sub(1).abs().max() > 0  # its own parameter trains
    report = evaluate(trainer.sae, data.x[:2048])
    assert 0 < report.fvu < 1 and report.l0 > 0

def test_it_saves_loads_and_resumes_exactly(tmp_path, data):
    full = SAETrainer(_cfg(tmp_path/'a'), progress=False).train(data.x)
    sae = full.sae
    sae.save(tmp_path/'saved')
    back = SparseAutoencoder.load(tmp_path/'saved', device='cpu').eval()
    sae.eval()
    x = data.x[:64]
    with torch.no_grad(): assert torch.equal(back(x).x_hat, sae(x).x_hat)
    assert back.cfg.variant == ShiftSettings(shift=0.05)
    # a run stopped after its first checkpoint, resumed, ends where the uninterrupted one did
    stopped = SAETrainer(replace(_cfg(tmp_path/'b'), max_steps=6), progress=False).train(data.x)
    resumed = SAETrainer(_cfg(tmp_path/'b'), progress=False).train(data.x, resume_from=stopped.last_checkpoint)
    assert resumed.state.step == full.state.step
    for name, value in full.sae.state_dict().items(): assert torch.equal(resumed.sae.state_dict()[name], value), name
    assert resumed.history['energy_loss'] == full.history['energy_loss']

def test_it_sweeps_beside_a_built_in_variant(tmp_path, data):
    configs = {'toy': _cfg(tmp_path/'s1', eval_every=0), 'topk': replace(_cfg(tmp_path/'s2', eval_every=0),
                                                                          activation='topk', k=4, variant_settings=None)}
    results = train_sweep(configs, data.x)
    toy, topk = results.trainers
    assert 'energy_loss' in toy.history and 'energy_loss' not in topk.history
    assert all(t.state.step > 0 for t in results.trainers)

def test_resampling_restarts_a_variants_own_parameters():
    "Reviving a dead gated latent also restarts its magnitude path, and leaves live latents alone."
    from sae_nb.trainer import resample_dead_latents
    cfg = SAEConfig(input_dim=16, expansion_factor=4, activation='gated', l1_penalty_coeff=0.1)
    sae = SparseAutoencoder(cfg, device='cpu')
    with torch.no_grad(): sae.r_mag.fill_(0.5); sae.b_mag.fill_(0.3)
    optimizer = torch.optim.Adam(sae.parameters())
    x = torch.randn(64, 16)
    dead = torch.zeros(64, dtype=torch.bool); dead[:5] = True
    assert resample_dead_latents(sae, optimizer, x, sae(x).x_hat.detach(), dead) == 5
    assert (sae.r_mag[:5] == 0).all() and (sae.b_mag[:5] == 0).all()
    assert (sae.r_mag[5:] == 0.5).all() and (sae.b_mag[5:] == 0.3).all()

def test_it_maps_to_saelens_through_its_own_layout(tmp_path):
    "Its layout alone makes `save_saelens` write it; SAELens' standard SAE (read back as relu) computes the same."
    sae = SparseAutoencoder(SAEConfig(input_dim=16, expansion_factor=4, activation='shifted_relu',
                                      variant_settings={'shift': 0.2}, seed=3), device='cpu').eval()
    with torch.no_grad(): sae.gain.uniform_(0.5, 2.0); sae.b_enc.normal_(0, 0.3)
    sae.save_saelens(tmp_path/'lens')
    back = SparseAutoencoder.load_saelens(tmp_path/'lens').eval()
    assert back.cfg.activation == 'relu'  # it reads 'standard' no more than before: relu still does
    x = torch.randn(32, 16)
    with torch.no_grad(): torch.testing.assert_close(back(x).x_hat, sae(x).x_hat, atol=1e-5, rtol=1e-5)
    # a variant with no layout is refused by name
    VARIANTS['no_layout'] = replace(VARIANTS['shifted_relu'], formats={})
    try:
        plain = SparseAutoencoder(SAEConfig(input_dim=16, expansion_factor=4, activation='no_layout'), device='cpu')
        with pytest.raises(UnsupportedFormat, match="no_layout: SAELens has no such architecture"):
            plain.save_saelens(tmp_path/'none')
    finally: del VARIANTS['no_layout']

def test_resampling_sets_a_revived_jumprelu_threshold_from_data():
    """A revived JumpReLU latent gets a threshold set from the batch, as a new SAE's are: it fires on about k/latent_dim
    of the tokens, not on most of them (the placeholder threshold of an SAE before its data init)."""
    from sae_nb.trainer import resample_dead_latents
    data = synthetic_activations(n_tokens=4096, input_dim=16, n_features=48, mean_active=3, seed=2)
    sae = SparseAutoencoder(SAEConfig(input_dim=16, expansion_factor=4, activation='jumprelu', k=4), device='cpu')
    sae.init_b_dec(data.x[:2048])
    live_before = sae.state_dict()['log_threshold'][5:].clone()
    optimizer = torch.optim.Adam(sae.parameters())
    dead = torch.zeros(64, dtype=torch.bool); dead[:5] = True
    x = data.x[:2048]
    with torch.no_grad(): x_hat = sae(x).x_hat
    assert resample_dead_latents(sae, optimizer, x, x_hat, dead, torch.Generator().manual_seed(0)) == 5
    with torch.no_grad(): share = (sae.encode(x)[:, :5] > 0).float().mean(0)
    assert torch.allclose(share, torch.full((5,), 4 / 64), atol=0.01), share  # each revived latent: k/latent_dim
    assert torch.equal(sae.state_dict()['log_threshold'][5:], live_before)  # the live latents keep theirs
