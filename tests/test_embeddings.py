"Tests of `fine_tuning_flm.embeddings` beyond the lesson: offline loading, bad input, truncation, the cache and its failure modes."
import socket, warnings
from pathlib import Path

import pytest, torch
from fine_tuning_flm.embeddings import *
from fine_tuning_flm.embeddings import _read_cache, quiet_loading

TEXTS = ['Toy Story (1995). Genres: Animation, Comedy.', 'Fargo (1996). Genres: Crime, Drama, Thriller.',
         'Star Wars (1977). Genres: Action, Adventure, Sci-Fi.', '', 'Heat (1995).', 'Toy Story (1995). Genres: Animation, Comedy.']


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    "Any attempt to open a network connection fails the test."
    def _refuse(self, address, *a, **kw): raise AssertionError(f'network access attempted: {address!r}')
    monkeypatch.setattr(socket.socket, 'connect', _refuse)
    monkeypatch.setattr(socket.socket, 'connect_ex', _refuse)


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv('FLM_CACHE', str(tmp_path/'cache'))


@pytest.fixture(scope='module')
def enc(): return TextEncoder(device='cpu')


def test_encode_offline_shape_unit_norm(enc):
    v = enc.encode(['Toy Story (1995)'])
    assert v.shape == (1, 384) and v.dtype == torch.float32 and v.device.type == 'cpu'
    assert abs(v.norm().item() - 1) < 1e-5
    assert enc.dim == 384 and enc.name == str(bundled_model_path().resolve())


def test_no_loading_bar_and_state_restored(capfd):
    from transformers.utils import logging as tlog
    before = tlog.is_progress_bar_enabled()
    TextEncoder(device='cpu')
    assert 'Loading weights' not in capfd.readouterr().err
    assert tlog.is_progress_bar_enabled() == before
    tlog.disable_progress_bar()
    try:
        with quiet_loading(): pass
        assert not tlog.is_progress_bar_enabled()     # someone else's "off" stays off
    finally:
        if before: tlog.enable_progress_bar()


@pytest.mark.parametrize('name', ['no-such-org/no-such-model', 'no-such-model'])
def test_unknown_model_name_says_offline_and_how(name):
    with pytest.raises(OSError) as e: TextEncoder(name)
    msg = str(e.value)
    assert repr(name) in msg and 'never downloads' in msg and "TextEncoder('models/" in msg


def test_missing_folder_and_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'): TextEncoder(tmp_path/'nope')
    with pytest.raises(FileNotFoundError, match='config.json'): TextEncoder(tmp_path)


def test_local_folder_works():
    e = TextEncoder(str(bundled_model_path()), device='cpu')
    assert Path(e.name) == bundled_model_path().resolve()


@pytest.mark.parametrize('kw, match', [(dict(pooling='max'), 'pooling'), (dict(max_length=1), 'max_length'),
                                       (dict(max_length=10_000), 'max_length'), (dict(batch_size=0), 'batch_size'),
                                       (dict(precision='int4'), 'precision'), (dict(precision='int8'), 'precision'), (dict(model=3), 'got int')])
def test_bad_arguments(kw, match):
    with pytest.raises((ValueError, TypeError), match=match): TextEncoder(device='cpu', **kw)


def test_empty_list(enc):
    v = enc.encode([])
    assert v.shape == (0, 384) and v.dtype == torch.float32
    assert enc.encode([], cache=True).shape == (0, 384)


@pytest.mark.parametrize('bad, match', [(['a', None], r'texts\[1\] is None'), ([1.5], r'texts\[0\] is 1.5 \(float\)'),
                                        (['a', b'b', 3], r"texts\[1\] is b'b' \(bytes\), and 1 more"),
                                        ('Toy Story', 'wrap it in a list'), (None, 'got NoneType'), (5, 'got int')])
def test_bad_texts(enc, bad, match):
    with pytest.raises(TypeError, match=match): enc.encode(bad)
    with pytest.raises(TypeError, match=match): enc.tokenize(bad)


def test_accepts_tuples_series_and_numpy(enc):
    import numpy as np, pandas as pd
    ref = enc.encode(TEXTS)
    for t in (tuple(TEXTS), pd.Series(TEXTS), np.array(TEXTS)): assert torch.allclose(enc.encode(t), ref, atol=1e-6)


