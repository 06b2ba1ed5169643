"""Peak memory and speed of training from activation stores 1, 4 and 16 times the size of the shuffle buffer.

    python bench/store_memory.py [--width 256] [--buffer 65536] [--shard 16384] [--multiples 1 4 16] [--json FILE]

For each multiple m, in a temporary folder (deleted at the end):
1. a fresh process writes a run of m × buffer rows of synthetic activations through `ActivationStore.save_run`, from
   a generator of shard-sized parts, and reports its peak RSS;
2. a fresh process reads the run once through `ActivationShardDataset` (checksums on, a mixing buffer of `--buffer`
   tokens) and then trains a TopK SAE for one epoch from it; it reports its peak RSS (`ru_maxrss`), its peak before
   the first batch, tokens/s of the read alone, and tokens/s of training after its first step (which also sets the
   decoder bias). No latent counts as dead within the run, so every step does the same work whatever its length.
The store grows 16-fold; what stays resident should not: the buffer, one shard and the SAE.
Prints a markdown table (and writes the figures as JSON with --json).
"""
import argparse, json, os, resource, shutil, subprocess, sys, tempfile, time


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--width', type=int, default=256, help="activation width (input_dim)")
    p.add_argument('--buffer', type=int, default=65_536, help="tokens in the mixing buffer (buffer_tokens)")
    p.add_argument('--shard', type=int, default=16_384, help="tokens per shard file")
    p.add_argument('--multiples', type=int, nargs='+', default=[1, 4, 16], help="store sizes, in buffers")
    p.add_argument('--batch', type=int, default=4096, help="tokens per training step")
    p.add_argument('--expansion', type=float, default=2, help="latents per input dimension")
    p.add_argument('--json', default=None, help="also write the figures to this file")
    p.add_argument('--child', nargs='+', default=None, help=argparse.SUPPRESS)  # internal: run one measurement
    return p.parse_args(argv)


def peak_mb() -> float: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_store(args, folder:str, rows:int) -> dict:
    "Write `rows` synthetic rows through the store API, one shard-sized part at a time."
    import torch
    from sae_nb.data import ActivationStore
    g = torch.Generator().manual_seed(rows)
    def parts():
        for start in range(0, rows, args.shard):
            yield torch.randn(min(args.shard, rows - start), args.width, generator=g)
    t = time.perf_counter()
    run_id = ActivationStore(folder).save_run(parts(), name='synthetic', shard_tokens=args.shard)
    return dict(run_id=run_id, write_s=time.perf_counter() - t, write_peak_mb=peak_mb())


def train_store(args, folder:str, run_id:str) -> dict:
    "Train one epoch on the stored run; peak RSS, RSS before the first batch, and tokens/s."
    from sae_nb.config import SAEConfig
    from sae_nb.data import ActivationStore, ActivationShardDataset
    from sae_nb.trainer import Callback, SAETrainer
    class FirstStepClock(Callback):
        "Notes when the first step ended and how many tokens it took."
        def on_step(self, trainer):
            if trainer.state.step == 1: self.t, self.tokens = time.perf_counter(), trainer.state.tokens_seen
    cfg = SAEConfig(input_dim=args.width, expansion_factor=args.expansion, k=16, batch_size=args.batch, max_epochs=1,
                    warmup_steps=0, eval_every=0, checkpoint_every=0, log_every=10**9, device='cpu',
                    dead_feature_window=10**12, checkpoint_dir=os.path.join(folder, 'checkpoints'))
    source = lambda: ActivationShardDataset(ActivationStore(folder), run_id, batch_size=args.batch,
                                            buffer_tokens=args.buffer)
    clock = FirstStepClock()
    trainer = SAETrainer(cfg, progress=False, callbacks=[clock])
    before = peak_mb()
    t = time.perf_counter()
    read = sum(len(b) for b in source())
    read_s = time.perf_counter() - t
    trainer.train(source())
    took = time.perf_counter() - clock.t
    tokens = trainer.state.tokens_seen
    return dict(tokens=tokens, read_tokens_per_s=read / read_s, tokens_per_s=(tokens - clock.tokens) / took,
                train_peak_mb=peak_mb(), before_mb=before)


def child(args):
    mode, folder, what = args.child
    res = write_store(args, folder, int(what)) if mode == 'write' else train_store(args, folder, what)
    print(json.dumps(res))


def run_child(args, *child_args) -> dict:
    "Run one measurement in a fresh Python process (its peak RSS is its own)."
    cmd = [sys.executable, __file__, '--width', str(args.width), '--buffer', str(args.buffer), '--shard',
           str(args.shard), '--batch', str(args.batch), '--expansion', str(args.expansion), '--child', *child_args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode: raise RuntimeError(f"{' '.join(child_args[:1])} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(rows:list, args) -> str:
    head = ("| store (× buffer) | tokens | store MB | write: peak RSS MB | train: peak RSS before data MB | "
            "train: peak RSS MB | read only tokens/s | training tokens/s |\n|---|---|---|---|---|---|---|---|")
    lines = [f"| {r['multiple']} | {r['tokens']:,} | {r['store_mb']:,.0f} | {r['write_peak_mb']:,.0f} | "
             f"{r['before_mb']:,.0f} | {r['train_peak_mb']:,.0f} | {r['read_tokens_per_s']:,.0f} tokens/s | "
             f"{r['tokens_per_s']:,.0f} tokens/s |" for r in rows]
    buf_mb = args.buffer * args.width * 4 / 2**20
    return '\n'.join([head, *lines, '',
                      f"width {args.width}, float32; buffer {args.buffer:,} tokens ({buf_mb:,.0f} MB), shards of "
                      f"{args.shard:,} tokens ({args.shard * args.width * 4 / 2**20:,.0f} MB), batches of "
                      f"{args.batch:,}, {int(args.width * args.expansion):,} latents"])


def main(args):
    base = tempfile.mkdtemp(prefix='store-memory-')
    rows = []
    try:
        for m in args.multiples:
            folder = os.path.join(base, f'x{m}')
            written = run_child(args, 'write', folder, str(m * args.buffer))
            run_dir = os.path.join(folder, 'activations', written['run_id'])
            size = sum(os.path.getsize(os.path.join(run_dir, f)) for f in os.listdir(run_dir))
            trained = run_child(args, 'train', folder, written['run_id'])
            rows.append(dict(multiple=m, store_mb=size / 2**20, **written, **trained))
            shutil.rmtree(folder)  # one store on disk at a time
    finally: shutil.rmtree(base, ignore_errors=True)
    print(table(rows, args))
    if args.json:
        with open(args.json, 'w') as f: json.dump(dict(settings={k: v for k, v in vars(args).items()
                                                                 if k not in ('child', 'json')}, rows=rows), f, indent=1)
    return rows


if __name__ == '__main__':
    a = parse()
    child(a) if a.child else main(a)
