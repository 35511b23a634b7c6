"`flm doctor` (issue #21): a torchvision built for another torch, or one that cannot load, is named with its fix; a sound install passes."
import importlib.metadata, subprocess, sys
import pytest
import fine_tuning_flm.cli as C

def test_doctor_passes_here():
    r = subprocess.run([sys.executable, '-m', 'fine_tuning_flm.cli', 'doctor'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'ok    torch' in r.stdout and 'BertModel imports' in r.stdout and 'loaded offline' in r.stdout

def test_a_torchvision_for_another_torch_is_named_with_its_fix(monkeypatch, capsys):
    real_version, real_requires = importlib.metadata.version, importlib.metadata.requires
    monkeypatch.setattr(importlib.metadata, 'version', lambda p: '0.29.1' if p == 'torchvision' else real_version(p))
    monkeypatch.setattr(importlib.metadata, 'requires', lambda p: ['numpy', 'torch==2.14.1'] if p == 'torchvision' else real_requires(p))
    monkeypatch.setitem(C.DOCTOR_CHECKS, 'language model', lambda: 'skipped in this test')
    with pytest.raises(OSError, match=r'1 problem\(s\): torchvision'): C.run(['doctor'])
    out = capsys.readouterr().out
    assert 'FAIL  torchvision     torchvision 0.29.1 was built for torch==2.14.1' in out and 'download.pytorch.org/whl/cpu' in out

def test_a_torchvision_that_cannot_load(monkeypatch, capsys):
    import builtins, torch
    real_import, real_version, real_requires = builtins.__import__, importlib.metadata.version, importlib.metadata.requires
    def fake_import(name, *a, **k):
        if name == 'torchvision': raise RuntimeError('operator torchvision::nms does not exist')
        return real_import(name, *a, **k)
    monkeypatch.setattr(importlib.metadata, 'version', lambda p: '0.28.0' if p == 'torchvision' else real_version(p))
    monkeypatch.setattr(importlib.metadata, 'requires', lambda p: [f"torch=={torch.__version__.split('+')[0]}"] if p == 'torchvision' else real_requires(p))
    monkeypatch.setattr(builtins, '__import__', fake_import)
    with pytest.raises(RuntimeError, match='does not load beside torch'): C._check_torchvision()

def test_main_exits_2_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(C, 'DOCTOR_CHECKS', {'torch': C._check_torch, 'broken': lambda: (_ for _ in ()).throw(RuntimeError('it is broken: fix with X'))})
    with pytest.raises(SystemExit) as e: C.main(['doctor'])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['flm: error: 1 problem(s): broken; the fixes are above']