def test_long_texts_are_truncated(enc):
    head = ' '.join(f'word{i}' for i in range(200))
    a, b = head + ' the end', head + ' something else entirely'
    toks = enc.tokenize([a, b])
    assert [len(t) for t in toks] == [enc.max_length] * 2 and toks[0] == toks[1]
    va, vb = enc.encode([a, b])
    assert torch.equal(va, vb)                        # the tails beyond max_length are not read
    short = TextEncoder(device='cpu', max_length=8)
    assert len(short.tokenize([head])[0]) == 8


def test_order_duplicates_and_batch_size_do_not_matter(enc):
    v = enc.encode(TEXTS)
    assert torch.equal(v[0], v[5])
    rev = enc.encode(TEXTS[::-1]).flip(0)
    assert torch.allclose(v, rev, atol=1e-5)
    one = TextEncoder(device='cpu', batch_size=1).encode(TEXTS)
    assert torch.allclose(v, one, atol=1e-5)
    assert torch.allclose(v, enc.encode(TEXTS, progress=True), atol=1e-6)


def test_cls_pooling_and_no_normalize():
    e = TextEncoder(device='cpu', pooling='cls', normalize=False)
    ids, mask = e.collate(e.tokenize(TEXTS[:3]))
    with torch.no_grad(): h = e.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(e.encode(TEXTS[:3]), h[:, 0], atol=1e-5)
    assert (e.encode(TEXTS[:3]).norm(dim=1) - 1).abs().max() > 1e-3


def test_pool_masks_padding(enc):
    h = torch.randn(2, 4, 384)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    v = enc.pool(h, mask)
    assert torch.allclose(v[0], torch.nn.functional.normalize(h[0, :2].mean(0), dim=0), atol=1e-6)


def test_collate(enc):
    ids, mask = enc.collate([[101, 7, 102], [101, 102]])
    assert ids.tolist() == [[101, 7, 102], [101, 102, enc.pad_id]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert ids.dtype == mask.dtype == torch.long and ids.device == enc.device


def test_forward_is_differentiable_and_encode_restores_mode():
    e = TextEncoder(device='cpu')
    e.train()
    ids, mask = e.collate(e.tokenize(TEXTS[:2]))
    e(ids, mask).sum().backward()
    assert e.model.embeddings.word_embeddings.weight.grad is not None
    v1, v2 = e.encode(TEXTS[:2]), e.encode(TEXTS[:2])
    assert torch.equal(v1, v2)                        # no dropout inside encode...
    assert e.training                                 # ...and the training mode is back afterwards


def test_matches_sentence_transformers(enc):
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(bundled_model_path()), device='cpu')
    st.max_seq_length = enc.max_length
    ref = st.encode(TEXTS, normalize_embeddings=True, convert_to_tensor=True)
    assert (1 - (enc.encode(TEXTS) * ref).sum(1)).max() < 1e-4


def test_bf16_close_to_fp32(enc):
    e = TextEncoder(device='cpu', precision='bf16')
    cos = (e.encode(TEXTS) * enc.encode(TEXTS)).sum(1)
    assert cos.min() > 0.99
    assert enc.cache_path(TEXTS) != e.cache_path(TEXTS)


# --- cache

def test_cache_round_trip_identical(enc):
    path = enc.cache_path(TEXTS)
    assert not path.exists()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        a = enc.encode(TEXTS, cache=True)
        assert path.exists() and path.suffix == '.safetensors'
        b = enc.encode(TEXTS, cache=True)
    assert torch.equal(a, b)
    assert torch.allclose(a, enc.encode(TEXTS), atol=1e-6)
    assert not [p for p in path.parent.iterdir() if p.name.endswith('.tmp')]


def test_cache_is_read_not_recomputed(enc, monkeypatch):
    a = enc.encode(TEXTS, cache=True)
    def _boom(*args, **kw): raise AssertionError('recomputed despite a valid cache')
    monkeypatch.setattr(type(enc), '_encode', _boom)
    assert torch.equal(enc.encode(TEXTS, cache=True), a)


