"""Bad input gets a clear error: one table of cases. Each asserts the exception type, that the message names the
problem and the fix, and that no partial file is left behind."""
import contextlib, errno, io, json, os, shutil, warnings
from pathlib import Path
from unittest import mock

import pytest
import torch

from sae_nb.config import SAEConfig, ConfigError, pick_device
from sae_nb.architecture import SparseAutoencoder, CheckpointError
from sae_nb.data import ActivationStore, StoreError, hook_point, load_model, ModelNotFoundError
from sae_nb.trainer import SAETrainer, WandbCallback, save_checkpoint, load_checkpoint
from sae_nb.testing import tiny_gpt2
from sae_nb.cli import run_command, sae_train

CFG = dict(input_dim=8, expansion_factor=2, k=2, batch_size=32, checkpoint_every=0, eval_every=0, device='cpu')

@pytest.fixture(scope='module')
def model():
    return tiny_gpt2()

def _store_with_run(tmp, model):
    m, tok = model
    store = ActivationStore(tmp/'store')
    run = store.capture(m, tok, ['to be or not to be'] * 8, layers=1, shard_tokens=16, text_batch_size=2, progress=False)
    return store, run

def _trained(tmp, **kw):
    cfg = SAEConfig(**{**CFG, 'checkpoint_dir': str(tmp/'ckpt'), **kw})
    return SAETrainer(cfg, progress=False).train(torch.randn(64, cfg.input_dim))

def _train(tmp, x, **kw):
    return lambda: SAETrainer(SAEConfig(**{**CFG, 'checkpoint_dir': str(tmp/'run'), **kw}), progress=False).train(x)

def _with_nan(bad):
    x = torch.randn(96, 8); x[40, 3] = bad  # in the second batch
    return x

def shard_path(store, run, i=0): return store.run_dir(run)/store.meta(run)['shards'][i]['files']['1']['file']

def truncated_shard(tmp, model):
    store, run = _store_with_run(tmp, model)
    p = shard_path(store, run); p.write_bytes(p.read_bytes()[:50])
    return lambda: store.load_run(run, verify=False)

def not_safetensors_shard(tmp, model):
    store, run = _store_with_run(tmp, model)
    shard_path(store, run).write_text('these are not tensors')
    return lambda: store.load_run(run, verify=False)

def meta_disagrees(tmp, model):
    store, run = _store_with_run(tmp, model)
    path = store.run_dir(run)/'meta.json'
    meta = json.loads(path.read_text()); meta['shards'][0]['tokens'] += 5
    path.write_text(json.dumps(meta))
    return lambda: store.load_run(run, verify=False)

def meta_lists_missing_shard(tmp, model):
    store, run = _store_with_run(tmp, model)
    shard_path(store, run, 1).unlink()
    return lambda: store.load_run(run)

def checksum_mismatch(tmp, model):
    store, run = _store_with_run(tmp, model)
    p = shard_path(store, run); data = bytearray(p.read_bytes()); data[-1] ^= 1; p.write_bytes(bytes(data))
    return lambda: store.load_run(run)

def resume_other_architecture(tmp, model):
    tr = _trained(tmp)
    return lambda: SAETrainer(SAEConfig(**{**CFG, 'expansion_factor': 4, 'checkpoint_dir': str(tmp/'other')}), progress=False).train(
        torch.randn(64, 8), resume_from=tr.last_checkpoint)

def truncated_checkpoint(tmp, model):
    tr = _trained(tmp)
    p = tr.last_checkpoint/'sae.safetensors'; p.write_bytes(p.read_bytes()[:100])
    return lambda: load_checkpoint(tr.last_checkpoint)

def truncated_trainer_state(tmp, model):
    tr = _trained(tmp)
    p = tr.last_checkpoint/'trainer_state.pt'; p.write_bytes(p.read_bytes()[:100])
    return lambda: load_checkpoint(tr.last_checkpoint)

class Gadget:  # anything a pickle could smuggle in
    pass

def pickled_checkpoint(tmp, model):
    tr = _trained(tmp)
    torch.save({'step': 1, 'payload': Gadget()}, tr.last_checkpoint/'trainer_state.pt')
    return lambda: load_checkpoint(tr.last_checkpoint)

