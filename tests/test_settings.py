"""No dead settings: for every field of `SAEConfig`, changing it from its default changes what training does or saves.

Each field has a `Case`: the other settings it needs to matter (its context), the values to try, and what must differ
from a run that differs only in that field. The field list comes from `dataclasses.fields(SAEConfig)`, so a new field
fails here until someone says how to exercise it. The saved `cfg.json` records every field and is never counted."""
import contextlib, re, tempfile
from collections import Counter
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import pytest
import torch

import sae_nb.architecture as arch
from sae_nb.kernels import native_bf16_cpu
from sae_nb.config import SAEConfig, ConfigError
from sae_nb.data import Batch, load_model, load_texts
from sae_nb.trainer import SAETrainer, train_sae
from sae_nb.testing import synthetic_activations

# tiny and quick: a 16-wide SAE of 64 latents, 16 steps of 128 tokens, every step logged
BASE = dict(input_dim=16, expansion_factor=4, k=4, batch_size=128, learning_rate=1e-2, warmup_steps=2, log_every=1,
            device='cpu')
DEAD = dict(dead_feature_window=128)  # a latent that misses one batch is dead: dead latents appear within a few steps
AUXK = dict(auxk_window=128)  # the same for AuxK, which has a window of its own
EVAL = dict(eval_every=4, eval_tokens=256)
STREAM = dict(input_dim=32, eval_every=0)  # the tiny GPT-2's width; 40 short texts are too few to hold any out
SPIES = ('sparse_decode', 'fast_sparse_decode', 'triton_decode', 'sparse_topk_encode')  # looked up when called


@dataclass
class Case:
    "How to show that a field matters."
    values: tuple  # settings to try instead of the base one (each must change the observable)
    observe: str  # weights, history, eval, split, files, calls, forwards, device or error: what must differ
    context: dict = None  # other settings it needs to matter
    data: str = 'tokens'  # tokens: synthetic activations of labelled texts; texts: the tiny GPT-2 streamed over text;
                          # pairs: those activations with a target (a module's output) for transcoders
    raises: tuple = None  # (exception type, words of its message) when the change must be refused


