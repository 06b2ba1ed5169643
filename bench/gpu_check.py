"""Correctness and speed of sae_nb on a CUDA GPU, in one short run (CI has no GPU; run this where one is lent).

    python bench/gpu_check.py --out bench/gpu.json              # everything, about 5 minutes on an H100/H200
    python bench/gpu_check.py --only kernels training --out -   # some sections, JSON to stdout

Sections (each records `ok` or the error, and the run goes on):
1. `kernels`: the Triton decode and segment-sum kernels against the PyTorch reference, values and gradients, in
   fp32, bf16 and fp16, at shapes that are and are not multiples of the block sizes.
2. `sae`: a top-k SAE on the sparse and Triton paths against its dense autograd twin on the GPU (output, AuxK picked
   in the forward, every parameter's gradient), in fp32 and under bf16 autocast.
3. `training`: the same synthetic data trained on the CPU and on the GPU (Triton bf16, sparse bf16, Triton fp16 with
   the grad scaler, autograd fp32): held-out FVU and dead latents; then an interrupted GPU run resumed from its
   checkpoint against one that never stopped.
4. `speed`: tokens/s, ms/step and peak GPU memory at d=768, 24,576 latents, k=32, bf16, for the Triton, sparse and
   dense (autograd) paths, AuxK on and off; sparsify's `SparseCoder` (if importable) timed on the same shapes and
   random data with its own trainer's step (forward under its bf16 autocast, FVU + AuxK loss, backward, gradient
   projection, SignSGD in schedule-free, decoder renormalised); the share of the GPU's measured bf16 matmul rate.
5. `streaming`: a model of SmolLM2-135M's shape (random weights, the GPT-2 tokenizer) on the GPU: seconds of
   capturing one layer against seconds of training an SAE on the same tokens.
"""
import argparse, json, math, os, platform, sys, tempfile, time, traceback
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's sae_nb
from sae_nb.architecture import SparseAutoencoder, dense_twin, sparse_decode
from sae_nb.bench import flop_limit, matmul_rate, streaming_overhead
from sae_nb.config import SAEConfig
from sae_nb.kernels import segment_sum_reference, group_by_latent, triton_decode, triton_segment_sum
from sae_nb.losses import fvu
from sae_nb.testing import check_matches_reference, synthetic_activations
from sae_nb.trainer import Callback, SAETrainer, benchmark_training

DEV = os.environ.get('GPU_CHECK_DEVICE', 'cuda')  # 'cpu' (with TRITON_INTERPRET=1): a dry run of the script
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
EPS = {'fp32': 1e-4, 'bf16': 3e-2, 'fp16': 5e-3}  # relative to the reference's largest entry
PROFILE_SHAPE = (768, 32, 4096)  # the profiled run: input_dim, expansion, batch
TRAIN_TOKENS, HELD_OUT, BATCH, N_TEXTS = 262_144, 16_384, 4096, 2048  # the training and streaming sections' sizes
SHAPES = [(4096, 32, 24576, 768), (1000, 17, 3000, 100), (333, 5, 1025, 129)]  # rows, k, latents, d


def section(name, results):
    "Run the decorated function now, storing its result (or the error) under `name`."
    def run(fn):
        t = time.perf_counter()
        try: results[name] = {'ok': True, **(fn() or {})}
        except Exception as e: results[name] = {'ok': False, 'error': f"{type(e).__name__}: {e}",
                                                'trace': traceback.format_exc()[-1500:]}
        results[name]['seconds'] = round(time.perf_counter() - t, 1)
        print(f"[{name}] {'ok' if results[name]['ok'] else 'FAILED: ' + results[name]['error']}", flush=True)
    return run


