"""Writes the interchange fixtures: small SAEs made and saved by SAELens and sparsify themselves, with the outputs
those libraries compute, and SAEs saved by sae_nb in their layouts, with the outputs the libraries compute when they
read them back. tests/test_interop.py and nbs/02b_formats.ipynb compare sae_nb against these.

    bash tests/interop/setup.sh                                   # .interop-venv: sae-lens, eai-sparsify, sae_nb
    .interop-venv/bin/python tests/interop/make_fixtures.py       # rewrites tests/fixtures/interop/

Each case is a folder: `case.json` (library, version, variant, direction, what sae_nb must do), `sae/` (the files in
the library's layout), `expected.safetensors` (inputs `x`, the library's `latents` and `x_hat`) unless sae_nb must
refuse the case, and for sae_nb → library cases `native/` (the SAE in sae_nb's own layout).
"""
import argparse, json, shutil, sys
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import save_file

D, F, K, N = 16, 64, 4, 32  # input width, latents, k, rows of test inputs: small enough to commit


def _randomise(module, seed, scale=0.3, unit_decoder=True):
    """Give every parameter random values, so that no case passes because a bias or threshold is zero. Decoder rows
    have unit norm, as trained SAEs' do, unless a case needs other norms (those that rescale by them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if 'W_dec' in name else scale))
            if 'W_dec' in name and unit_decoder: p.copy_(torch.nn.functional.normalize(p, dim=-1))
            if 'threshold' in name: p.copy_(torch.rand(p.shape, generator=g) * 0.5)
            if name == 'r_mag': p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=g) * 1.5 + 0.3


def _training_data(seed=5, n=2048):
    "Sparse combinations of a random dictionary: something for the libraries' own training steps to learn."
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(F, D, generator=g), dim=-1)
    codes = torch.rand(n, F, generator=g) * (torch.rand(n, F, generator=g) < 0.05)
    return codes @ atoms * 3 + 0.2


def _train(params, loss_fn, steps=150, lr=3e-3):
    "Adam on the library's own loss, one batch of 256 rows a step."
    data, opt = _training_data(), torch.optim.Adam(params, lr=lr)
    for step in range(steps):
        loss = loss_fn(data[(step * 256) % len(data):][:256], step)
        opt.zero_grad(); loss.backward(); opt.step()
    return float(loss)


class Cases:
    def __init__(self, out: Path):
        self.out = out
        self.table = []

    def write(self, name, library, variant, direction, make, expected=None, refuse=None, note='', hookpoint=None):
        "make(folder) writes the library's files into folder; expected() -> (x, latents, x_hat) from the library."
        case = self.out/name
        shutil.rmtree(case, ignore_errors=True)
        (case/'sae').mkdir(parents=True)
        make(case)
        meta = dict(library=library, version=version({'saelens': 'sae-lens', 'sparsify': 'eai-sparsify'}[library]),
                    variant=variant, direction=direction, refuse=refuse, note=note, hookpoint=hookpoint)
        if expected is not None:
            x, latents, x_hat = expected(case)
            save_file({'x': x.contiguous(), 'latents': latents.detach().float().contiguous(),
                       'x_hat': x_hat.detach().float().contiguous()}, str(case/'expected.safetensors'))
        (case/'case.json').write_text(json.dumps(meta, indent=1) + '\n')
        print(f"{name:34} {library:9} {direction:16} {'refused: ' + refuse if refuse else 'outputs recorded'}")


# ---------------------------------------------------------------- SAELens → sae_nb
def saelens_cases(c: Cases):
    import sae_lens
    from sae_lens import SAE
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
    x = _inputs()

    def inference(arch, seed, unit_decoder=True, **cfg):
        cls, cfg_cls = SAE_CLASS_REGISTRY[arch]
        sae = cls(cfg_cls(d_in=D, d_sae=F, **cfg))
        _randomise(sae, seed, unit_decoder=unit_decoder)
        return sae

    def by_saelens(case, dtype=None, scaler=None):
        "SAELens' own outputs, from the files as SAELens reads them."
        sae = SAE.load_from_disk(case/'sae', dtype=dtype)
        with torch.no_grad():
            xin = scaler.scale(x) if scaler else x
            latents = sae.encode(xin)
            x_hat = sae.decode(latents)
            return x, latents, scaler.unscale(x_hat) if scaler else x_hat

    simple = {'standard': dict(arch='standard'),
              'standard, apply_b_dec_to_input=False': dict(arch='standard', apply_b_dec_to_input=False),
              'topk': dict(arch='topk', k=K),
              'topk, rescale_acts_by_decoder_norm=True': dict(arch='topk', k=K, rescale_acts_by_decoder_norm=True,
                                                              unit_decoder=False),
              'topk, apply_b_dec_to_input=False': dict(arch='topk', k=K, apply_b_dec_to_input=False),
              'jumprelu': dict(arch='jumprelu'),
              'gated': dict(arch='gated'),
              'gated, apply_b_dec_to_input=False': dict(arch='gated', apply_b_dec_to_input=False),
              'standard, bfloat16 weights': dict(arch='standard', dtype='bfloat16')}
    for i, (variant, kw) in enumerate(simple.items()):
        kw = dict(kw); arch = kw.pop('arch')
        sae = inference(arch, 10 + i, **kw)
        name = 'saelens_' + variant.replace(', ', '_').replace('=', '_').replace(' ', '_').lower()
        c.write(name, 'saelens', variant, 'saelens → sae_nb', lambda case, s=sae: s.save_model(case/'sae'),
                lambda case, kw=kw: by_saelens(case, dtype='float32' if kw.get('dtype') else None),
                note='compared with SAELens run in float32 on the same weights' if kw.get('dtype') else '')

    # BatchTopK and Matryoshka: SAELens saves a trained one as JumpReLU (save_inference_model); its training checkpoint
    # (save_model) keeps the global threshold, which sae_nb reads as its own BatchTopK.
    for arch, extra in (('batchtopk', {}), ('matryoshka_batchtopk', {'matryoshka_widths': [16, 32, F]})):
        cls, cfg_cls = SAE_TRAINING_CLASS_REGISTRY[arch]
        sae = cls(cfg_cls(d_in=D, d_sae=F, k=K, **extra))
        _randomise(sae, 30, unit_decoder=False)  # its training config rescales by the decoder norms
        sae.topk_threshold = torch.tensor(0.4, dtype=torch.double)
        variant = arch.replace('_', ' ')
        c.write(f'saelens_{arch}_inference', 'saelens', f'{variant} (saved for inference, as JumpReLU)', 'saelens → sae_nb',
                lambda case, s=sae: s.save_inference_model(case/'sae'), by_saelens)
        def training(case, s=sae):
            s.save_model(case/'sae')
            s.save_inference_model(case/'inference')  # SAELens' own conversion gives the outputs to match
        def from_inference(case):
            sae_inf = SAE.load_from_disk(case/'inference')
            with torch.no_grad():
                latents = sae_inf.encode(x)
                return x, latents, sae_inf.decode(latents)
        c.write(f'saelens_{arch}_training', 'saelens', f'{variant} (training checkpoint)', 'saelens → sae_nb', training,
                from_inference, note="outputs of SAELens' own JumpReLU conversion of the same SAE")

    # Trained with SAELens' own training step (its losses, its threshold updates), then saved as SAELens saves them.
    from sae_lens.saes.sae import TrainStepInput
    for arch, kw in (('topk', dict(k=K)), ('batchtopk', dict(k=K)), ('jumprelu', dict(l0_coefficient=0.05))):
        cls, cfg_cls = SAE_TRAINING_CLASS_REGISTRY[arch]
        sae = cls(cfg_cls(d_in=D, d_sae=F, **kw))
        coefficients = {n: getattr(v, 'value', v) for n, v in sae.get_coefficients().items()}
        dead = torch.zeros(F, dtype=torch.bool)
        loss = _train(sae.parameters(), lambda xb, step: sae.training_forward_pass(
            TrainStepInput(sae_in=xb, coefficients=coefficients, dead_neuron_mask=dead, n_training_steps=step,
                           is_logging_step=False)).loss)
        c.write(f'saelens_{arch}_trained', 'saelens', f'{arch}, trained 150 steps by SAELens (final loss {loss:.3f})',
                'saelens → sae_nb', lambda case, s=sae: s.save_inference_model(case/'sae'), by_saelens)

    # Normalisation SAELens' trainer applies outside the SAE, saved beside its checkpoints.
    from sae_lens.training.activation_scaler import ActivationScaler, ActivationWhitening
    g = torch.Generator().manual_seed(40)
    M = torch.eye(D) + 0.1 * torch.randn(D, D, generator=g)
    whitening = ActivationWhitening(mean=torch.randn(D, generator=g) * 0.2, matrix=M, inverse_matrix=torch.linalg.inv(M))
    for variant, norm, scaler in (('standard, expected_average_only_in', 'expected_average_only_in', ActivationScaler(0.37)),
                                  ('topk, covariance_whitening', 'covariance_whitening', ActivationScaler(0.5, whitening))):
        arch = variant.split(',')[0]
        sae = inference(arch, 41, normalize_activations=norm, **({'k': K} if arch == 'topk' else {}))
        def make(case, s=sae, sc=scaler):
            s.save_model(case/'sae')
            sc.save(str(case/'sae'/'activation_scaler.json'))
        c.write(f'saelens_{norm}', 'saelens', variant + ' (with the scaler saved beside it)', 'saelens → sae_nb', make,
                lambda case, sc=scaler: by_saelens(case, scaler=sc), note="SAELens' scaler applied around its SAE")
        c.write(f'saelens_{norm}_no_scaler', 'saelens', variant + ' (no scaler file)', 'saelens → sae_nb',
                lambda case, s=sae: s.save_model(case/'sae'), refuse='is not beside it')

    refused = {'layer_norm': ('standard', dict(normalize_activations='layer_norm'), "normalises each token"),
               'constant_norm_rescale': ('standard', dict(normalize_activations='constant_norm_rescale'), "normalises each token"),
               'jumprelu_transcoder': ('jumprelu_transcoder', dict(d_out=D, apply_b_dec_to_input=False), "JumpReLU transcoder"),
               'temporal': ('temporal', {}, "temporal SAE"),
               'abstopk': ('abstopk', dict(k=K), "AbsTopK"),
               'matching_pursuit': ('matching_pursuit', {}, "matching-pursuit")}
    for variant, (arch, kw, why) in refused.items():
        try: sae = inference(arch, 50, **kw)
        except Exception as e:
            print(f"  (SAELens could not build {variant}: {e}; left out)"); continue
        c.write(f'saelens_{variant}', 'saelens', variant, 'saelens → sae_nb', lambda case, s=sae: s.save_model(case/'sae'),
                refuse=why)

    # Transcoders: the input's latents predict another hook point's activations (here of the same width); the skip
    # path is in forward(), not decode()
    def by_saelens_forward(case):
        sae = SAE.load_from_disk(case/'sae')
        with torch.no_grad(): return x, sae.encode(x), sae(x)
    for i, arch in enumerate(('transcoder', 'skip_transcoder')):
        sae = inference(arch, 55 + i, d_out=D, apply_b_dec_to_input=False)
        c.write(f'saelens_{arch}', 'saelens', arch, 'saelens → sae_nb', lambda case, s=sae: s.save_model(case/'sae'),
                by_saelens_forward)

    # Files from before SAELens 6: settings at the top level, read through SAELens' own handle_pre_6_0_config.
    def pre6(case):
        sae = inference('topk', 60, k=K)
        save_file({k: v.detach().contiguous() for k, v in sae.state_dict().items()}, str(case/'sae'/'sae_weights.safetensors'))
        (case/'sae'/'cfg.json').write_text(json.dumps({
            'architecture': 'standard', 'd_in': D, 'd_sae': F, 'dtype': 'float32', 'device': 'cpu', 'model_name': 'gpt2',
            'hook_point': 'blocks.3.hook_resid_post', 'hook_point_layer': 3, 'activation_fn_str': 'topk',
            'activation_fn_kwargs': {'k': K}, 'apply_b_dec_to_input': True, 'normalize_activations': False,
            'context_size': 128, 'prepend_bos': True, 'dataset_path': 'Skylion007/openwebtext', 'finetuning_scaling_factor': False}))
    c.write('saelens_pre6_topk', 'saelens', 'topk, a cfg.json from before SAELens 6', 'saelens → sae_nb', pre6, by_saelens)
    def pre6_ones(case):  # SAELens once saved an all-ones scaling_factor with every SAE; it drops it on loading
        sae = inference('standard', 61)
        save_file({**{k: v.detach().contiguous() for k, v in sae.state_dict().items()}, 'scaling_factor': torch.ones(F)},
                  str(case/'sae'/'sae_weights.safetensors'))
        (case/'sae'/'cfg.json').write_text(json.dumps({'d_in': D, 'd_sae': F, 'dtype': 'float32', 'model_name': 'gpt2',
                                                       'hook_point': 'blocks.3.hook_resid_post', 'activation_fn_str': 'relu',
                                                       'finetuning_scaling_factor': False}))
    c.write('saelens_pre6_scaling_factor_ones', 'saelens', 'standard, before SAELens 6, an all-ones scaling_factor',
            'saelens → sae_nb', pre6_ones, by_saelens)

    # Fields SAELens reads only for some architectures, and a checkpoint that leaves out one whose default changed.
    def jumprelu_with_rescale(case):
        inference('jumprelu', 62, unit_decoder=False).save_model(case/'sae')
        cfg = json.loads((case/'sae'/'cfg.json').read_text())
        (case/'sae'/'cfg.json').write_text(json.dumps({**cfg, 'rescale_acts_by_decoder_norm': True}))
    c.write('saelens_jumprelu_rescale_ignored', 'saelens', 'jumprelu, rescale_acts_by_decoder_norm=True in its cfg.json',
            'saelens → sae_nb', jumprelu_with_rescale, by_saelens, note='SAELens reads that field for TopK and BatchTopK only')
    def batchtopk_without_rescale(case):
        cls, cfg_cls = SAE_TRAINING_CLASS_REGISTRY['batchtopk']
        sae = cls(cfg_cls(d_in=D, d_sae=F, k=K)); _randomise(sae, 63, unit_decoder=False)
        sae.save_model(case/'sae')
        cfg = json.loads((case/'sae'/'cfg.json').read_text()); cfg.pop('rescale_acts_by_decoder_norm')
        (case/'sae'/'cfg.json').write_text(json.dumps(cfg))
    c.write('saelens_batchtopk_training_no_rescale_field', 'saelens', 'batchtopk training checkpoint without '
            'rescale_acts_by_decoder_norm', 'saelens → sae_nb', batchtopk_without_rescale, refuse='rescale_acts_by_decoder_norm')


# ---------------------------------------------------------------- sae_nb → SAELens
def _nb_saes():
    "One sae_nb SAE per variant, with random biases and thresholds; BatchTopK has learned its threshold."
    from sae_nb.architecture import SparseAutoencoder, set_jumprelu_threshold
    from sae_nb.config import SAEConfig
    saes = {}
    for i, act in enumerate(('relu', 'topk', 'batchtopk', 'jumprelu', 'gated', 'matryoshka')):
        sae = SparseAutoencoder(SAEConfig(input_dim=D, expansion_factor=F / D, activation=act, k=K, seed=70 + i), device='cpu')
        _randomise(sae, 70 + i)
        if act == 'jumprelu':
            with torch.no_grad(): set_jumprelu_threshold(sae, torch.rand(F) * 0.5 + 0.01)
        if act in ('batchtopk', 'matryoshka'):
            sae.train()
            with torch.no_grad(): sae(_inputs(1) * 3)  # learns its inference threshold from one batch
        saes[act] = sae.eval()
    for i, (act, latents) in enumerate((('transcoder', 'relu'), ('skip_transcoder', 'relu'), ('transcoder', 'topk'),
                                        ('skip_transcoder', 'topk'))):
        sae = SparseAutoencoder(SAEConfig(input_dim=D, expansion_factor=F / D, activation=act, k=K, seed=80 + i,
                                          variant_settings={'latents': latents}), device='cpu')
        _randomise(sae, 80 + i)
        saes[f'{act}, {latents} latents'] = sae.eval()
    scaled = SparseAutoencoder(SAEConfig(input_dim=D, expansion_factor=F / D, activation='topk', k=K, seed=75,
                                         normalize_activations='expected_average_only_in'), device='cpu')
    _randomise(scaled, 75)
    scaled.set_input_scale(0.25)
    saes['topk, input scale 0.25'] = scaled.eval()
    return saes


def to_saelens_cases(c: Cases):
    from sae_lens import SAE
    x = _inputs()
    def by_saelens(case):
        sae = SAE.load_from_disk(case/'sae')
        with torch.no_grad(): return x, sae.encode(x), sae(x)  # forward: a skip-transcoder's skip path is there
    for variant, sae in _nb_saes().items():
        if 'transcoder' in variant and 'relu' not in variant: continue  # SAELens' transcoders have ReLU latents
        def make(case, s=sae):
            s.save(case/'native')
            s.save_saelens(case/'sae', model_name='gpt2', hook_name='blocks.6.hook_resid_post')
        name = 'to_saelens_' + variant.split(',')[0] + ('_scaled' if 'scale' in variant else '')
        c.write(name, 'saelens', variant, 'sae_nb → saelens', make, by_saelens,
                note='saved as JumpReLU with the learned threshold, as SAELens saves its own' if variant == 'batchtopk' else '')


# ---------------------------------------------------------------- sparsify ↔ sae_nb
def sparsify_cases(c: Cases):
    from sparsify import SparseCoder, SparseCoderConfig
    x = _inputs()
    def coder(seed, **cfg):
        s = SparseCoder(D, SparseCoderConfig(**{'k': K, **cfg}))
        _randomise(s, seed)
        return s
    def by_sparsify(folder):
        s = SparseCoder.load_from_disk(folder)
        with torch.no_grad():
            enc = s.encode(x)
            latents = torch.zeros(N, s.num_latents).scatter(1, enc.top_indices, enc.top_acts)
            x_hat = s.decode(enc.top_acts, enc.top_indices)  # forward()'s output is the same but for multi_topk
            return x, latents, x_hat + (x @ s.W_skip.mT if s.W_skip is not None else 0)  # a skip path, as forward()

    cases = {'topk': dict(num_latents=F), 'topk, multi_topk=True': dict(num_latents=F, multi_topk=True),
             'topk, expansion_factor=4': dict(expansion_factor=F // D)}
    for i, (variant, kw) in enumerate(cases.items()):
        s = coder(80 + i, **kw)
        name = 'sparsify_' + variant.replace(', ', '_').replace('=', '_').lower()
        c.write(name, 'sparsify', variant, 'sparsify → sae_nb', lambda case, s=s: s.save_to_disk(case/'sae'),
                lambda case: by_sparsify(case/'sae'),
                note="with multi_topk, sparsify's forward() returns the 4k-latent reconstruction of its Multi-TopK loss; "
                     "its FVU, and this comparison, use encode → decode with k" if kw.get('multi_topk') else '')
    trained = coder(83, num_latents=F)
    trained.set_decoder_norm_to_unit_norm()
    def sparsify_loss(xb, step):
        out = trained(xb, dead_mask=torch.zeros(F, dtype=torch.bool))
        return out.fvu + out.auxk_loss
    loss = _train(trained.parameters(), sparsify_loss)
    c.write('sparsify_topk_trained', 'sparsify', f'topk, trained 150 steps on sparsify\'s loss (final FVU {loss:.3f})',
            'sparsify → sae_nb', lambda case: trained.save_to_disk(case/'sae'), lambda case: by_sparsify(case/'sae'))
    # a trainer's output: one folder per hook point
    two = {'layers.3': coder(84, num_latents=F), 'layers.5.mlp': coder(85, num_latents=F)}
    c.write('sparsify_run_two_hookpoints', 'sparsify', 'topk, a run with two hook points', 'sparsify → sae_nb',
            lambda case: [s.save_to_disk(case/'sae'/hp) for hp, s in two.items()],
            lambda case: by_sparsify(case/'sae'/'layers.5.mlp'), hookpoint='layers.5.mlp')
    for variant, kw, why in (('groupmax', dict(num_latents=F, activation='groupmax'), "activation 'groupmax'"),
                             ('skip_connection', dict(num_latents=F, skip_connection=True), "skip connection")):
        s = coder(90, **kw)
        c.write(f'sparsify_{variant}', 'sparsify', variant, 'sparsify → sae_nb', lambda case, s=s: s.save_to_disk(case/'sae'),
                refuse=why)
    for i, (variant, kw) in enumerate((('transcoder', dict(transcode=True)),
                                       ('skip-transcoder', dict(transcode=True, skip_connection=True)))):
        s = coder(92 + i, num_latents=F, **kw)
        c.write(f"sparsify_{variant.replace('-', '_')}", 'sparsify', variant, 'sparsify → sae_nb',
                lambda case, s=s: s.save_to_disk(case/'sae'), lambda case: by_sparsify(case/'sae'))
    for variant, sae in _nb_saes().items():
        if not (variant.startswith('topk') or 'topk latents' in variant): continue
        def make(case, s=sae):
            s.save(case/'native')
            s.save_sparsify(case/'sae')
        name = 'to_sparsify_' + variant.split(',')[0] + ('_scaled' if 'scale' in variant else '')
        c.write(name, 'sparsify', variant, 'sae_nb → sparsify', make, lambda case: by_sparsify(case/'sae'))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=str(Path(__file__).resolve().parents[1]/'fixtures'/'interop'))
    out = Path(ap.parse_args(argv).out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    torch.manual_seed(0)
    c = Cases(out)
    saelens_cases(c); to_saelens_cases(c); sparsify_cases(c)
    print(f"wrote {len(list(out.iterdir()))} cases into {out}")


if __name__ == '__main__':
    sys.exit(main())
