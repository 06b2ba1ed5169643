"""What sae_nb's default training settings buy, measured on synthetic activations with a known dictionary.

Run it in the project's environment (no peer library is needed):

    python bench/defaults.py --out bench/defaults.json            # every table
    python bench/defaults.py --only lr --out bench/defaults.json  # one of them

Every run trains a TopK SAE through `SAETrainer`, one pass, and is scored on held-out rows drawn after the training
rows: FVU, dead % (latents that fire on none of the held-out rows) and recovery of the true dictionary
(`dictionary_recovery`: mean over true atoms of the best |cos| with a learned atom). The data are
`synthetic_activations` with as many true features as latents, `k` of them firing per token, Zipf frequencies
(exponent 1), per-feature magnitudes log-uniform in [0.5, 2], an offset of norm 8 and noise of std 0.02: the data of
`bench/quality.py`.

1. `lr`: the default learning-rate rule (`default_learning_rate`) across sizes. For d in {384, 768}, latents in
   {8×, 32×} and k in {16, 64}, the rule's learning rate times each of `--lr-multipliers`, everything else at its
   default, `--lr-tokens` training rows. The rule holds where ×1 is the best or near it.
2. `ablation`: d=384, 3072 latents, k=32, `--ablation-tokens` training rows. The defaults, then one choice changed at
   a time: the encoder's scaling to the first batch (done for ReLU-style SAEs, not for top-k), the decoder bias's
   initialisation, AuxK's weight, latents per token and window (and its settings before the defaults changed),
   decoder normalisation, the learning rate and warmup of the older defaults, the learning-rate schedule (linear,
   wsd), the batch size, Adam's betas (set on the trainer's optimizer), the moving average of the weights.
3. `ceiling`: the ablation's data and defaults, asking how far recovery is from what the objective allows. One run
   starts at the true dictionary (decoder atoms the true ones, encoder their transpose) and trains as usual: if the
   training objective held the truth, recovery stays near 1. Then runs of 1, 2 and 3 passes over the same training
   rows, and of 10 (one run each, the schedule over the whole run): how recovery grows with steps.

Every row also reads recovery by thirds of the true features: by frequency (commonest, middle, rarest) and by
typical magnitude (faintest, middle, strongest), with `sae_nb.bench.recovery_thirds`.

The JSON is rewritten after every run, so an interrupted run keeps what it measured.
"""
import argparse, json, math, os, platform, tempfile, time
from functools import lru_cache
from importlib.metadata import version

import torch

from sae_nb.architecture import _fit_encoder_scale
from sae_nb.bench import cpu_model, recovery_thirds
from sae_nb.config import SAEConfig, default_learning_rate
from sae_nb.evaluation import dictionary_recovery
from sae_nb.losses import fvu
from sae_nb.testing import synthetic_activations
from sae_nb.trainer import SAETrainer

