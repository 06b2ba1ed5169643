"""Several hook points in one forward pass against one run per hook point: wall time and peak RSS on SmolLM2.

    python bench/multihook.py [--layers 3,9,15,21] [--texts 200] [--mode stream] [--json FILE]

Each measurement runs in a fresh process (so the peaks do not mix) and trains top-k SAEs (8x, k=32, batch 2048,
one epoch, no checkpoints or evaluation) on SmolLM2-135M's residual stream over Shakespeare passages:
1. `together`: `train_sae(..., layer=[l1, l2, l3, l4])`, one SAE per layer from one forward pass per batch of texts;
2. `alone lN`: `train_sae(..., layer=lN)`, once per layer.
Prints a markdown table: wall seconds (model load excluded) and peak RSS (`ru_maxrss`, model included) of each, and
the sum of the separate runs' times.
"""
import argparse, json, resource, subprocess, sys, tempfile, time


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--layers', default='3,9,15,21', help="the hook points, comma separated")
    p.add_argument('--texts', type=int, default=200, help="Shakespeare passages")
    p.add_argument('--mode', default='stream', help="train_sae's mode: stream, memory or capture")
    p.add_argument('--json', default=None, help="also write the figures to this file")
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)  # internal: 'together' or one layer
    return p.parse_args(argv)


def child(args) -> dict:
    import torch
    from sae_nb.config import SAEConfig
    from sae_nb.data import load_model, load_texts
    from sae_nb.trainer import train_sae
    torch.manual_seed(0)
    model, tok = load_model('smollm2')
    texts = load_texts('shakespeare')[:args.texts]
    layers = [int(l) for l in args.layers.split(',')]
    layer = layers if args.child == 'together' else int(args.child)
    cfg = SAEConfig(input_dim=model.config.hidden_size, expansion_factor=8, k=32, batch_size=2048, max_epochs=1,
                    eval_every=0, checkpoint_every=0, log_every=10, checkpoint_dir=tempfile.mkdtemp(), device='cpu')
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as store:
        out = train_sae(model, texts, cfg, layer=layer, tokenizer=tok, mode=args.mode, store=store, progress=False)
    seconds = time.perf_counter() - t
    trainers = out if isinstance(out, dict) else {layer: out}
    return dict(run=args.child, seconds=seconds, peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                tokens=next(iter(trainers.values())).state.tokens_seen,
                fvu={str(l): tr.history['fvu'][-1] for l, tr in trainers.items()})


def main(argv=None):
    args = parse(argv)
    if args.child: print(json.dumps(child(args))); return
    rows = []
    for run in ['together'] + args.layers.split(','):
        cmd = [sys.executable, __file__, '--layers', args.layers, '--texts', str(args.texts), '--mode', args.mode,
               '--child', run]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode: sys.exit(res.stderr[-3000:])
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    alone = rows[1:]
    print(f"SmolLM2-135M, layers {args.layers}, {args.texts} passages ({rows[0]['tokens']:,} tokens), mode "
          f"{args.mode}\n\n| run | seconds | peak RSS MB | final FVU |\n|---|---|---|---|")
    for r in rows:
        name = 'all layers, one forward' if r['run'] == 'together' else f"layer {r['run']} alone"
        fvus = ', '.join(f"{v:.3f}" for v in r['fvu'].values())
        print(f"| {name} | {r['seconds']:.1f} | {r['peak_mb']:,.0f} | {fvus} |")
    print(f"| separate runs, summed | {sum(r['seconds'] for r in alone):.1f} | "
          f"{max(r['peak_mb'] for r in alone):,.0f} (largest) | |")
    if args.json:
        with open(args.json, 'w') as f: json.dump(rows, f, indent=1)


if __name__ == '__main__':
    from sae_nb.testing import scratch_tempdir
    with scratch_tempdir('sae_nb-multihook-'): main()  # the runs' temporary folders, removed at the end