def kernels(results):
    for label, dt in DTYPES.items():
        for n, k, L, d in SHAPES:
            @section(f"kernels {label} {n}x{k} of {L}x{d}", results)
            def _():
                g = torch.Generator(device=DEV).manual_seed(n + L)
                vals = torch.randn(n, k, device=DEV, generator=g).to(dt)
                idx = torch.randint(0, L, (n, k), device=DEV, generator=g)
                W = (torch.randn(L, d, device=DEV, generator=g) / math.sqrt(d)).to(dt)
                # the reference in fp32 from the same (rounded) inputs
                check_matches_reference(lambda v, W: triton_decode(v, idx, W).float(),
                                        lambda v, W: sparse_decode(v.float(), idx, W.float()), vals, W, eps=EPS[label])
                src = torch.randn(n, d, device=DEV, generator=g).to(dt)
                got = triton_segment_sum(group_by_latent(idx, L), vals, src).float()
                want = segment_sum_reference(idx, vals.float(), src.float(), L)
                err = ((got - want).abs().max() / want.abs().max()).item()
                assert err <= EPS[label], f"segment sum differs by {err:.3g} (relative), more than {EPS[label]}"
                return {'segment sum error': err}


def sae(results):
    for kernels_, amp, every in [(k, a, e) for k in ('sparse', 'triton') for a in (False, True) for e in (3, 1000)]:
        # every 3rd latent dead, or 5 (fewer than k_aux = 16: AuxK's extra picks are -inf, ReLU'd to nothing)
        @section(f"sae {kernels_} {'bf16 autocast' if amp else 'fp32'}, every {every}th latent dead", results)
        def _():
            torch.manual_seed(0)
            m = SparseAutoencoder(SAEConfig(input_dim=256, expansion_factor=16, k=16, kernels=kernels_)).to(DEV)
            x = torch.randn(512, 256, device=DEV)
            dead = torch.zeros(m.cfg.latent_dim, dtype=torch.bool, device=DEV); dead[::every] = True
            def loss(model, x):
                with torch.autocast(DEV, dtype=torch.bfloat16, enabled=amp):
                    o = model(x, dead)
                    terms = model.loss_terms(x, o.x_hat, o.h, pre_acts=o.pre_acts, dead_mask=dead, out=o)
                    return o.x_hat.float(), terms['auxk_loss'][1].float()
            # the dense twin picks from its dense pre-activations: the same latents, so the same loss
            check_matches_reference(lambda x: loss(m, x), lambda x: loss(dense_twin(m), x), x,
                                    params=list(m.parameters()), eps=3e-2 if amp else 1e-4)


