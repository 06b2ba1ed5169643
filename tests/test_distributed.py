"""One SAE trained by two CPU processes (torchrun, gloo, DistributedDataParallel), each reading half of every global
batch, matches the SAE a single process trains on the same global batches; checkpoints resume across world sizes."""
import json, socket, subprocess, sys, textwrap

import torch
from safetensors.torch import load_file

from sae_nb.trainer import load_checkpoint

# float32 sums taken in another order (each process sums its half, then the all-reduce adds the halves) moved the
# weights by at most 1.8e-7 over these 16 steps; a real difference is far larger (weighing the unevenly split last
# batch's halves equally: 2.0e-5 to 6.7e-5; initialising from process 0's half of the first batch: 0.06 to 0.93;
# TopK resampling from each process's own half: 0.91)
TOL = dict(rtol=0, atol=1e-6)

SCRIPT = textwrap.dedent('''
    import json, sys, torch
    torch.set_num_threads(1)
    from sae_nb.config import SAEConfig
    from sae_nb.sweep import train_distributed
    from sae_nb.trainer import SAETrainer, CheckpointCallback
    from sae_nb.testing import synthetic_activations
    out, mode = sys.argv[1], sys.argv[2]
    ddp = mode.startswith('ddp')
    # 4001 tokens in global batches of 512: the last batch (417 tokens) splits unevenly, 209 and 208
    x = synthetic_activations(n_tokens=4001, input_dim=16, n_features=64, seed=4).x
    base = dict(input_dim=16, expansion_factor=4, k=4, batch_size=512, max_epochs=2, learning_rate=3e-3,
                warmup_steps=3, log_every=4, eval_every=0, checkpoint_every=5, keep_checkpoints=10, device='cpu',
                dead_feature_window=1024)  # short: AuxK turns on (each config below may override these)
    # the sparse kernels; 7 latents dead at steps 5 and 11 (unfired over the last global batch), resampled from the
    # global batch. AuxK off: it measures its error in each process's own spread of x (05a_sweep)
    CONFIGS = {'topk': dict(lr_schedule='linear', expansion_factor=16, dead_feature_window=512, resample_dead_every=6,
                            auxk_coeff=0),
               'relu': dict(activation='relu'),
               'jumprelu': dict(activation='jumprelu'),  # thresholds set from the first batch
               'gated': dict(activation='gated', l1_penalty_coeff=1e-2, b_dec_init='mean'),  # its own parameters
               'batchtopk': dict(activation='batchtopk')}  # a running-mean buffer
    def config(name, run):
        return SAEConfig(**{**base, **CONFIGS[name]}, checkpoint_dir=f"{out}/ckpt_{run}_{name}")
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
        saves = sum(isinstance(cb, CheckpointCallback) for cb in tr.callbacks)  # does this process write checkpoints
        with open(f"{out}/{mode}_{name}_rank{rank}.json", 'w') as f:
            json.dump(dict(step=tr.state.step, tokens_seen=tr.state.tokens_seen, saves=saves), f)
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
        one, r0, r1 = (json.loads((tmp_path/f'{run}_{name}_rank{r}.json').read_text())
                       for run, r in (('single', 0), ('ddp', 0), ('ddp', 1)))
        assert one == r0 == dict(step=16, tokens_seen=2 * 4001, saves=1), (one, r0)  # every token once per epoch
        assert r1 == dict(r0, saves=0), r1  # counted alike by process 1, which writes no checkpoint
        saved = sorted(p.name for p in (tmp_path/f'ckpt_ddp_{name}').iterdir())
        assert saved == [f'step_{s:09d}' for s in (5, 10, 15, 16)], saved
    for name in ('topk', 'relu', 'gated'):  # per-token variants: the same SAE as one process trains
        _close(_weights(tmp_path, 'ddp', name), _weights(tmp_path, 'single', name), f"{name}, 2 processes vs 1")
    # JumpReLU's bandwidth and L0 target and BatchTopK's selection read each process's slice as a batch: not the same
    # SAE as one process trains (above: the processes agree, BatchTopK's averaged threshold included)
    for name in ('topk', 'gated'):  # checkpoints at step 5 of 16, resumed at the other world size
        _, state, _ = load_checkpoint(tmp_path/f'ckpt_ddp_{name}'/'step_000000005')
        assert (state['step'], state['tokens_seen'], state['data_position']['batch_in_epoch']) == (5, 5 * 512, 5), state
        single = _weights(tmp_path, 'single', name)
        _close(_weights(tmp_path, 'single_resume', name), single, f"{name}, saved by 2 processes, resumed in 1")
        _close(_weights(tmp_path, 'ddp_resume', name), single, f"{name}, saved by 1 process, resumed in 2")
        r0, r1 = _weights(tmp_path, 'ddp_resume', name, 0), _weights(tmp_path, 'ddp_resume', name, 1)
        for k in r0: assert torch.equal(r0[k], r1[k]), f"{name} resumed: the two processes disagree on {k}"
