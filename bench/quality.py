"""Feature quality of sae_nb, EleutherAI sparsify and dictionary_learning, each trained by its own trainer at its own
defaults, on the same synthetic tokens drawn from a known dictionary.

Run it in the benchmark environment (`bash bench/setup.sh` builds `.bench-venv/`):

    .bench-venv/bin/python bench/quality.py --out bench/quality.json

What it does, in order:
1. Draws `--tokens` + `--heldout` rows with `sae_nb.testing.synthetic_activations` (a true dictionary of `--features`
   unit atoms in `--d` dimensions, `--k` of them firing per token on average, Zipf frequencies of exponent `--power`,
   per-feature magnitudes log-uniform in `--magnitude-range`, an offset of norm `--mean-norm`, Gaussian `--noise`).
   The first `--tokens` rows train (cut to whole sequences of `--ctx` rows), the last `--heldout` rows are held out.
2. sae_nb: `SAETrainer(SAEConfig(input_dim, expansion_factor=latents/d, k, batch_size, eval_every=0,
   checkpoint_dir), progress=False).train(x_train)`, every other setting at its default, whatever the defaults are
   when this runs. Its in-memory source shuffles the rows (as it always does); the rows are drawn i.i.d., so their
   order carries nothing. The JSON says how many training rows its trainer held out for evaluation (none is expected
   with `eval_every=0`).
3. sparsify: its own `Trainer(TrainConfig(SparseCoderConfig(num_latents, k), hookpoints, log_to_wandb=False,
   save_dir), dataset, model).fit()`, every other setting at its default (signum, schedule-free, its lr rule). It
   trains on a model's hook point, so the model is a stand-in whose hooked submodule maps "token ids" to activation
   rows: the data set's `input_ids` are the training row indices in sequences of `--ctx`, in order, and its batch is
   `--batch`/`--ctx` sequences (at the defaults its own default, 32 sequences of 128: 4096 rows), the batches every
   library sees. Its SAE is read back with
   `SparseCoder.load_from_disk` from the checkpoint `fit` saves (its schedule-free averaged weights).
4. dictionary_learning: its own `trainSAE(data=<the same batches, in order>, trainer_configs=[{TopKTrainer,
   AutoEncoderTopK, activation_dim, dict_size, k, steps, layer, lm_name, device}], steps, device='cpu')`, every other
   setting at its default (Adam, lr None = its 1/sqrt(dict_size) rule, auxk_alpha 1/32, grad clip, geometric-median
   b_dec) except one: its trainer refuses `warmup_steps` >= the run's steps, so a run shorter than its default
   warmup (1000 steps) warms up over the first 10% of its steps instead; the JSON records which. `layer` and
   `lm_name` are labels its trainer requires. It is imported last, after the other two have trained: its package
   imports nnsight 0.3, whose import patches functions of torch and einops process-wide. trainSAE returns nothing:
   its SAE is read back from the `ae.pt` it saves (with `torch.load(weights_only=True)`).
5. Scores each SAE on the held-out rows with its own forward pass: FVU (`sae_nb.losses.fvu`), mean L0 (nonzero
   latents per row), dead % (latents nonzero on no held-out row), recovery of the true dictionary
   (`sae_nb.evaluation.dictionary_recovery` of its decoder atoms, [latents, d]: mean over true atoms of the best
   |cos| with a learned atom, and the share above 0.9; the mean also of its decoder as initialised, before any
   step), the recovery of each third of the true features ordered by frequency and by typical magnitude
   (`sae_nb.bench.recovery_thirds`), and training tokens/s over the wall seconds of each library's own training
   call, the final save each makes included (CPU seconds of this process too: the CPU clock barely moves while other
   processes run).
   Each library trains `--repeats` times from the same start, sae_nb and sparsify in turn, then dictionary_learning;
   its tokens/s is that of its fastest training (a burst of other work on a shared machine slows one training, not
   every one), every training's seconds are kept, and the scores are those of its last training (the JSON says
   whether all of them ended at the same weights).

`--seed` seeds the data. `synthetic_activations` draws from a stream of its own (`data_generator`), never the one an
SAE with the same seed initialises from; the recovery at initialisation in each row shows that no library starts at
the true dictionary.
"""
import argparse, inspect, json, os, platform, tempfile, time
from dataclasses import asdict
from importlib.metadata import version