def training(results):
    data = synthetic_activations(n_tokens=TRAIN_TOKENS + HELD_OUT, input_dim=256, n_features=2048, mean_active=16,
                                 power=1.0, noise=0.02, mean_norm=8.0, magnitude_range=(0.5, 2.0), keep_codes=False)
    x, held = data.x[:TRAIN_TOKENS], data.x[TRAIN_TOKENS:]
    base = SAEConfig(input_dim=256, expansion_factor=8, k=16, batch_size=BATCH, eval_every=0, log_every=10**9,
                     checkpoint_every=0, checkpoint_dir=tempfile.mkdtemp())
    runs = {'cpu fp32 sparse': replace(base, device='cpu', select_dtype='float32'),
            'cuda bf16 triton': replace(base, device=DEV, kernels='triton', use_amp=True),
            'cuda bf16 sparse': replace(base, device=DEV, use_amp=True),
            'cuda fp16 triton (grad scaler)': replace(base, device=DEV, kernels='triton', use_amp=True,
                                                      amp_dtype='float16'),
            'cuda fp32 autograd': replace(base, device=DEV, kernels='autograd')}
    fvus = {}
    for label, cfg in runs.items():
        @section(f"training {label}", results)
        def _():
            t = time.perf_counter()
            tr = SAETrainer(cfg, progress=False).train(x)
            took = time.perf_counter() - t
            m = dense_twin(tr.sae.cpu().float().eval())  # scored on the CPU, densely, whatever it trained on
            with torch.no_grad(): out = m(held)
            fvus[label] = f = fvu(held, out.x_hat).item()
            dead = (out.h > 0).sum(0).eq(0).float().mean().item() if out.h is not None else None
            assert math.isfinite(f) and f < 0.6, f"held-out FVU {f:.3f}"
            return {'held-out FVU': f, 'dead share (held-out)': dead, 'seconds': round(took, 2)}
    @section("training gpu matches cpu", results)
    def _():
        ref = fvus['cpu fp32 sparse']
        worst = max(abs(v - ref) / ref for k, v in fvus.items() if k != 'cpu fp32 sparse')
        assert worst < 0.1, f"a GPU run's held-out FVU is {worst:.1%} off the CPU run's ({fvus})"
        return {'worst relative FVU gap': worst}
    @section("training exact resume on cuda", results)
    def _():
        cfg = replace(base, device=DEV, kernels='triton', use_amp=True, max_steps=30, checkpoint_every=10, log_every=5)
        run = lambda d, stop=None, resume=False: _run(cfg, x, d, stop, resume)
        straight = run(tempfile.mkdtemp())
        d = tempfile.mkdtemp()
        try: run(d, stop=20)
        except _Stop: pass
        resumed = run(d, resume=True)
        diffs = {n: (p.float() - resumed.sae.state_dict()[n].float()).abs().max().item()
                 for n, p in straight.sae.state_dict().items()}
        same_loss = resumed.history['loss'] == straight.history['loss']
        again = run(tempfile.mkdtemp())  # a second uninterrupted run: is the GPU run itself deterministic?
        rerun = max((p.float() - again.sae.state_dict()[n].float()).abs().max().item()
                    for n, p in straight.sae.state_dict().items())
        worst = max(diffs.values())
        # a GPU's atomic sums are not deterministic: a resume is checked against what a rerun differs by
        assert worst <= 2 * rerun + 1e-6, f"the resumed run is {worst:.3g} away, a rerun only {rerun:.3g}"
        return {'max weight difference': worst, 'bitwise': worst == 0.0, 'same loss history': same_loss,
                'max weight difference between two uninterrupted runs': rerun}


class _Stop(Exception): pass


def _sync():
    if DEV == 'cuda': torch.cuda.synchronize()


def _run(cfg, x, d, stop, resume):
    class StopAt(Callback):
        def on_step(self, trainer):
            if trainer.state.step == stop: raise _Stop()
    cfg = replace(cfg, checkpoint_dir=d)
    cbs = [StopAt()] if stop else []
    trainer = SAETrainer(cfg, progress=False, callbacks=cbs)
    return trainer.train(x[:cfg.batch_size * 40], resume_from=d if resume else None)


def speed(results, steps):
    rate = {}
    @section("speed bf16 matmul rate", results)
    def _():
        rate['gflops'] = matmul_rate(8192, DEV, torch.bfloat16)
        return {'GFLOP/s': rate['gflops']}
    big = SAEConfig(input_dim=768, expansion_factor=32, k=32, batch_size=4096, use_amp=True)
    configs = {'triton bf16': replace(big, kernels='triton'), 'sparse bf16': big,
               'autograd bf16': replace(big, kernels='autograd'),
               'triton bf16, AuxK off': replace(big, kernels='triton', auxk_coeff=0.0),
               'triton bf16, AuxK on every step (window 1 batch)': replace(big, kernels='triton', auxk_window=4096),
               'triton fp32': replace(big, kernels='triton', use_amp=False),
               'triton bf16, batch 16384': replace(big, kernels='triton', batch_size=16384)}
    for label, cfg in configs.items():
        @section(f"speed sae_nb {label}", results)
        def _():
            r = benchmark_training(cfg, steps, DEV)
            out = {'tokens/s': r['tokens_per_s'], 'ms/step': r['step_ms'], 'peak MB': r['peak_mb']}
            if rate: out['of bf16 FLOP limit'] = r['tokens_per_s'] / flop_limit(cfg, rate['gflops'])
            return out
    for batch in (4096, 16384):
        @section(f"speed sparsify {batch}", results)
        def _(): return sparsify_speed(768, 32 * 768, 32, batch, steps)