DATA = dict(power=1.0, noise=0.02, mean_norm=8.0, magnitude_range=(0.5, 2.0))
SIZES = [(d, mult, k) for d in (384, 768) for mult in (8, 32) for k in (16, 64)]
OLD_AUXK = {'auxk_window': 1_000_000, 'auxk_coeff': 1 / 32, 'k_aux': 192}  # AuxK's settings before the defaults changed
ABLATION = {  # label -> (config changes, Adam betas or None[, True: the encoder scaled to the first batch])
    'defaults': ({}, None),
    'encoder scaled to the first batch (as ReLU-style SAEs are)': ({}, None, True),
    'b_dec at zero (not the geometric median)': ({'b_dec_init': 'zeros'}, None),
    'b_dec at the mean': ({'b_dec_init': 'mean'}, None),
    'no AuxK (auxk_coeff 0)': ({'auxk_coeff': 0.0}, None),
    'AuxK as before: weight 1/32, 192 latents, after 1M silent tokens': (OLD_AUXK, None),
    'AuxK weight 1/32': ({'auxk_coeff': 1 / 32}, None),
    'AuxK weight 1/8': ({'auxk_coeff': 1 / 8}, None),
    'AuxK weight 1': ({'auxk_coeff': 1.0}, None),
    'AuxK with 192 latents per token (input_dim / 2)': ({'k_aux': 192}, None),
    'AuxK after 2 silent batches (8,192 tokens)': ({'auxk_window': 8192}, None),
    'AuxK after 5 silent batches (20,480 tokens)': ({'auxk_window': 20480}, None),
    'decoder not renormalised (normalize_decoder_every huge)': ({'normalize_decoder_every': 10**9}, None),
    'older defaults: lr 4e-4, warmup 100, AuxK as before': ({'learning_rate': 4e-4, 'warmup_steps': 100, **OLD_AUXK},
                                                            None),
    'no warmup': ({'warmup_steps': 0}, None),
    'lr decays linearly to 0': ({'lr_schedule': 'linear'}, None),
    'lr wsd: constant, then decays to 0 over the last 30%': ({'lr_schedule': 'wsd'}, None),
    'lr wsd over the last 10%': ({'lr_schedule': 'wsd', 'decay_fraction': 0.1}, None),
    'batch 1024 (lr by the rule)': ({'batch_size': 1024}, None),
    'batch 16384 (lr by the rule)': ({'batch_size': 16384}, None),
    'Adam betas (0.9, 0.99)': ({}, (0.9, 0.99)),
    'Adam betas (0.0, 0.999)': ({}, (0.0, 0.999)),
    "no moving average of the weights (the last step's)": ({'average_steps': 0}, None),
    'moving average over 8% of the steps (20)': ({'average_steps': 20}, None),
}
CEILING = {  # label -> (config changes, start at the true dictionary)
    'from the true dictionary, 1 pass': ({}, True),
    **{f"from a random start, {n} pass{'es' if n > 1 else ''}": ({'max_epochs': n}, False) for n in (1, 2, 3, 10)},
}


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--only', choices=('lr', 'ablation', 'ceiling'), default=None, help="run one table (default: all)")
    p.add_argument('--lr-tokens', type=int, default=250_000, help="training rows of each run of the lr table")
    p.add_argument('--lr-multipliers', type=float, nargs='+', default=(0.5, 1.0, 2.0))
    p.add_argument('--sizes', nargs='+', default=None, metavar='D:MULT',
                   help="only these sizes of the lr table, e.g. 768:32 or 768:32:64 (default: all)")
    p.add_argument('--ablation-tokens', type=int, default=1_000_000, help="training rows of each ablation run")
    p.add_argument('--heldout', type=int, default=8192, help="held-out rows of every run")
    p.add_argument('--seed', type=int, default=0, help="seed of the data")
    p.add_argument('--out', default=None, help="write the result here as JSON (after every run)")
    return p.parse_args()


@lru_cache(maxsize=1)  # the ablation and the ceiling train on the same rows: drawn once
def benchmark(d, latents, k, tokens, heldout, seed):
    "Training and held-out rows, and the truth they were drawn from (dictionary, frequencies, magnitudes)."
    s = synthetic_activations(tokens + heldout, d, latents, k, keep_codes=False, chunk_tokens=8192, seed=seed, **DATA)
    return s.x[:tokens], s.x[tokens:], s


def score(x, held, truth, changes:dict, betas=None, scale_encoder=False, from_truth=False) -> dict:
    "Train on `x` with the defaults plus `changes`; held-out FVU, L0, dead %, recovery, the lr used and seconds."
    dictionary = truth.dictionary
    cfg = SAEConfig(**{'input_dim': x.shape[1], 'eval_every': 0, 'checkpoint_every': 0,
                       'checkpoint_dir': tempfile.mkdtemp(), **changes})
    trainer = SAETrainer(cfg, progress=False)
    if from_truth:  # the true atoms as the decoder, their transpose as the encoder (as a fresh SAE ties them)
        with torch.no_grad(): trainer.sae.W_dec.copy_(dictionary); trainer.sae.W_enc.copy_(dictionary.T)
    if betas is not None:
        for group in trainer.optimizer.param_groups: group['betas'] = betas
    if scale_encoder:  # what init_b_dec does for ReLU-style variants, done for top-k too
        sae, plain = trainer.sae, trainer.sae.init_b_dec
        def init_b_dec(first, inputs=None):
            plain(first, inputs); _fit_encoder_scale(sae, sae.scale_input(first)); return sae
        sae.init_b_dec = init_b_dec
    t = time.perf_counter(); trainer.train(x); seconds = time.perf_counter() - t
    sae = trainer.sae.eval()
    with torch.no_grad(): outs = [sae(b) for b in held.split(4096)]
    x_hat, h = torch.cat([o.x_hat for o in outs]), torch.cat([o.h for o in outs])
    rec = dictionary_recovery(sae.W_dec.detach(), dictionary)
    return {'FVU': fvu(held, x_hat).item(), 'L0': (h > 0).sum(-1).float().mean().item(),
            'dead %': 100 * (1 - (h > 0).any(0).float().mean().item()), 'recovery': rec['mean_max_cosine'],
            'recovered > 0.9': rec['recovered_fraction'], 'peak lr': cfg.peak_lr,
            **recovery_thirds(sae.W_dec.detach(), truth),
            'warmup steps': cfg.warmup_for(trainer.total_steps), 'steps': trainer.state.step, 'seconds': seconds}