CASES = {
    # architecture
    'input_dim': Case((8,), 'error', raises=(ValueError, 'input_dim=8')),
    'expansion_factor': Case((2,), 'weights'),
    'activation': Case(('relu', 'batchtopk', 'jumprelu', 'gated'), 'weights'),
    'variant_settings': Case(({'aux_coeff': 0.0},), 'weights', dict(activation='gated', l1_penalty_coeff=0.1)),
    'k': Case((8,), 'weights'),
    'use_relu': Case((False,), 'weights', dict(activation='relu')),
    'b_dec_init': Case(('mean', 'zeros'), 'weights'),
    'sparse_decode': Case((False,), 'calls', dict(kernels='autograd')),  # same maths, other path
    'kernels': Case(('autograd',), 'calls'),  # same maths, other path ('triton' needs CUDA)
    # the pick's product in the other precision than auto's here (auto: bfloat16 where the CPU has it natively)
    'select_dtype': Case(('float32',) if native_bf16_cpu() else ('bfloat16',), 'weights'),
    'probe_classes': Case((3,), 'weights'),
    'normalize_activations': Case(('expected_average_only_in',), 'weights'),  # input_scale is saved
    # loss weights
    # alone, its scale is lost on Adam (an update does not depend on the gradient's scale): weigh it against L1
    'reconstruction_coeff': Case((0.5,), 'weights', dict(activation='relu', l1_penalty_coeff=0.1)),
    'l1_penalty_coeff': Case((0.1,), 'weights', dict(activation='relu')),
    # decoder norms stay 1 when renormalised every step, and the gradient through them is removed as parallel
    'l1_weight_by_decoder_norm': Case((False,), 'weights', dict(activation='relu', l1_penalty_coeff=0.1,
                                                                normalize_decoder_every=1000)),
    'decorrelation_coeff': Case((0.1,), 'weights'),
    'probe_loss_coeff': Case((1.0,), 'weights', dict(probe_classes=3)),
    'temporal_smoothness_coeff': Case((1.0,), 'weights', dict(run_length=4)),
    'auxk_coeff': Case((0.0, 1.0), 'weights', AUXK),
    'k_aux': Case((1,), 'weights', dict(AUXK, expansion_factor=8)),
    'auxk_window': Case((128,), 'weights'),  # by default AuxK waits 640 tokens here (40 mean firings of a latent)
    # optimisation
    'learning_rate': Case((1e-3,), 'weights'),
    'batch_size': Case((256,), 'weights'),
    'max_epochs': Case((2,), 'history'),
    'max_steps': Case((4,), 'history'),
    'warmup_steps': Case((8,), 'weights'),
    'lr_schedule': Case(('linear', 'cosine', 'wsd'), 'weights'),
    'decay_fraction': Case((0.1, 1.0), 'weights', dict(lr_schedule='wsd')),
    'grad_clip': Case((1e-3,), 'weights'),  # the losses are normalised: gradients rarely reach the default 1.0
    'average_steps': Case((4,), 'weights'),  # 16 steps: the default horizon (4% of them) is under a step, so none
    'use_amp': Case((True,), 'weights'),  # bfloat16 autocast on the CPU
    'amp_dtype': Case(('float16',), 'error', dict(use_amp=True), raises=(ConfigError, "amp_dtype='float16'")),
    'seed': Case((1,), 'weights'),
    'device': Case(('cuda',), 'device', raises=None if torch.cuda.is_available() else (ConfigError, "device='cuda'")),
    # dead features
    'dead_feature_window': Case((128,), 'history'),
    'use_ghost_grads': Case((True,), 'weights', dict(DEAD, activation='relu', l1_penalty_coeff=1.0,
                                                     learning_rate=0.05)),  # a strong L1 kills ReLU latents
    'resample_dead_every': Case((2,), 'weights', DEAD),
    'normalize_decoder_every': Case((1000,), 'weights'),
    # streaming
    'text_batch_size': Case((4,), 'forwards', STREAM, data='texts'),
    'run_length': Case((4,), 'weights'),
    # evaluation and logging
    'log_every': Case((2,), 'history'),
    'checkpoint_every': Case((4,), 'files'),
    'eval_every': Case((EVAL['eval_every'],), 'eval', dict(eval_tokens=EVAL['eval_tokens'])),
    'eval_tokens': Case((EVAL['eval_tokens'],), 'split', dict(eval_every=EVAL['eval_every'])),  # 8192: too few tokens
    'early_stopping_patience': Case((1,), 'history', dict(EVAL, eval_every=1, max_epochs=4, learning_rate=0.1)),
    'wandb_project': Case(('sae_nb_test',), 'files'),  # offline, the default mode
    'wandb_mode': Case(('disabled',), 'files', dict(wandb_project='sae_nb_test')),  # never 'online': no network here
    'checkpoint_dir': Case(('elsewhere',), 'files'),
    'keep_checkpoints': Case((1,), 'files', dict(checkpoint_every=2)),
}

# each variant's own settings (`SAEConfig.variant_settings`), trained as that variant: (variant, setting) -> Case
VARIANT_CASES = {
    ('jumprelu', 'l0_coeff'): Case((0.0,), 'weights'),
    ('jumprelu', 'bandwidth'): Case((0.5,), 'weights'),
    ('jumprelu', 'threshold_rate'): Case((1.0,), 'weights'),
    ('gated', 'aux_coeff'): Case((0.0,), 'weights', dict(l1_penalty_coeff=0.1)),
    ('matryoshka', 'group_sizes'): Case(((16, 48),), 'weights'),
    ('matryoshka', 'prefix_coeff'): Case((0.0,), 'weights'),
    ('transcoder', 'latents'): Case(('relu', 'batchtopk'), 'weights', data='pairs'),
    ('skip_transcoder', 'latents'): Case(('relu', 'batchtopk'), 'weights', data='pairs'),
}
OWN = [(name, f.name) for name, v in arch.VARIANTS.items() if v.settings and v.settings.__module__.startswith('sae_nb.')
       for f in fields(v.settings)]  # the package's variants (02_architecture, 02c_transcoders)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "Tiny tensors: threads only add waiting (and one thread keeps every run bit-for-bit repeatable)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def quiet_wandb(monkeypatch, tmp_path_factory):
    "wandb runs offline, silently, writing only under the run's folder and a scratch folder."
    monkeypatch.delenv('WANDB_MODE', raising=False)
    monkeypatch.setenv('WANDB_SILENT', 'true')
    scratch = tmp_path_factory.getbasetemp()/'wandb_home'
    for name in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR', 'WANDB_ARTIFACT_DIR'):
        monkeypatch.setenv(name, str(scratch))