def sparsify_speed(d, latents, k, batch, steps):
    "sparsify's trainer step at its defaults (signum, auxk_alpha 0, no dead mask), on random data resident on the GPU."
    import importlib.metadata, importlib.util, types
    if 'sparsify' not in sys.modules:
        spec = importlib.util.find_spec('sparsify')
        if spec is None: raise ImportError("sparsify is not installed here: pip install eai-sparsify==1.3.3")
        pkg = types.ModuleType('sparsify'); pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules['sparsify'] = pkg  # the coder without the trainer's imports (datasets)
    from sparsify.config import SparseCoderConfig
    from sparsify.sparse_coder import SparseCoder
    from sparsify.sign_sgd import SignSGD
    from schedulefree import ScheduleFreeWrapper
    sae = SparseCoder(d, SparseCoderConfig(num_latents=latents, k=k), DEV, dtype=torch.float32)
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=5e-3 / (latents / 2**14) ** 0.5)]),
                              momentum=0.95)
    opt.train()
    xs = torch.randn(batch * (3 + steps), d, device=DEV)
    did_fire = torch.zeros(latents, dtype=torch.bool, device=DEV)
    def step(x):
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x=x, y=x, dead_mask=None, total_variance=(x - x.mean(0)).pow(2).sum())
        did_fire[out.latent_indices.flatten()] = True
        float(out.fvu.detach())  # the trainer reads the FVU back every step
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step(); opt.zero_grad()
    for i in range(3): step(xs[i * batch:(i + 1) * batch])
    _sync()
    if DEV == 'cuda': torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for i in range(3, 3 + steps): step(xs[i * batch:(i + 1) * batch])
    _sync()
    took = time.perf_counter() - t
    return {'tokens/s': batch * steps / took, 'ms/step': 1000 * took / steps,
            'peak MB': torch.cuda.max_memory_allocated() / 2**20 if DEV == 'cuda' else None,
            'version': importlib.metadata.version('eai-sparsify')}


def profile(results, out_dir):
    "Where a trainer step's time goes: the model's step alone against the trainer's, and the profiler's top ops."
    from torch.profiler import ProfilerActivity, profile as torch_profile
    d, mult, B = PROFILE_SHAPE
    cfg = SAEConfig(input_dim=d, expansion_factor=mult, k=32, batch_size=B, use_amp=True, kernels='triton',
                    device=DEV, log_every=10**9, eval_every=0, checkpoint_every=0, checkpoint_dir=tempfile.mkdtemp(),
                    warmup_steps=0)
    x = torch.randn(B * 40, d, device=DEV)
    @section("profile model step alone", results)
    def _():
        tr = SAETrainer(cfg, progress=False).train(x[:B * 3])
        sae, opt = tr.sae, tr.optimizer
        def step(b):
            with torch.autocast(DEV, dtype=torch.bfloat16):
                o = sae(b)
                loss = ((o.x_hat.float() - b) ** 2).sum() / ((b - b.mean(0)) ** 2).sum()
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        for i in range(3): step(x[i * B:(i + 1) * B])
        _sync(); t = time.perf_counter()
        for i in range(3, 23): step(x[i * B:(i + 1) * B])
        _sync()
        return {'ms/step': (time.perf_counter() - t) / 20 * 1000}
    for label, changes in {'default': {}, 'AuxK every step': {'auxk_window': B},
                           'batch x4': {'batch_size': 4 * B}}.items():
        @section(f"profile trainer step, {label}", results)
        def _():
            c = replace(cfg, **changes)
            xs = x if c.batch_size == B else torch.randn(c.batch_size * 25, d, device=DEV)
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == 'cuda' else [])
            prof, marks = torch_profile(activities=acts), []
            class Window(Callback):  # steps 10 to 20 alone: not the start, nor the last checkpoint
                def on_step(self, trainer):
                    if trainer.state.step == 10: _sync(); marks.append(time.perf_counter()); prof.start()
                    if trainer.state.step == 20: _sync(); prof.stop(); marks.append(time.perf_counter())
            SAETrainer(replace(c, max_steps=20), progress=False, callbacks=[Window()]).train(xs)
            by = 'self_cuda_time_total' if DEV == 'cuda' else 'self_cpu_time_total'
            text = (prof.key_averages().table(sort_by=by, row_limit=25) + '\n\n' +
                    prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=25))
            name = 'profile_' + label.replace(' ', '_') + '.txt'
            if out_dir: open(os.path.join(out_dir, name), 'w').write(text)
            return {'ms/step (profiled)': (marks[1] - marks[0]) / 10 * 1000}


