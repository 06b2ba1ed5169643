"""What a run leaves behind has the user's normal permissions: written atomically, but readable by colleagues like any
file they make (0644 files and 0755 folders under umask 022), not private temporary-file modes (0600 / 0700)."""
import os
from pathlib import Path

from sae_nb.cli import sae_train


def test_every_saved_file_has_normal_modes(tmp_path):
    old = os.umask(0o022)
    try:
        sae_train(model='tiny-gpt2', layer='1', max_texts=40, expansion_factor=2, k=4, batch_size=256, max_epochs=1,
                  store=str(tmp_path/'store'), out=str(tmp_path/'out'), quiet=True, no_wandb=True)
    finally: os.umask(old)
    saved = [p for p in tmp_path.rglob('*')]
    assert any(p.name == 'sae.safetensors' for p in saved) and any(p.name == 'trainer_state.pt' for p in saved)
    assert any(p.name == 'meta.json' for p in saved)
    assert any(p.suffix == '.safetensors' and 'shard' in p.name for p in saved)
    wrong = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in saved
             if p.stat().st_mode & 0o777 != (0o755 if p.is_dir() else 0o644)}
    assert not wrong, f"not the user's normal modes: {wrong}"
