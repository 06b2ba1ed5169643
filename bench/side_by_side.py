"""sae_nb against EleutherAI sparsify, each trained by its own trainer with its own defaults, on the same tokens.

Run it in the benchmark environment (`bash bench/setup.sh` builds `.bench-venv/`):

    .bench-venv/bin/python bench/side_by_side.py --out bench/side_by_side.json

What it does, in order:
1. Splits the embedded Shakespeare passages by whole passages: every 20th is held out, the rest train.
2. Tokenizes the training passages with sparsify's own `chunk_and_tokenize` (sequences of `--ctx` tokens) and
   shuffles them with the seed its `__main__` uses (42), as a `datasets.Dataset`, exactly what its CLI builds.
3. Runs sparsify's `Trainer(TrainConfig, dataset, model).fit()` on SmolLM2 with every setting at its default except
   the shape (`num_latents`, `k`), the hook point and the logging (`log_to_wandb=False`, a temporary `save_dir`).
   A hook registered first on the same module records the activations sparsify's own hook trains on.
4. Trains sae_nb's `SAETrainer` on those recorded activations (the same tokens; its trainer shuffles them, as it
   always does), with its defaults except the shape and batch size (and `eval_every=0`: no evaluation during
   training, for either library).
   Steps 3 and 4 run `--repeats` times, in turn (sparsify, sae_nb, sparsify, ...), each from the same start: each
   library's speed is that of its fastest training (a burst of other work on a shared machine slows one training,
   not every one), every training's seconds are kept in the JSON, and the scores are those of its last training.
5. Scores both SAEs (sparsify's as its trainer saved it) on the held-out passages' activations: FVU and L0 (mean
   active latents per token). Then, untimed, restores the full model and splices each SAE's reconstruction into it at
   that block's output with sae_nb's `downstream`, on the same held-out sequences: next-token CE loss of the clean
   model, with the block's output zero-ablated, and with each SAE spliced in; CE loss recovered
   ((zero-ablated - spliced) / (zero-ablated - clean), 1 = as good as the clean model); KL divergence from the clean
   model's next-token distribution. sparsify's SAE goes through the same code, behind an encode/decode wrapper that
   calls its own `encode` and `decode`. Attention sinks are left in place, as `sae_eval` does: tokens whose norm at
   the hook point is over `--ce-outlier-ratio` (10) times the batch's median keep the model's own activations, are
   neither zeroed nor spliced, and their next-token losses are not counted (`--ce-outlier-ratio 0` splices every
   token). Scoring runs in batches of 8 sequences; CE is the mean over batches weighted by the tokens each spliced,
   KL the mean over all tokens.

sparsify's command line cannot be used here: its `load_artifacts` places the model on `cuda:{rank}` and loads the
model and the data set from the Hugging Face hub; this machine has neither a GPU nor the hub.
"""
import argparse, json, os, platform, tempfile, time
from dataclasses import asdict, replace
from importlib.metadata import version

import torch


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='smollm2', help="a model sae_nb.data.load_model knows")
    p.add_argument('--layer', type=int, default=15, help="block whose output both SAEs read")
    p.add_argument('--ctx', type=int, default=128, help="tokens per sequence (sparsify's ctx_len)")
    p.add_argument('--steps', type=int, default=50, help="training steps of 32 sequences (sparsify's batch_size)")
    p.add_argument('--latents', type=int, default=4608)
    p.add_argument('--k', type=int, default=32)
    p.add_argument('--heldout-seqs', type=int, default=64, help="held-out sequences to score on")
    p.add_argument('--ce-outlier-ratio', type=float, default=10.0,
                   help="splicing leaves tokens above this x the median norm (attention sinks) alone; 0 splices all")
    p.add_argument('--repeats', type=int, default=2,
                   help="trainings of each library, in turn; its fastest is its speed")
    p.add_argument('--out', default=None, help="write the result here as JSON")
    return p.parse_args()


def record(module, store):
    "Keep a copy of every output of `module` (the activations a hook on it sees), flattened to [tokens, d]."
    def hook(mod, inputs, outputs):
        out = outputs[0] if isinstance(outputs, tuple) else outputs
        store.append(out.detach().flatten(0, 1).clone())
    return module.register_forward_hook(hook)


def clocks():
    "Wall seconds and this process's CPU seconds (all threads): the CPU clock barely moves while others run."
    return torch.tensor([time.perf_counter(), time.process_time()], dtype=torch.float64)