def streaming(results):
    @section("streaming SmolLM2-135M shape", results)
    def _():
        from transformers import LlamaConfig, LlamaForCausalLM
        from sae_nb.testing import gpt2_tokenizer
        tok = gpt2_tokenizer()
        mc = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=len(tok), max_position_embeddings=2048,
                         tie_word_embeddings=True)
        torch.manual_seed(0)
        model = LlamaForCausalLM(mc).to(DEV).eval()
        words = "the quick brown fox jumps over the lazy dog and then it runs far away into the night".split()
        g = torch.Generator().manual_seed(0)
        texts = [' '.join(words[j] for j in torch.randint(0, len(words), (160,), generator=g)) for _ in range(N_TEXTS)]
        cfg = SAEConfig(input_dim=576, expansion_factor=8, k=32, batch_size=4096, kernels='triton', use_amp=True,
                        device=DEV, text_batch_size=64)
        streaming_overhead(model, tok, texts[:64], 15, cfg)  # warm-up
        r = streaming_overhead(model, tok, texts, 15, cfg)
        return r | {'model': 'LlamaForCausalLM, SmolLM2-135M shape, random weights, bf16 autocast off'}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--only', nargs='+', default=None,
                   choices=('kernels', 'sae', 'training', 'speed', 'streaming', 'profile'))
    p.add_argument('--steps', type=int, default=50, help="timed steps of each speed row")
    p.add_argument('--out', default='-', help="write the JSON here ('-': stdout)")
    a = p.parse_args()
    if DEV == 'cuda' and not torch.cuda.is_available(): sys.exit("No CUDA device: this script checks the GPU paths.")
    import triton
    results = {'device': torch.cuda.get_device_name() if DEV == 'cuda' else platform.processor(),
               'torch': torch.__version__, 'triton': triton.__version__, 'cuda': torch.version.cuda,
               'python': platform.python_version(), 'started': time.ctime()}
    todo = a.only or ('kernels', 'sae', 'training', 'speed', 'streaming')
    for name in todo:
        {'kernels': lambda: kernels(results), 'sae': lambda: sae(results), 'training': lambda: training(results),
         'speed': lambda: speed(results, a.steps), 'streaming': lambda: streaming(results),
         'profile': lambda: profile(results, os.path.dirname(a.out) if a.out != '-' else None)}[name]()
        text = json.dumps(results, indent=1)
        if a.out != '-': open(a.out, 'w').write(text)  # after every section: a killed run keeps what it measured
    if a.out == '-': print(text)
    failed = [k for k, v in results.items() if isinstance(v, dict) and not v['ok']]
    print(f"{len(failed)} failed: {failed}" if failed else "all passed")


if __name__ == '__main__':
    from sae_nb.testing import scratch_tempdir
    with scratch_tempdir('sae_nb-gpu-check-'): main()  # the runs' temporary folders, removed at the end