os.environ.setdefault('TQDM_DISABLE', '1')  # sparsify's and dictionary_learning's progress bars; read at tqdm's import
import torch
from torch import nn


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--d', type=int, default=384, help="activation width")
    p.add_argument('--latents', type=int, default=3072, help="latents of every SAE")
    p.add_argument('--k', type=int, default=32, help="active latents per token (also the data's mean active features)")
    p.add_argument('--tokens', type=int, default=1_000_000, help="training rows (cut to whole sequences of --ctx)")
    p.add_argument('--heldout', type=int, default=16384, help="held-out rows, drawn after the training rows")
    p.add_argument('--features', type=int, default=3072, help="size of the true dictionary")
    p.add_argument('--power', type=float, default=1.0, help="Zipf exponent of the features' frequencies")
    p.add_argument('--noise', type=float, default=0.02, help="std of the Gaussian noise on each coordinate")
    p.add_argument('--mean-norm', type=float, default=8.0, help="norm of the offset added to every row")
    p.add_argument('--magnitude-range', type=float, nargs=2, default=(0.5, 2.0), metavar=('LOW', 'HIGH'),
                   help="each feature's typical magnitude is log-uniform in it")
    p.add_argument('--seed', type=int, default=0, help="seed of the data")
    p.add_argument('--batch', type=int, default=4096, help="training rows per step, for every library")
    p.add_argument('--ctx', type=int, default=128, help="rows per sequence of sparsify's data set")
    p.add_argument('--repeats', type=int, default=2,
                   help="trainings of each library, alternating sae_nb and sparsify; its fastest is its speed")
    p.add_argument('--out', default=None, help="write the result here as JSON")
    a = p.parse_args(argv)
    if a.batch % a.ctx:
        p.error(f"--batch {a.batch} must be a multiple of --ctx {a.ctx}: sparsify's batches are whole sequences.")
    if a.tokens < a.batch: p.error(f"--tokens {a.tokens} must be at least one --batch ({a.batch}).")
    return a


def clocks():
    "Wall seconds and this process's CPU seconds (all threads)."
    return torch.tensor([time.perf_counter(), time.process_time()], dtype=torch.float64)


class RowLookup(nn.Module):
    "The hooked submodule of the stand-in model: token ids [batch, seq] -> activation rows [batch, seq, d]."
    def __init__(self, rows): super().__init__(); self.rows = rows
    def forward(self, ids): return self.rows[ids]


class StandIn(nn.Module):
    "What sparsify's Trainer reads of a model (`base_model`, `device`, `dummy_inputs`, a forward on `input_ids`)."
    def __init__(self, rows):
        super().__init__()
        self.lookup = RowLookup(rows)
    @property
    def base_model(self): return self
    @property
    def device(self): return self.lookup.rows.device
    @property
    def dummy_inputs(self): return {'input_ids': torch.zeros(1, 1, dtype=torch.long)}
    def forward(self, input_ids): return self.lookup(input_ids)


@torch.no_grad()
def score(name, forward, W_dec, W_init, x_eval, truth):
    "Held-out FVU, L0, dead %, dictionary recovery (trained and initial) of one SAE; `forward`: x -> (x_hat, h)."
    from sae_nb.bench import recovery_thirds
    from sae_nb.evaluation import dictionary_recovery
    from sae_nb.losses import fvu
    true_dictionary = truth.dictionary
    hats, l0, fired = [], 0.0, torch.zeros(W_dec.shape[0], dtype=torch.bool)
    for xb in x_eval.split(4096):
        x_hat, h = forward(xb)
        hats.append(x_hat.float())
        l0 += (h != 0).sum().item()
        fired |= (h != 0).any(0)
    rec = dictionary_recovery(W_dec.detach().float(), true_dictionary)
    return {'library': name, 'held-out FVU': fvu(x_eval, torch.cat(hats)).item(), 'L0': l0 / len(x_eval),
            'dead %': 100 * (~fired).float().mean().item(), 'recovery (mean max |cos|)': rec['mean_max_cosine'],
            'recovered > 0.9': rec['recovered_fraction'],
            **recovery_thirds(W_dec.detach(), truth),
            'recovery at initialisation': dictionary_recovery(W_init.float(), true_dictionary)['mean_max_cosine']}