def read_only_checkpoint_dir(tmp, model):
    tr = _trained(tmp)
    tr.state.step += 1
    def save():
        with mock.patch('sae_nb.trainer.tempfile.mkdtemp', side_effect=OSError(errno.EROFS, os.strerror(errno.EROFS))):
            save_checkpoint(tr, tr.cfg.checkpoint_dir)
    return save

def output_folder_is_a_file(tmp, model):
    (tmp/'taken').write_text('a file the user cares about')
    return _train(tmp, torch.randn(64, 8), checkpoint_dir=str(tmp/'taken'))

def config_json(text):
    def setup(tmp, model):
        (tmp/'cfg.json').write_text(text)
        return lambda: SAEConfig.load(tmp/'cfg.json')
    return setup

def cli_flags(*argv):
    def setup(tmp, model):
        def run():
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                try: rc = run_command(sae_train, list(argv))
                except SystemExit as e: rc = e.code  # argparse rejects the flag itself
            if rc: raise ValueError(f"exit {rc}: {err.getvalue()}")
        return run
    return setup

def wandb_online_without_network(tmp, model):
    tr = _trained(tmp, wandb_project='sae-nb-test', wandb_mode='online')
    def run():
        env = {'WANDB_API_KEY': 'x' * 40, 'WANDB_BASE_URL': 'http://127.0.0.1:9', 'WANDB_DIR': str(tmp/'wandb')}
        with mock.patch.dict(os.environ, env), warnings.catch_warnings(record=True) as caught:
            os.environ.pop('WANDB_MODE', None)  # .ci/setup.sh sets offline; this case asks for online
            warnings.simplefilter('always')
            cb = WandbCallback(timeout=5)
            cb.on_start(tr)
            cb.run.finish()
        falls_back = [w for w in caught if 'logging offline instead' in str(w.message)]
        if falls_back: raise RuntimeWarning(str(falls_back[0].message))
    return run

def simple(fn): return lambda tmp, model: fn(tmp) if fn.__code__.co_argcount else fn

