"""One SAE trained by two CPU processes (torchrun, gloo, DistributedDataParallel), each reading half of every global
batch, matches the SAE a single process trains on the same global batches; checkpoints resume across world sizes."""
import json, socket, subprocess, sys, textwrap

import torch
from safetensors.torch import load_file

# float32 sums taken in another order (each process sums its half, then the all-reduce adds the halves) moved the
# weights by at most 1.8e-7 over these 16 steps; a real difference is far larger (weighing the unevenly split last
# batch's halves equally: 6.7e-5; initialising from process 0's half of the first batch: 1.6e-2)
TOL = dict(rtol=0, atol=1e-6)

SCRIPT = textwrap.dedent('''
    import json, sys, torch
    torch.set_num_threads(1)
    from sae_nb.config import SAEConfig
    from sae_nb.sweep import train_distributed
    from sae_nb.trainer import SAETrainer
    from sae_nb.testing import synthetic_activations
    out, mode = sys.argv[1], sys.argv[2]
    ddp = mode.startswith('ddp')
    # 4001 tokens in global batches of 512: the last batch (417 tokens) splits unevenly, 209 and 208
    x = synthetic_activations(n_tokens=4001, input_dim=16, n_features=64, seed=4).x
    base = dict(input_dim=16, expansion_factor=4, k=4, batch_size=512, max_epochs=2, learning_rate=3e-3,
                warmup_steps=3, log_every=4, eval_every=0, checkpoint_every=5, keep_checkpoints=10, device='cpu',
                dead_feature_window=1024)  # short: AuxK turns on
    CONFIGS = {'topk': dict(lr_schedule='linear', resample_dead_every=6),  # the sparse kernels; resampling
               'relu': dict(activation='relu'),
               'jumprelu': dict(activation='jumprelu'),  # thresholds set from the first batch
               'gated': dict(activation='gated', l1_penalty_coeff=1e-2, b_dec_init='mean'),  # its own parameters
               'batchtopk': dict(activation='batchtopk')}  # a running-mean buffer
    def config(name, run):
        return SAEConfig(**base, **CONFIGS[name], checkpoint_dir=f"{out}/ckpt_{run}_{name}")
    def train(name, run, resume_from=None):
        cfg = config(name, run)
        if ddp: return train_distributed(cfg, x, progress=False, resume_from=resume_from)
        return SAETrainer(cfg, progress=False).train(x, resume_from=resume_from)
    import torch.distributed as dist
    names = list(CONFIGS) if mode in ('single', 'ddp') else ['topk', 'gated']
    for name in names:
        if mode in ('single', 'ddp'): tr = train(name, mode)
        else:  # resume the other world size's checkpoint at step 5
            other = 'ddp' if mode == 'single_resume' else 'single'
            tr = train(name, mode, resume_from=f"{out}/ckpt_{other}_{name}/step_000000005")
        rank = dist.get_rank() if dist.is_initialized() else 0
        tr.sae.save(f"{out}/{mode}_{name}_rank{rank}")
        if rank == 0:
            with open(f"{out}/{mode}_{name}.json", 'w') as f:
                json.dump(dict(step=tr.state.step, tokens_seen=tr.state.tokens_seen), f)
''')

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _run(tmp_path, mode):
    script = tmp_path/'train.py'
    script.write_text(SCRIPT)
    launch = ([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
               '--master_port', str(_free_port())] if mode.startswith('ddp') else [sys.executable])
    res = subprocess.run(launch + [str(script), str(tmp_path), mode], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

def _weights(tmp_path, run, name, rank=0): return load_file(str(tmp_path/f'{run}_{name}_rank{rank}'/'sae.safetensors'))

def _close(a:dict, b:dict, what:str):
    for k in a:
        gap = (a[k] - b[k]).abs().max()
        assert torch.allclose(a[k], b[k], **TOL), f"{what}: {k} differs by {gap:.2e}"

def test_two_gloo_processes_match_one_process_and_resume_across_world_sizes(tmp_path):
    _run(tmp_path, 'single')
    _run(tmp_path, 'ddp')
    _run(tmp_path, 'ddp_resume')
    _run(tmp_path, 'single_resume')
    for name in ('topk', 'relu', 'gated', 'jumprelu', 'batchtopk'):
        r0, r1 = _weights(tmp_path, 'ddp', name, 0), _weights(tmp_path, 'ddp', name, 1)
        for k in r0: assert torch.equal(r0[k], r1[k]), f"{name}: the two processes disagree on {k}"
        one, two = (json.loads((tmp_path/f'{run}_{name}.json').read_text()) for run in ('single', 'ddp'))
        assert one == two == dict(step=16, tokens_seen=2 * 4001), (one, two)  # every token once per epoch
    for name in ('topk', 'relu', 'gated'):  # per-token variants: the same SAE as one process trains
        _close(_weights(tmp_path, 'ddp', name), _weights(tmp_path, 'single', name), f"{name}, 2 processes vs 1")
    # JumpReLU's bandwidth and L0 target and BatchTopK's selection read each process's slice as a batch: not the same
    # SAE as one process trains (above: the processes agree, BatchTopK's averaged threshold included)
    for name in ('topk', 'gated'):  # checkpoints at step 5 of 16, resumed at the other world size
        single = _weights(tmp_path, 'single', name)
        _close(_weights(tmp_path, 'single_resume', name), single, f"{name}, saved by 2 processes, resumed in 1")
        _close(_weights(tmp_path, 'ddp_resume', name), single, f"{name}, saved by 1 process, resumed in 2")
        r0, r1 = _weights(tmp_path, 'ddp_resume', name, 0), _weights(tmp_path, 'ddp_resume', name, 1)
        for k in r0: assert torch.equal(r0[k], r1[k]), f"{name} resumed: the two processes disagree on {k}"