@lru_cache(maxsize=1)
def labelled_texts() -> Batch:
    "2,048 synthetic activations: 64 texts of 32 tokens, one of 3 classes per text."
    x = synthetic_activations(n_tokens=2048, input_dim=16, n_features=64, mean_active=4).x
    row = torch.arange(len(x))
    return Batch(x, row // 32, row % 32, (row // 32) % 3)


@lru_cache(maxsize=1)
def module_pairs() -> Batch:
    "The same activations with a target: what a small fixed MLP makes of each (a transcoder learns to predict it)."
    b, g = labelled_texts(), torch.Generator().manual_seed(7)
    w1, w2 = torch.randn(16, 32, generator=g) / 4, torch.randn(32, 16, generator=g) / 6
    return Batch(b.acts, b.sequence_ids, b.positions, b.labels, torch.relu(b.acts @ w1) @ w2)


@lru_cache(maxsize=1)
def tiny_model():
    "The tiny GPT-2, 40 passages, and a list that grows by one at each forward pass of the model."
    model, tok = load_model('tiny-gpt2')
    forwards = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    return model, tok, load_texts('shakespeare')[:40], forwards


@contextlib.contextmanager
def spied_kernels(calls:Counter):
    "Count the calls to the decode and encode kernels that `SparseAutoencoder.forward` picks between."
    originals = {name: getattr(arch, name) for name in SPIES}
    def spy(name):
        def counted(*args, **kwargs):
            calls[name] += 1
            return originals[name](*args, **kwargs)
        return counted
    try:
        for name in SPIES: setattr(arch, name, spy(name))
        yield
    finally:
        for name, fn in originals.items(): setattr(arch, name, fn)


def saved_files(root:Path) -> list:
    "Paths under `root`, three levels deep, with wandb's dated run ids made generic."
    paths = ('/'.join(p.relative_to(root).parts[:3]) for p in root.rglob('*'))
    return sorted({re.sub(r'run-[0-9_]*-?[a-z0-9]+', 'run-*', p) for p in paths})


TIMING = ('time_per_step', 'tokens_per_s')  # wall-clock figures: they differ between any two runs


def train(data:str, settings:dict) -> dict:
    "Train once with `settings` (over `BASE`) in a fresh folder; return everything a setting might change."
    cfg, calls = SAEConfig(**{**BASE, **settings}), Counter()
    root = Path(tempfile.mkdtemp())
    torch.manual_seed(0)  # the probe's initial weights come from the global generator: test_seed_alone_repeats_a_run
    with contextlib.chdir(root), spied_kernels(calls):  # checkpoint_dir is relative to the run's own folder
        try:
            if data == 'texts':
                model, tok, texts, forwards = tiny_model()
                forwards.clear()
                tr = train_sae(model, texts, cfg, layer=1, tokenizer=tok, mode='stream', progress=False)
            else:
                forwards = []
                tr = SAETrainer(cfg, progress=False).train((module_pairs() if data == 'pairs' else labelled_texts())[:])
        except Exception as e: return dict(error=(type(e), str(e)))
    return dict(error=None, weights={k: v.detach().cpu().clone() for k, v in tr.sae.state_dict().items()},
                history={k: v for k, v in tr.history.items() if k not in TIMING}, eval=tr.state.eval_history,
                split=tr.state.split, files=saved_files(root), calls=dict(calls), forwards=len(forwards),
                device=str(next(tr.sae.parameters()).device))


def same(a, b) -> bool:
    "Exact equality of nested dicts, lists and tensors (shapes and every bit of every value)."
    if isinstance(a, dict) and isinstance(b, dict): return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a) and torch.is_tensor(b): return a.dtype == b.dtype and a.shape == b.shape and a.equal(b)
    return type(a) == type(b) and a == b