class Stopwatch:
    "Wall and CPU seconds spent in the model's forward passes and, inside them, in sparsify's training hook."
    def __init__(self, model, module):
        self.model_s, self.hook_s = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        self.module = module
        self.handles = [model.register_forward_pre_hook(lambda *a: setattr(self, '_t', clocks())),
                        model.register_forward_hook(lambda *a: self.model_s.add_(clocks() - self._t))]
        register = module.register_forward_hook
        def timed_register(fn, *a, **kw):  # sparsify registers its training hook anew for every batch
            def timed(*args):
                t = clocks()
                try: return fn(*args)
                finally: self.hook_s.add_(clocks() - t)
            return register(timed, *a, **kw)
        module.register_forward_hook = timed_register

    def stop(self):
        "Remove the hooks and the timed registration."
        for h in self.handles: h.remove()
        del self.module.register_forward_hook


class SparsifyCodes:
    "sparsify's SparseCoder as the encode/decode pair sae_nb's splicing calls: dense latents out, its own decode back."
    def __init__(self, sae):
        if sae.W_skip is not None or sae.cfg.transcode:
            raise ValueError("SparsifyCodes wraps a plain sparsify autoencoder; this one has a skip path or "
                             "transcodes: train it with skip_connection=False and transcode=False.")
        self.sae = sae

    def encode(self, x):
        out = self.sae.encode(x)
        return x.new_zeros(len(x), self.sae.num_latents).scatter_(1, out.top_indices, out.top_acts.to(x.dtype))

    def decode(self, h):
        acts, idx = h.topk(self.sae.cfg.k, dim=1)  # the k latents encode set (any zeros among them add nothing)
        return self.sae.decode(acts, idx)


class Pretokenized:
    "A tokenizer for `downstream` whose texts are token ids already [sequences, ctx] (held-out sequences as chunked)."
    def __call__(self, ids, **kw): return {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}


def spliced(sae, model, ids, layer, ratio, batch=8):
    "sae_nb's `downstream` over the sequences `ids` [n, ctx] in batches: clean, zero-ablated and spliced CE, and KL."
    from sae_nb.evaluation import downstream
    runs = [downstream(sae, model, Pretokenized(), ids[i:i + batch], layer, max_length=ids.shape[1],
                       outlier_norm_ratio=ratio or None) for i in range(0, len(ids), batch)]
    spliced_n = torch.tensor([r['spliced_tokens'] for r in runs], dtype=torch.float64)
    seq_n = torch.tensor([len(ids[i:i + batch]) for i in range(0, len(ids), batch)], dtype=torch.float64)
    mean = lambda key, w: (torch.tensor([r[key] for r in runs], dtype=torch.float64) * w).sum().item() / w.sum().item()
    res = {k: mean(k, spliced_n) for k in ('clean_loss', 'zero_ablated_loss', 'spliced_loss')}
    res['kl_divergence'] = mean('kl_divergence', seq_n)
    res['ce_loss_recovered'] = ((res['zero_ablated_loss'] - res['spliced_loss'])
                                / (res['zero_ablated_loss'] - res['clean_loss']))
    res['spliced_tokens'] = int(spliced_n.sum())
    return res


@torch.no_grad()
def l0(sae, x):
    "Mean number of nonzero latents per token of `x`."
    return torch.cat([(sae.encode(b) != 0).sum(1) for b in x.split(4096)]).double().mean().item()