def main():
    a = parse()
    result = {'versions': {p: version(p) for p in ('sae_nb', 'torch')} | {'python': platform.python_version()},
              'machine': f"{cpu_model()}, {os.cpu_count()} cores, torch threads "
                         f"{torch.get_num_threads()}",
              'data': DATA | {'true features': 'as many as latents', 'heldout': a.heldout, 'seed': a.seed},
              'lr': [], 'ablation': []}
    if a.only and a.out and os.path.exists(a.out):  # one table: the file's other tables (and their notes) stay
        with open(a.out) as f: old = json.load(f)
        result |= {k: v for k, v in old.items() if not k.startswith(a.only) and k not in result}
        result |= {k: old[k] for k in ('lr', 'ablation', 'ceiling') if k in old and k != a.only}
    def save():
        if a.out:
            with open(a.out + '.tmp', 'w') as f: f.write(json.dumps(result, indent=1) + '\n')
            os.replace(a.out + '.tmp', a.out)
    if a.only in (None, 'ablation'):
        result['ablation settings'] = {'d': 384, 'latents': 3072, 'k': 32, 'tokens': a.ablation_tokens}
        x, held, truth = benchmark(384, 3072, 32, a.ablation_tokens, a.heldout, a.seed)
        for label, (changes, *how) in ABLATION.items():
            row = {'change': label, **score(x, held, truth, {'expansion_factor': 8, 'k': 32, **changes}, *how)}
            result['ablation'].append(row); save(); print(json.dumps(row), flush=True)
    if a.only in (None, 'ceiling'):
        result['ceiling settings'] = {'d': 384, 'latents': 3072, 'k': 32, 'tokens': a.ablation_tokens}
        x, held, truth = benchmark(384, 3072, 32, a.ablation_tokens, a.heldout, a.seed)
        result['ceiling'] = []
        for label, (changes, from_truth) in CEILING.items():
            row = {'run': label, **score(x, held, truth, {'expansion_factor': 8, 'k': 32, **changes},
                                         from_truth=from_truth)}
            result['ceiling'].append(row); save(); print(json.dumps(row), flush=True)
    if a.only in (None, 'lr'):
        result['lr settings'] = {'tokens': a.lr_tokens, 'multipliers': list(a.lr_multipliers)}
        for d, mult, k in SIZES:
            if a.sizes and not {f"{d}:{mult}", f"{d}:{mult}:{k}"} & set(a.sizes): continue
            x, held, truth = benchmark(d, d * mult, k, a.lr_tokens, a.heldout, a.seed)
            rule = default_learning_rate(SAEConfig(input_dim=d))
            for m in a.lr_multipliers:
                row = {'d': d, 'latents': d * mult, 'k': k, 'multiplier': m,
                       **score(x, held, truth, {'expansion_factor': mult, 'k': k, 'learning_rate': rule * m})}
                result['lr'].append(row); save(); print(json.dumps(row), flush=True)
    prior = result.get('load average') if a.only else None  # the other tables' loads, kept with them
    result['load average'] = (prior if isinstance(prior, dict) else {}) | {a.only or 'every table': os.getloadavg()}
    save()


if __name__ == '__main__':
    from sae_nb.testing import scratch_tempdir
    with scratch_tempdir('sae_nb-defaults-'): main()  # the runs' temporary folders, removed at the end
