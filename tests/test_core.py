"Tests of `fine_tuning_flm.core` beyond the lesson: environment handling, bad input, interrupted writes."
import os, configparser, multiprocessing as mp
from pathlib import Path
import pytest, torch
import fine_tuning_flm
from fine_tuning_flm.core import *

ROOT = Path(__file__).resolve().parent.parent

def test_version_matches_settings():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    assert fine_tuning_flm.__version__ == cfg['DEFAULT']['version']

def test_default_device_env(monkeypatch):
    monkeypatch.setenv('FLM_DEVICE', 'cpu')
    assert default_device() == torch.device('cpu')
    monkeypatch.delenv('FLM_DEVICE')
    assert default_device().type in ('cuda', 'mps', 'cpu')

@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_default_device_refuses_missing_cuda():
    with pytest.raises(ValueError, match="'cuda'"): default_device('cuda')

@pytest.mark.parametrize('bad', [1.5, '3', None, True])
def test_set_seed_bad_input(bad):
    with pytest.raises(TypeError, match='seed must be an int'): set_seed(bad)

def test_set_seed_torch_reproducible():
    set_seed(123); a = torch.randperm(1000)
    set_seed(123); b = torch.randperm(1000)
    assert torch.equal(a, b)

def test_cache_dir_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv('FLM_CACHE', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    assert cache_dir() == tmp_path/'fine_tuning_flm'
    assert cache_dir('data').is_dir()

def test_data_dir_names_bad_env(monkeypatch, tmp_path):
    monkeypatch.setenv('FLM_DATA', str(tmp_path/'nope'))
    with pytest.raises(FileNotFoundError, match='nope'): data_dir()

@pytest.mark.parametrize('mode', ['a', 'r', 'w+', 'ab'])
def test_atomic_write_bad_mode(tmp_path, mode):
    with pytest.raises(ValueError, match=repr(mode)):
        with atomic_write(tmp_path/'f', mode): pass

def test_atomic_write_refuses_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match=str(tmp_path.name)):
        with atomic_write(tmp_path, 'w') as f: f.write('x')

def test_atomic_write_keyboard_interrupt(tmp_path):
    "Even a Ctrl-C mid-write leaves the old file and no temporary file."
    fn = tmp_path/'ckpt.safetensors'
    fn.write_bytes(b'v1')
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(fn) as f:
            f.write(b'v2-partial'); raise KeyboardInterrupt
    assert fn.read_bytes() == b'v1'
    assert os.listdir(tmp_path) == ['ckpt.safetensors']

def _killed_writer(fn):
    with atomic_write(fn) as f:
        f.write(b'x' * 1000); f.flush()
        os._exit(1)  # the process dies mid-write, as under `kill -9`

def test_atomic_write_killed_process(tmp_path):
    "A writer process that dies never replaces the target: readers still see the old file."
    fn = tmp_path/'model.safetensors'
    fn.write_bytes(b'complete')
    p = mp.get_context('fork').Process(target=_killed_writer, args=(fn,)); p.start(); p.join()
    assert p.exitcode == 1
    assert fn.read_bytes() == b'complete'

def test_atomic_dir_replaces_existing(tmp_path):
    d = tmp_path/'ds'; d.mkdir(); (d/'old.csv').write_text('old')
    with atomic_dir(d) as tmp: (tmp/'new.csv').write_text('new')
    assert sorted(p.name for p in d.iterdir()) == ['new.csv']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ds']