@pytest.mark.parametrize('damage, match', [
    (lambda b: b[:len(b)//2], 'unreadable'),                          # truncated
    (lambda b: b[:-4] + bytes(4), 'checksum'),                        # last vector bytes zeroed
    (lambda b: b'', 'unreadable'),                                     # empty file
    (lambda b: b'\xff' * 64, 'unreadable')])                          # garbage
def test_damaged_cache_is_reported_and_rebuilt(enc, damage, match):
    a = enc.encode(TEXTS, cache=True)
    path = enc.cache_path(TEXTS)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.warns(UserWarning, match=match): b = enc.encode(TEXTS, cache=True)
    assert torch.equal(a, b)
    vec, why = _read_cache(path, enc._cache_meta(TEXTS))
    assert why is None and torch.equal(vec, a)                        # rewritten and valid again


def test_mismatched_cache_file_is_not_used(enc):
    from safetensors.torch import save
    path = enc.cache_path(TEXTS)
    meta = enc._cache_meta(TEXTS)
    wrong = torch.zeros(len(TEXTS), 384)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(save({'vectors': wrong}, metadata={**meta, 'pooling': 'cls', 'vectors_sha256': 'x'}))
    with pytest.warns(UserWarning, match='different pooling'): v = enc.encode(TEXTS, cache=True)
    assert not torch.equal(v, wrong)


def test_changed_weight_changes_key_and_misses_cache():
    e = TextEncoder(device='cpu')
    a = e.encode(TEXTS, cache=True)
    fp, path = e.weights_fingerprint(), e.cache_path(TEXTS)
    w = e.model.encoder.layer[3].intermediate.dense.weight
    old = w[0, 0].item()
    w.data[0, 0] = old + 0.5                          # through .data: no autograd version bump
    assert e.weights_fingerprint() != fp and e.cache_path(TEXTS) != path
    b = e.encode(TEXTS, cache=True)
    assert not torch.equal(a, b)                      # the fine-tuned copy gets its own vectors
    w.data[0, 0] = old
    assert e.weights_fingerprint() == fp and torch.equal(e.encode(TEXTS, cache=True), a)


@pytest.mark.parametrize('kw', [dict(pooling='cls'), dict(max_length=16), dict(normalize=False)])
def test_settings_change_key(enc, kw):
    assert TextEncoder(device='cpu', **kw).cache_path(TEXTS) != enc.cache_path(TEXTS)


def test_texts_change_key(enc):
    assert enc.cache_path(TEXTS) != enc.cache_path(TEXTS[:-1])
    assert enc.cache_path(['ab', 'c']) != enc.cache_path(['a', 'bc'])


def test_unwritable_cache_warns_and_returns(enc, monkeypatch):
    import contextlib, fine_tuning_flm.embeddings as m
    @contextlib.contextmanager
    def _read_only(path, *a, **kw): raise OSError(30, 'Read-only file system', str(path)); yield
    monkeypatch.setattr(m, 'atomic_write', _read_only)
    with pytest.warns(UserWarning, match='could not write.*Read-only'): v = enc.encode(TEXTS, cache=True)
    assert torch.allclose(v, enc.encode(TEXTS), atol=1e-6)
    assert not enc.cache_path(TEXTS).exists()


@pytest.mark.needs_data('ml-latest-small')
def test_benchmark_script_runs(tmp_path):
    "`python -m benchmarks.encode`, short: every encoder and precision is timed, and its JSON carries the provenance record."
    import json, subprocess, sys, os
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, 'FLM_CACHE': str(tmp_path)}
    r = subprocess.run([sys.executable, '-m', 'benchmarks.encode', '--n', '96', '--rounds', '1', '--precisions', 'bf16,int8', '--out', str(tmp_path/'e.json')],
                       capture_output=True, text=True, env=env, timeout=600, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    res = json.loads((tmp_path/'e.json').read_text())
    assert res['provenance']['command'] == f"python -m benchmarks.encode --n 96 --rounds 1 --precisions bf16,int8 --out {tmp_path/'e.json'}"
    for s in ('sentence-transformers', 'TextEncoder fp32', 'TextEncoder fp32 / sentence-transformers:', 'TextEncoder bf16 / fp32:', 'TextEncoder int8 / fp32:', 'cache: first'):
        assert s in out, out