def train_sae_nb(a, x_train):
    from sae_nb.config import SAEConfig
    from sae_nb.trainer import SAETrainer
    cfg = SAEConfig(input_dim=a.d, expansion_factor=a.latents / a.d, k=a.k, batch_size=a.batch, eval_every=0,
                    checkpoint_dir=tempfile.mkdtemp())
    tr = SAETrainer(cfg, progress=False)
    W_init = tr.sae.W_dec.detach().clone()
    lrs = []  # the learning rate of every step, whatever rule sae_nb's defaults resolve it by
    tr.optimizer.register_step_pre_hook(lambda opt, *_: lrs.append(opt.param_groups[0]['lr']))
    t = clocks(); tr.train(x_train); s = clocks() - t
    sae = tr.sae.eval()
    def forward(xb):
        out = sae(xb)
        return out.x_hat, out.h
    settings = cfg.to_dict() | {'checkpoint_dir': '<temporary folder>', 'resolved device': str(sae.W_dec.device),
                                'training rows held out by its trainer': len(x_train) - tr.state.tokens_seen,
                                'steps taken': tr.state.step, 'resolved lr (peak)': max(lrs),
                                'resolved β of the weights\' moving average (last step)': cfg.average_decay(tr.total_steps, tr.state.step),
                                'lr at steps 1, 10%, 50%, last': [lrs[0], lrs[len(lrs) // 10], lrs[len(lrs) // 2],
                                                                  lrs[-1]]}
    return forward, sae.W_dec, W_init, s, settings


def train_sparsify(a, x_train):
    os.environ.setdefault('SPARSIFY_DISABLE_TRITON', '1')  # its Triton decoder needs CUDA
    from datasets import Dataset
    from sparsify import SparseCoder, SparseCoderConfig, Trainer, TrainConfig
    ids = torch.arange(len(x_train)).view(-1, a.ctx)
    dataset = Dataset.from_dict({'input_ids': ids.tolist()}).with_format('torch')
    cfg = TrainConfig(SparseCoderConfig(num_latents=a.latents, k=a.k), batch_size=a.batch // a.ctx,
                      hookpoints=['lookup'], log_to_wandb=False, save_dir=tempfile.mkdtemp())
    trainer = Trainer(cfg, dataset, StandIn(x_train))
    lr = trainer.optimizers[0].param_groups[0]['lr']
    W_init = trainer.saes['lookup'].W_dec.detach().clone()
    t = clocks(); trainer.fit(); s = clocks() - t
    sae = SparseCoder.load_from_disk(f"{cfg.save_dir}/unnamed/lookup", device='cpu').eval()
    def forward(xb):
        out = sae(xb)
        h = torch.zeros(len(xb), a.latents).scatter_(1, out.latent_indices, out.latent_acts.float())
        return out.sae_out, h
    settings = asdict(cfg) | {'save_dir': '<temporary folder>', 'resolved lr': lr,
                              'optimizer class': type(trainer.optimizers[0]).__name__,
                              'steps taken': trainer.global_step}
    return forward, sae.W_dec, W_init, s, settings


def train_dictionary_learning(a, x_train):
    from dictionary_learning.training import trainSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK, TopKTrainer
    batches = x_train.split(a.batch)  # the batches sae_nb and sparsify take, in order
    default_warmup = inspect.signature(TopKTrainer).parameters['warmup_steps'].default
    config = {'trainer': TopKTrainer, 'dict_class': AutoEncoderTopK, 'activation_dim': a.d, 'dict_size': a.latents,
              'k': a.k, 'steps': len(batches), 'layer': 0, 'lm_name': 'synthetic', 'device': 'cpu'}
    changed = {}
    if default_warmup >= len(batches):  # its get_lr_schedule asserts warmup_steps < steps
        config['warmup_steps'] = changed['warmup_steps'] = max(1, len(batches) // 10)
    save_dir = tempfile.mkdtemp()
    rng = torch.get_rng_state()  # its trainer draws its SAE first, from the global generator: draw the same one here
    W_init = AutoEncoderTopK(a.d, a.latents, a.k).decoder.weight.T.detach().clone()
    torch.set_rng_state(rng)
    t = clocks()
    trainSAE(data=iter(batches), trainer_configs=[config], steps=len(batches), save_dir=save_dir, device='cpu')
    s = clocks() - t
    # trainSAE returns nothing: its SAE is the ae.pt it saved, read as its from_pretrained does (but weights only)
    state = torch.load(f"{save_dir}/trainer_0/ae.pt", weights_only=True)
    ae = AutoEncoderTopK(a.d, a.latents, a.k)
    ae.load_state_dict(state)
    ae.eval()
    def forward(xb): return ae(xb, output_features=True)
    with open(f"{save_dir}/trainer_0/config.json") as f: settings = json.load(f)['trainer']
    settings |= {'trainSAE': {'normalize_activations': False, 'autocast_dtype': 'float32 (its default)'},
                 'changed from its defaults': changed or None, 'default warmup_steps': default_warmup}
    return forward, ae.decoder.weight.T, W_init, s, settings


def main(argv=None):
    a = parse(argv)
    from sae_nb.testing import synthetic_activations
    data = synthetic_activations(n_tokens=a.tokens + a.heldout, input_dim=a.d, n_features=a.features,
                                 mean_active=a.k, power=a.power, noise=a.noise, mean_norm=a.mean_norm,
                                 magnitude_range=tuple(a.magnitude_range), keep_codes=False, seed=a.seed)
    n_train = a.tokens // a.ctx * a.ctx
    x_train, x_eval = data.x[:n_train].contiguous(), data.x[a.tokens:].contiguous()

    # Each library trains --repeats times from the same start (the global generator put back), sae_nb and sparsify
    # in turn, then dictionary_learning (last: see 4.). A burst of other work on the machine slows one training, not
    # all: each library's speed is its fastest training, and every time is kept. The scores are the last training's;
    # the JSON says whether every training of a library ended at the same weights.
    trains = {'sae_nb': train_sae_nb, 'sparsify': train_sparsify, 'dictionary_learning': train_dictionary_learning}
    runs, starts, last = {name: [] for name in trains}, {}, {}
    order = [n for _ in range(a.repeats) for n in ('sae_nb', 'sparsify')] + ['dictionary_learning'] * a.repeats
    for name in order:
        starts.setdefault(name, torch.get_rng_state())
        torch.set_rng_state(starts[name])
        last[name] = forward, W_dec, W_init, s, _ = trains[name](a, x_train)
        runs[name].append((s[0].item(), s[1].item(), W_dec.detach().clone()))
        print(f"{name}: trained in {s[0].item():.1f} s", flush=True)
    rows, settings, trainings = [], {}, {}
    for name in trains:
        forward, W_dec, W_init, _, settings[name] = last[name]
        walls, cpus, ends = zip(*runs[name])
        row = score(name, forward, W_dec, W_init, x_eval, data)
        rows.append(row | {'tokens/s': n_train / min(walls), 'seconds': min(walls),
                           'tokens per CPU second': n_train / min(cpus)})
        trainings[name] = {'wall seconds': walls, 'CPU seconds': cpus,
                           'the same weights at the end': all(torch.equal(w, ends[0]) for w in ends)}

    from sae_nb.bench import cpu_model
    result = {
        'versions': {p: version(p) for p in ('sae_nb', 'eai-sparsify', 'dictionary-learning', 'nnsight', 'torch')}
                    | {'python': platform.python_version()},
        'machine': f"{cpu_model()}, {os.cpu_count()} cores, torch threads "
                   f"{torch.get_num_threads()}",
        'data': {'generator': 'sae_nb.testing.synthetic_activations', 'd': a.d, 'features': a.features, 'k': a.k,
                 'power': a.power, 'noise': a.noise, 'mean_norm': a.mean_norm,
                 'magnitude_range': list(a.magnitude_range), 'seed': a.seed, 'train tokens': n_train,
                 'held-out tokens': len(x_eval), 'batch': a.batch, 'steps': -(-n_train // a.batch),
                 'sequence rows (sparsify)': a.ctx, 'latents': a.latents},
        'repeats': a.repeats,
        'settings': settings,
        'rows': rows,
        'trainings': trainings,  # in the order they ran, alternating sae_nb and sparsify
        'load average': os.getloadavg(),  # other processes on the machine: over the core count, wall times suffer
    }
    text = json.dumps(result, indent=1, default=str)
    if a.out:  # a temporary file, then a rename: an interrupted write leaves the last result whole
        with open(a.out + '.tmp', 'w') as f: f.write(text + '\n')
        os.replace(a.out + '.tmp', a.out)
    cols = ('held-out FVU', 'L0', 'dead %', 'recovery (mean max |cos|)', 'recovered > 0.9', 'tokens/s')
    print(f"{'library':<20}" + ''.join(f"{c:>{len(c) + 2}}" for c in cols))
    for row in rows: print(f"{row['library']:<20}" + ''.join(f"{row[c]:>{len(c) + 2}.4g}" for c in cols))
    return result


if __name__ == '__main__':
    from sae_nb.testing import scratch_tempdir
    with scratch_tempdir('sae_nb-quality-'): main()  # the runs' temporary folders, removed at the end