_runs = {}
DEFAULTS = {f.name: f.default for f in fields(SAEConfig)}

def baseline(data:str, settings:dict) -> dict:
    "The run with `settings`, trained twice: it must repeat exactly, so any difference from it is the setting's doing."
    key = (data, tuple(sorted(settings.items())))
    if key not in _runs:
        first, again = train(data, settings), train(data, settings)
        assert first['error'] is None, f"the baseline {settings} fails: {first['error']}"
        unequal = [k for k in first if not same(first[k], again[k])]
        assert not unequal, f"two runs with {settings} differ in {unequal}: the comparisons below would prove nothing"
        _runs[key] = first
    return _runs[key]


def test_every_case_names_a_field():
    names = {f.name for f in fields(SAEConfig)}
    assert not set(CASES) - names, f"CASES checks settings SAEConfig no longer has: {sorted(set(CASES) - names)}"


@pytest.mark.parametrize('name', [f.name for f in fields(SAEConfig)])
def test_setting_changes_training(name):
    if name not in CASES:
        pytest.fail(f"SAEConfig.{name} has no check: add a Case for it to CASES in tests/test_settings.py, saying what "
                    f"it needs to matter and what it changes (a setting that changes nothing should be removed).")
    case = CASES[name]
    context = dict(case.context or {})
    base = baseline(case.data, context)
    before = {**DEFAULTS, **BASE, **context}[name]
    for value in case.values:
        assert value != before, f"{name}={value!r} is its value in the baseline already"
        changed = train(case.data, {**context, name: value})
        if case.raises:
            exc, words = case.raises
            assert changed['error'] is not None, f"{name}={value!r} should be refused with a {exc.__name__}"
            assert issubclass(changed['error'][0], exc) and words in changed['error'][1], changed['error']
            continue
        assert changed['error'] is None, f"{name}={value!r} with {context} fails: {changed['error']}"
        assert not same(changed[case.observe], base[case.observe]), \
            f"{name}={value!r} (from {before!r}) with {context or 'the base settings'} leaves {case.observe} unchanged"


@pytest.mark.parametrize('variant,name', OWN)
def test_variant_setting_changes_training(variant, name):
    if (variant, name) not in VARIANT_CASES:
        pytest.fail(f"The {variant} variant's setting {name} has no check: add a Case for it to VARIANT_CASES in "
                    f"tests/test_settings.py (a setting that changes nothing should be removed).")
    case = VARIANT_CASES[variant, name]
    context = {**(case.context or {}), 'activation': variant}
    base = baseline(case.data, context)
    before = getattr(arch.VARIANTS[variant].settings(), name)
    for value in case.values:
        assert value != before, f"{variant} {name}={value!r} is its default already"
        changed = train(case.data, {**context, 'variant_settings': {name: value}})
        assert changed['error'] is None, f"{variant} {name}={value!r} fails: {changed['error']}"
        assert not same(changed[case.observe], base[case.observe]), \
            f"{variant} {name}={value!r} (from {before!r}) leaves {case.observe} unchanged"


def test_seed_alone_repeats_a_run():
    "`seed` seeds initialisation and data order: the same config trains the same SAE whatever the global generator."
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        cfg = SAEConfig(**BASE, probe_classes=3, checkpoint_dir=tempfile.mkdtemp())
        runs.append(SAETrainer(cfg, progress=False).train(labelled_texts()[:]).sae.state_dict())
    differ = [k for k in runs[0] if not torch.equal(runs[0][k], runs[1][k])]
    assert not differ, f"two runs with the same seed differ in {differ}: not everything is drawn from cfg.seed"