CASES = [  # (name, setup(tmp, model) -> action, exception type, words the message must hold)
    ('activations wider than input_dim', simple(lambda: SparseAutoencoder(SAEConfig(**CFG))(torch.randn(4, 9))),
     ValueError, ['input_dim=8', 'set input_dim=9']),
    ('training data of the wrong width', lambda tmp, m: _train(tmp, torch.randn(64, 9)), ValueError, ['input_dim=8', 'set input_dim=9']),
    ('NaN in activations', lambda tmp, m: _train(tmp, _with_nan(float('nan'))), ValueError, ['NaN or Inf', 'at step', 'filter the data']),
    ('Inf in activations', lambda tmp, m: _train(tmp, _with_nan(float('inf'))), ValueError, ['NaN or Inf', 'at step', 'checkpoint is intact']),
    ('a truncated shard', truncated_shard, StoreError, ['not a readable safetensors file', 'capture it again']),
    ('a shard that is not safetensors', not_safetensors_shard, StoreError, ['not a readable safetensors file', 'capture it again']),
    ('a shard whose checksum is wrong', checksum_mismatch, StoreError, ['corrupt', 'capture it again']),
    ('meta.json disagrees with its shard', meta_disagrees, StoreError, ['does not match meta.json', 'capture it again']),
    ('meta.json lists a missing shard', meta_lists_missing_shard, StoreError, ['is missing', 'capture it again']),
    ('an empty run', lambda tmp, m: lambda: ActivationStore(tmp/'s').save_run(torch.empty(0, 8)), StoreError, ['Nothing to store', 'empty']),
    ('an empty corpus', lambda tmp, m: lambda: ActivationStore(tmp/'s').capture(*m, [], layers=1), ValueError, ['corpus is empty', 'at least one text']),
    ('texts that tokenise to nothing', lambda tmp, m: lambda: ActivationStore(tmp/'s').capture(*m, ['', ''], layers=1, progress=False),
     StoreError, ['tokenise to nothing']),
    ('a layer beyond the model', lambda tmp, m: lambda: hook_point(m[0], 99), IndexError, ['layer=99', 'beyond the model', '2 blocks']),
    ('a module that does not exist', lambda tmp, m: lambda: hook_point(m[0], 'transformer.h.0.mlpp'), KeyError, ['no module named', 'transformer.h.0.mlp']),
    ('a model that cannot be found offline', simple(lambda: load_model('no-such-org/no-such-model')), ModelNotFoundError, ['no-such-org/no-such-model']),
    ('k = 0', simple(lambda: SAEConfig(k=0)), ConfigError, ['SAEConfig.k=0', 'between 1 and latent_dim']),
    ('k larger than the latents', simple(lambda: SAEConfig(input_dim=8, expansion_factor=2, k=17)), ConfigError, ['k=17', 'latent_dim=16', 'raise expansion_factor']),
    ('batch size 0', simple(lambda: SAEConfig(batch_size=0)), ConfigError, ['batch_size=0', 'at least 1']),
    ('a negative learning rate', simple(lambda: SAEConfig(learning_rate=-1e-3)), ConfigError, ['learning_rate=-0.001', '> 0']),
    ('an unknown activation', simple(lambda: SAEConfig(activation='gelu')), ConfigError, ["activation='gelu'", 'topk']),
    ('an unknown kernels choice', simple(lambda: SAEConfig(kernels='cuda')), ConfigError, ["kernels='cuda'", 'sparse']),
    ('a config JSON with unknown keys', config_json('{"input_dim": 8, "lerning_rate": 0.001}'), ConfigError, ['lerning_rate', 'Remove them or fix their names']),
    ('a config file that is not JSON', config_json('input_dim: 8'), ConfigError, ['JSON']),
    ('resume_from a checkpoint of another architecture', resume_other_architecture, CheckpointError, ['another shape', 'expansion_factor', 'Resume with the config it was trained with']),
    ('a truncated checkpoint', truncated_checkpoint, CheckpointError, ['sae.safetensors']),
    ('a truncated trainer state', truncated_trainer_state, CheckpointError, ['truncated', 'trainer_state.pt']),
    ('a checkpoint holding pickled objects', pickled_checkpoint, CheckpointError, ['pickled Python objects', 'refuses']),
    ('a read-only checkpoint folder', read_only_checkpoint_dir, OSError, ['Read-only file system', 'previous checkpoints are untouched', 'checkpoint_dir']),
    ('an output folder that is a file', output_folder_is_a_file, NotADirectoryError, ['is a file, not a folder', 'choose another checkpoint_dir']),
    ('a CLI flag of the wrong type', cli_flags('--k', 'many'), ValueError, ['exit 2', '--k', "invalid int value: 'many'"]),
    ('a CLI flag that does not exist', cli_flags('--lerning-rate', '0.1'), ValueError, ['exit 2', 'unrecognized arguments']),
    ('a CLI value out of range', cli_flags('--k', '0', '--max-texts', '4'), ValueError, ['exit 2', 'SAEConfig.k=0']),
    ('wandb online with no network', wandb_online_without_network, RuntimeWarning, ['offline instead', 'wandb sync']),
    ('CUDA asked for on a machine without it', simple(lambda: pick_device('cuda')), ConfigError, ["device='cuda'", "device='cpu'"]),
]

def _files(root:Path) -> set:
    return {p.relative_to(root) for p in root.rglob('*')}

@pytest.mark.parametrize('name, setup, exc, words', CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(tmp_path, model, name, setup, exc, words):
    if name.startswith('CUDA') and torch.cuda.is_available(): pytest.skip('this machine has CUDA')
    action = setup(tmp_path, model)
    before = _files(tmp_path)
    with pytest.raises(exc) as e: action()
    msg = str(e.value.args[0] if isinstance(e.value, KeyError) else e.value)
    for w in words: assert w in msg, f"{name}: the message does not say {w!r}:\n{msg}"
    left = {p for p in _files(tmp_path) - before if 'wandb' not in p.parts}
    assert not left, f"{name}: left behind {sorted(map(str, left))}"

def test_the_table_covers_at_least_25_cases():
    assert len(CASES) >= 25