def main():
    a = parse()
    os.environ.setdefault('SPARSIFY_DISABLE_TRITON', '1')  # its Triton decoder needs CUDA
    from datasets import Dataset
    from sparsify import SparseCoder, SparseCoderConfig, Trainer, TrainConfig
    from sparsify.data import chunk_and_tokenize
    from sae_nb.bench import cpu_model, matmul_rate
    from sae_nb.config import SAEConfig
    from sae_nb.data import load_model, load_texts
    from sae_nb.losses import fvu
    from sae_nb.trainer import SAETrainer

    texts = load_texts('shakespeare')
    train_texts = [t for i, t in enumerate(texts) if i % 20]
    heldout_texts = [t for i, t in enumerate(texts) if i % 20 == 0]
    model, tok = load_model(a.model)
    base = model.base_model  # what sparsify's CLI loads for its default fvu loss (AutoModel)
    # The blocks after the hooked one change nothing either SAE sees; dropping them halves the model's time.
    # (They are put back for the CE scoring at the end.)
    full_layers, full_depth = base.layers, base.config.num_hidden_layers
    base.layers = base.layers[:a.layer + 1]
    base.config.num_hidden_layers = a.layer + 1
    module = base.layers[a.layer]

    tokenize = lambda ts: chunk_and_tokenize(Dataset.from_dict({'text': ts}), tok, max_seq_len=a.ctx, num_proc=1)
    sp_template = TrainConfig(SparseCoderConfig(num_latents=a.latents, k=a.k), layers=[a.layer],
                              log_to_wandb=False, save_dir=tempfile.mkdtemp())  # each training makes its own
    dataset = tokenize(train_texts).shuffle(42)  # sparsify's __main__: shuffle_seed=42
    dataset = dataset.select(range(a.steps * sp_template.batch_size))
    heldout = tokenize(heldout_texts).select(range(a.heldout_seqs))

    # Each library trains --repeats times from the same start (the global generator put back), sparsify and sae_nb
    # in turn. A burst of other work on the machine slows one training, not all: each library's speed is its fastest
    # training, and every time is kept. The scores are those of each library's last training.
    start, seen = torch.get_rng_state(), []

    def fit_sparsify():
        "sparsify, through its own Trainer: its SAE seconds (wall, CPU), the model's, the trainer and its config."
        torch.set_rng_state(start)
        cfg = TrainConfig(sp_template.sae, layers=sp_template.layers, log_to_wandb=False, save_dir=tempfile.mkdtemp())
        trainer = Trainer(cfg, dataset, base)
        seen.clear()  # its constructor ran the model once on dummy inputs to read the hook point's width
        watch = Stopwatch(base, module)
        t = clocks(); trainer.fit(); total = clocks() - t
        watch.stop()
        model_s = watch.model_s - watch.hook_s
        return total - model_s, model_s, trainer, cfg  # its SAE's time: everything but the model's own forward passes

    def fit_sae_nb():
        "sae_nb, through its own trainer, on the activations sparsify trained on: seconds (wall, CPU), the trainer."
        torch.set_rng_state(start)
        cfg = replace(nb_cfg, checkpoint_dir=tempfile.mkdtemp())
        tr = SAETrainer(cfg, progress=False)
        t = clocks(); tr.train(x_train); return clocks() - t, tr

    recording = record(module, seen)
    sp_sae_s, model_s, trainer, sp_cfg = fit_sparsify()
    sp_runs, nb_runs = [sp_sae_s], []
    x_train = torch.cat(seen); seen.clear()
    with torch.no_grad():
        for i in range(0, len(heldout), 16): base(heldout[i:i + 16]['input_ids'])
    x_eval = torch.cat(seen)
    recording.remove()
    sp_lr = trainer.optimizers[0].param_groups[0]['lr']
    nb_cfg = SAEConfig(input_dim=x_train.shape[1], expansion_factor=a.latents / x_train.shape[1], k=a.k,
                       batch_size=sp_cfg.batch_size * a.ctx, eval_every=0, checkpoint_dir=tempfile.mkdtemp())
    for i in range(a.repeats):
        nb_s, tr = fit_sae_nb(); nb_runs.append(nb_s)
        if i + 1 < a.repeats:
            sp_sae_s, _, trainer, sp_cfg = fit_sparsify(); sp_runs.append(sp_sae_s)
    sp_sae = SparseCoder.load_from_disk(f"{sp_cfg.save_dir}/unnamed/{sp_cfg.hookpoints[0]}", device='cpu')
    fastest = lambda runs: min(runs, key=lambda s: s[0].item())
    sp_sae_s, nb_s = fastest(sp_runs), fastest(nb_runs)

    # Attention-sink tokens (each sequence's first token among them) have norms far above the rest and dominate the
    # variance: FVU is also given without them (norm over 10x the median, the rule of sae_nb's capture).
    typical = x_eval.norm(dim=1) <= 10 * x_eval.norm(dim=1).median()
    with torch.no_grad():
        nb_hat = torch.cat([tr.sae(b).x_hat for b in x_eval.split(4096)])
        sp_hat = torch.cat([sp_sae(b).sae_out for b in x_eval.split(4096)])
    nb_fvu = (fvu(x_eval, nb_hat).item(), fvu(x_eval[typical], nb_hat[typical]).item())
    sp_fvu = (fvu(x_eval, sp_hat).item(), fvu(x_eval[typical], sp_hat[typical]).item())
    sp_codes = SparsifyCodes(sp_sae)
    nb_l0, sp_l0 = l0(tr.sae, x_eval), l0(sp_codes, x_eval)

    # CE loss recovered (not timed): the full model again, each SAE spliced in at the block's output
    base.layers, base.config.num_hidden_layers = full_layers, full_depth
    model.eval()
    ids = heldout[:]['input_ids']  # [sequences, ctx]: the sequences x_eval came from
    nb_ce, sp_ce = (spliced(s, model, ids, a.layer, a.ce_outlier_ratio) for s in (tr.sae, sp_codes))
    for key in ('clean_loss', 'zero_ablated_loss', 'spliced_tokens'):  # the same tokens, the same model: must agree
        assert abs(nb_ce[key] - sp_ce[key]) <= 1e-5 * abs(nb_ce[key]), (key, nb_ce[key], sp_ce[key])
    tokens, tmp = len(x_train), '<temporary folder>'
    result = {
        'versions': {p: version(p) for p in ('sae_nb', 'eai-sparsify', 'torch', 'transformers', 'datasets')}
                    | {'python': platform.python_version()},
        'machine': f"{cpu_model()}, {os.cpu_count()} cores, torch threads "
                   f"{torch.get_num_threads()}",
        'matmul GFLOP/s': matmul_rate(),
        'data': {'model': a.model, 'hook': f"{sp_cfg.hookpoints[0]} output", 'd': x_train.shape[1],
                 'latents': a.latents, 'k': a.k, 'train passages': len(train_texts),
                 'held-out passages': len(heldout_texts),
                 'sequence tokens': a.ctx, 'steps': a.steps, 'train tokens': tokens,
                 'held-out tokens': len(x_eval), 'held-out sink tokens': int((~typical).sum()),
                 'CE sequences': len(ids), 'CE outlier norm ratio': a.ce_outlier_ratio or None,
                 'CE spliced tokens': nb_ce['spliced_tokens'],
                 'clean CE': nb_ce['clean_loss'], 'zero-ablated CE': nb_ce['zero_ablated_loss'],
                 'model forward s (not counted)': model_s[0].item()},
        'sparsify settings': asdict(sp_cfg) | {'save_dir': tmp, 'resolved lr': sp_lr,
                                               'optimizer class': type(trainer.optimizers[0]).__name__},
        'sae_nb settings': nb_cfg.to_dict() | {'checkpoint_dir': tmp},
        'repeats': a.repeats,
        'trainings': {'sparsify SAE seconds (wall, CPU)': [r.tolist() for r in sp_runs],
                      'sae_nb seconds (wall, CPU)': [r.tolist() for r in nb_runs]},  # in the order they ran
        'rows': [
            {'library': lib, 'trainer': how, 'tokens/s': tokens / s[0].item(), 'SAE seconds': s[0].item(),
             'tokens per CPU second': tokens / s[1].item(), 'held-out FVU': f[0], 'held-out FVU without sinks': f[1],
             'held-out L0': n, 'CE loss recovered': ce['ce_loss_recovered'], 'spliced CE': ce['spliced_loss'],
             'KL divergence': ce['kl_divergence']}
            for lib, how, s, f, n, ce in (('sae_nb', 'SAETrainer.train', nb_s, nb_fvu, nb_l0, nb_ce),
                                          ('sparsify', 'Trainer.fit', sp_sae_s, sp_fvu, sp_l0, sp_ce))
        ],
    }
    result['load average'] = os.getloadavg()  # other processes on the machine: over the core count, wall times suffer
    result['speed-up'] = result['rows'][0]['tokens/s'] / result['rows'][1]['tokens/s']
    per_cpu_s = [row['tokens per CPU second'] for row in result['rows']]
    result['speed-up, CPU time'] = per_cpu_s[0] / per_cpu_s[1]
    text = json.dumps(result, indent=1, default=str)
    if a.out:
        with open(a.out, 'w') as f: f.write(text + '\n')
    print(text)


if __name__ == '__main__':
    from sae_nb.testing import scratch_tempdir
    with scratch_tempdir('sae_nb-side-by-side-'): main()  # the runs' temporary folders, removed at the end
