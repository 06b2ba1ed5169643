"""One SAE trained by two CPU processes (torchrun, gloo), each reading half of every global batch, matches the SAE
a single process trains on the same global batches."""
import subprocess, sys, textwrap

import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent('''
    import sys, torch
    torch.set_num_threads(1)
    from sae_nb.config import SAEConfig
    from sae_nb.sweep import train_distributed
    from sae_nb.trainer import SAETrainer
    from sae_nb.testing import synthetic_activations
    out, mode = sys.argv[1], sys.argv[2]
    x = synthetic_activations(n_tokens=8192, input_dim=16, n_features=64, seed=4).x
    cfg = SAEConfig(input_dim=16, expansion_factor=4, k=4, batch_size=512, max_epochs=2, learning_rate=3e-3, warmup_steps=5,
                    b_dec_init='zeros', log_every=4, eval_every=0, checkpoint_every=0, checkpoint_dir=out + '/ckpt_' + mode, device='cpu')
    tr = train_distributed(cfg, x, progress=False) if mode == 'ddp' else SAETrainer(cfg, progress=False).train(x)
    import torch.distributed as dist
    rank = dist.get_rank() if dist.is_initialized() else 0
    tr.sae.save(f"{out}/{mode}_rank{rank}")
''')

def test_two_gloo_processes_match_one_process(tmp_path):
    script = tmp_path/'train.py'; script.write_text(SCRIPT)
    single = subprocess.run([sys.executable, str(script), str(tmp_path), 'single'], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29517',
                          str(script), str(tmp_path), 'ddp'], capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = load_file(str(tmp_path/'single_rank0'/'sae.safetensors'))
    r0, r1 = (load_file(str(tmp_path/f'ddp_rank{r}'/'sae.safetensors')) for r in (0, 1))
    for name in one:
        assert torch.equal(r0[name], r1[name]), f"{name}: the two processes disagree"
        assert torch.allclose(r0[name], one[name], rtol=1e-4, atol=1e-5), \
            f"{name}: data-parallel differs from one process by {(r0[name] - one[name]).abs().max():.2e}"
