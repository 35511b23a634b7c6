"""`Recommender.save`/`load` beyond the lesson: a saved model is a folder that is complete or absent, ids keep their
types, each user's training ratings and the ratings received since travel with it (format 3), an interrupted save leaves
the old model as it was, a changed folder is refused with a one-line reason (before anything is allocated), and the
serving methods refuse bad ids and ratings by name. No training: a small model by hand."""
import hashlib, json, os, re, subprocess, sys
from pathlib import Path

import numpy as np, pandas as pd, pytest, torch

import fine_tuning_flm.recommend as R
import fine_tuning_flm.store as S
from safetensors.torch import save as st_save
from fine_tuning_flm.factorization import FLM
from fine_tuning_flm.recommend import Recommender, FolderLocked, folder_lock

class StubEncoder:
    "Stands in for the language model: a fixed vector per text."
    def encode(self, texts, **kw):
        return torch.stack([torch.from_numpy(np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16)).normal(size=8)).float() for t in texts])

def tiny(item_ids=(1, 2, 3, 4, 5, 6), user_ids=('ann', 'bob', 'cy', 'dee', 'ed'), seed=0, text_dim=8, **flm_kw) -> Recommender:
    "A small random FLM with item text, served as a `Recommender`."
    torch.manual_seed(seed)
    n_u, n_i = len(user_ids), len(item_ids)
    m = FLM(n_u, n_i, n_factors=4, y_range=(0.5, 5.5), item_text=torch.randn(n_i, text_dim), **flm_kw)
    with torch.no_grad():
        for p in m.parameters(): p.normal_()
    m.seen_items[-1] = False                                          # one item without training ratings
    items = pd.DataFrame({'id': list(item_ids), 'title': [f'Film {i} (199{i % 10})' for i in range(n_i)],
                          'year': pd.array([1990 + i if i % 3 else None for i in range(n_i)], dtype='Int64'),
                          'genres': ['Comedy|Drama', 'NA', '', 'Horror', 'null', 'Sci-Fi'][:n_i]})
    items['text'] = [f'Film {i}. Genres: {g}.' for i, g in enumerate(items.genres)]
    users = pd.DataFrame({'id': list(user_ids), 'age': [20 + 5*i for i in range(n_u)]})
    seen = torch.tensor([[u, i] for u in range(n_u) for i in range(n_i - 1) if (u + i) % 2 == 0])
    if getattr(m, 'history', False):                                  # each user's training items, as `set_seen` keeps them
        m.hist_ptr = torch.tensor([0] + np.cumsum(np.bincount(seen[:, 0].numpy(), minlength=n_u)).tolist())
        m.hist_items = seen[:, 1].clone()
    rng = np.random.default_rng(seed)
    ratings = pd.DataFrame({'user': seen[:, 0].numpy(), 'item': seen[:, 1].numpy(), 'rating': rng.integers(1, 6, len(seen)).astype('float32')})
    return Recommender(m, items, users, ratings, scale=(1, 5))

def same(a:Recommender, b:Recommender):
    "Two Recommenders hold the same model, tables (values and id types) and training pairs."
    for k, v in a.model.state_dict().items(): assert torch.equal(v, b.model.state_dict()[k]), k
    for t, u in ((a.items, b.items), (a.users, b.users)):
        pd.testing.assert_frame_equal(t, u, check_dtype=False)
        assert [type(v) for v in t.id.map(S._plain)] == [type(v) for v in u.id.map(S._plain)]
    assert torch.equal(a.seen, b.seen)
    for k in ('ptr', 'items', 'values'): np.testing.assert_array_equal(getattr(a.history, k), getattr(b.history, k), err_msg=k)
    pd.testing.assert_frame_equal(a.new_ratings, b.new_ratings)

def files(folder:Path) -> dict: return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}

# --- round trips -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('item_ids', [(1, 2, 3, 4, 5, 6), ('0001', '001', '1', 'NA', 'null', 'None'), (7, 'a', 8, 'b', -1, '07')],
                         ids=['int', 'str that look like ints or NA', 'mixed'])
def test_round_trip_keeps_ids_and_their_types(tmp_path, item_ids):
    rec = tiny(item_ids)
    back = Recommender.load(rec.save(tmp_path/'m'))
    same(rec, back)
    assert back.items.id.map(S._plain).tolist() == list(item_ids)
    assert back.items.genres.tolist() == ['Comedy|Drama', 'NA', '', 'Horror', 'null', 'Sci-Fi']      # 'NA' and 'null' are text, not missing
    assert back.items.year.isna().tolist() == [True, False, False, True, False, False]
    pd.testing.assert_frame_equal(back.recommend('ann', k=3), rec.recommend('ann', k=3))
    assert sorted(p.name for p in (tmp_path/'m').iterdir()) == ['history.safetensors', 'items.csv', 'manifest.json', 'model.safetensors',
                                                                'new_ratings.safetensors', 'users.csv']

def test_add_items_with_a_string_id_keeps_the_int_ids(tmp_path):
    "An integer catalogue that gains 'toy-story-4' holds both types, and still after save + load."
    rec = tiny(); rec._encoder = StubEncoder()
    grown = rec.add_items(pd.DataFrame({'id': ['toy-story-4'], 'title': ['Toy Story 4 (2019)'], 'genres': ['Animation']}))
    grown._encoder = None
    back = Recommender.load(grown.save(tmp_path/'m'))
    same(grown, back)
    assert back.items.id.map(S._plain).tolist() == [1, 2, 3, 4, 5, 6, 'toy-story-4']
    assert back.id_of('3') == 3 and back.id_of('toy-story-4') == 'toy-story-4'
    np.testing.assert_allclose(back.predict('ann', [3, 'toy-story-4']), grown.predict('ann', [3, 'toy-story-4']))

def test_round_trip_of_a_ranking_model_with_history(tmp_path):
    "Buffers sized by the training data (each user's items) and the ranking item bias survive; add_items grows every per-item table."
    rec = tiny(objective='mse+softmax', history=True)
    back = Recommender.load(rec.save(tmp_path/'m'))
    same(rec, back)
    assert len(back.model.hist_items) == len(rec.seen) == len(back.history.items) > 0
    back._encoder = StubEncoder()
    grown = back.add_items(pd.DataFrame({'id': [7], 'title': ['Film 7 (1997)'], 'genres': ['Drama']}))
    assert grown.model.i_rbias.weight.shape[0] == grown.model.hist.weight.shape[0] == 7
    assert grown.recommend('ann', k=3).shape[0] == 3

def test_the_encoder_is_saved_portably_and_loaded_lazily(tmp_path):
    "The bundled MiniLM is saved as None (its path differs between installs); loading does not load any encoder."
    from types import SimpleNamespace
    from fine_tuning_flm.embeddings import bundled_model_path
    rec = tiny()
    rec._encoder = SimpleNamespace(name=str(bundled_model_path()), pooling='mean', max_length=64, normalize=True)
    back = Recommender.load(rec.save(tmp_path/'m'))
    assert back._encoder is None and back._encoder_args == dict(model=None, pooling='mean', max_length=64, normalize=True)
    rec._encoder = SimpleNamespace(name='/models/my-encoder', pooling='cls', max_length=32, normalize=False)
    assert Recommender.load(rec.save(tmp_path/'m'))._encoder_args['model'] == '/models/my-encoder'

def test_save_over_an_old_model_replaces_it_whole(tmp_path):
    tiny(seed=0).save(tmp_path/'m')
    new = tiny(seed=1); new.save(tmp_path/'m')
    same(new, Recommender.load(tmp_path/'m'))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m']                                      # no temporary or old folder, no lock file left

# --- interrupted saves -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('fail_at', [1, 2, 3, 4, 5, 6])                                            # 6: the manifest, written last
@pytest.mark.parametrize('error', [OSError(28, 'No space left on device'), KeyboardInterrupt()], ids=['disk full', 'interrupted'])
def test_interrupted_save_leaves_the_old_model(tmp_path, monkeypatch, fail_at, error):
    old = tiny(seed=0); old.save(tmp_path/'m')
    before = files(tmp_path/'m')
    real, calls = R.put_file, []
    def put(fn, data):
        calls.append(fn.name)
        if len(calls) == fail_at: raise error
        return real(fn, data)
    monkeypatch.setattr(R, 'put_file', put)
    with pytest.raises(type(error)): tiny(seed=1).save(tmp_path/'m')
    assert files(tmp_path/'m') == before
    same(old, Recommender.load(tmp_path/'m'))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m']

def test_interrupted_first_save_leaves_nothing(tmp_path, monkeypatch):
    def put(fn, data): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(R, 'put_file', put)
    with pytest.raises(OSError, match='No space'): tiny().save(tmp_path/'m')
    assert not (tmp_path/'m').exists() and list(tmp_path.iterdir()) == []

# --- what save refuses to replace ------------------------------------------------------------------------------------

def test_save_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path/'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match=r'a folder of 1 other file\(s\), not a saved model; refusing to replace it'): tiny().save(tmp_path)
    assert (tmp_path/'notes.txt').read_text() == 'mine'
    (tmp_path/'f').write_text('x')
    with pytest.raises(FileExistsError, match='exists and is not a folder'): tiny().save(tmp_path/'f')

def test_save_into_an_empty_folder(tmp_path):
    (tmp_path/'m').mkdir(); rec = tiny()
    same(rec, Recommender.load(rec.save(tmp_path/'m')))

@pytest.mark.skipif(os.name == 'nt', reason='flock')
def test_a_second_writer_fails_at_once(tmp_path):
    "Another process holds the lock of `m`: `save` raises FolderLocked naming it; the same process may re-enter."
    holder = subprocess.Popen([sys.executable, '-c', "import fcntl, os, sys\nf = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                               "f.truncate(0); f.write(str(os.getpid())); f.flush(); print('held', flush=True); sys.stdin.read()", str(tmp_path/'.m.lock')],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(FolderLocked, match=rf'another process \(pid {holder.pid}\) is writing this model'): tiny().save(tmp_path/'m')
        assert not (tmp_path/'m').exists()
    finally: holder.communicate(''); holder.wait()
    with folder_lock(tmp_path/'m'):
        tiny().save(tmp_path/'m')                                    # re-entrant within this process (flm train holds it while it saves)
    assert Recommender.load(tmp_path/'m')

# --- tampered folders ------------------------------------------------------------------------------------------------

def _rewrite_manifest(m:Path, **kw):
    "Make the manifest agree with the files as they are now (a careful forger), plus `kw`."
    man = json.loads((m/'manifest.json').read_text())
    for name in man['files']: man['files'][name] = dict(bytes=(m/name).stat().st_size, sha256=hashlib.sha256((m/name).read_bytes()).hexdigest())
    (m/'manifest.json').write_text(json.dumps({**man, **kw}))

def _edit_settings(m:Path, **changes):
    "Change the FLM settings in model.safetensors' header, and the manifest to match."
    raw = (m/'model.safetensors').read_bytes(); n = int.from_bytes(raw[:8], 'little'); h = json.loads(raw[8:8+n])
    s = json.loads(h['__metadata__']['flm_recommender']); s['flm'].update(changes)
    h['__metadata__']['flm_recommender'] = json.dumps(s); hb = json.dumps(h).encode()
    (m/'model.safetensors').write_bytes(len(hb).to_bytes(8, 'little') + hb + raw[8+n:])
    _rewrite_manifest(m, **{k: v for k, v in changes.items() if k in ('n_items', 'n_users')})

def _lines(fn:Path): return fn.read_text().splitlines(True)

TAMPER = {
    'items re-sorted':             (lambda m: (m/'items.csv').write_text(_lines(m/'items.csv')[0] + ''.join(sorted(_lines(m/'items.csv')[1:], reverse=True))),
                                    r"items\.csv: its contents differ from the manifest's SHA-256"),
    'a title edited':              (lambda m: (m/'items.csv').write_text((m/'items.csv').read_text().replace('Film 1', 'Film 9')), r"items\.csv: its contents differ"),
    'model truncated':             (lambda m: (m/'model.safetensors').write_bytes((m/'model.safetensors').read_bytes()[:-4]), r"model\.safetensors: [\d,]+ bytes, the manifest says"),
    'history deleted':             (lambda m: (m/'history.safetensors').unlink(), r"history\.safetensors: missing \(the manifest lists it\)"),
    'history of other users':      (lambda m: ((m/'history.safetensors').write_bytes(st_save({'ptr': torch.zeros(4, dtype=torch.long), 'items': torch.zeros(0, dtype=torch.int32),
                                                'ratings': torch.zeros(0)})), _rewrite_manifest(m)),
                                    r"history\.safetensors: not the 13 training ratings of 5 users the manifest lists"),
    'new ratings miscounted':      (lambda m: _rewrite_manifest(m, n_new=3), r"new_ratings\.safetensors: not the 3 new ratings the manifest lists"),
    'saved by format 2':           (lambda m: _rewrite_manifest(m, version=2), r"format version 2, saved before a model kept each user's training ratings.*train and save the model again"),
    'no manifest':                 (lambda m: (m/'manifest.json').unlink(), r"no manifest\.json \(saved by an older version, or not completely\)"),
    'manifest not JSON':           (lambda m: (m/'manifest.json').write_text('{"files": '), r'manifest\.json: not valid JSON'),
    'manifest of a newer format':  (lambda m: _rewrite_manifest(m, version=4), r'format version 4; this fine_tuning_flm reads version 3'),
    'manifest n_items changed':    (lambda m: _rewrite_manifest(m, n_items=7), r'6 items, the manifest says 5 × 7'),
    'manifest sha256 not hex':     (lambda m: (m/'manifest.json').write_text((m/'manifest.json').read_text().replace('"sha256": "', '"sha256": "zz', 1)), r'not a size and a SHA-256'),
    'a row dropped, manifest rewritten': (lambda m: ((m/'items.csv').write_text(''.join(_lines(m/'items.csv')[:-1])), _rewrite_manifest(m)), r'items\.csv: 5 rows for 6 items'),
    'an id repeated, manifest rewritten': (lambda m: ((m/'items.csv').write_text(''.join(_lines(m/'items.csv')[:-1] + _lines(m/'items.csv')[-2:-1])), _rewrite_manifest(m)),
                                    r'items\.csv: repeats the id 5'),
    'n_items 3e6, manifest rewritten': (lambda m: _edit_settings(m, n_items=3_000_000),
                                    r"tensor \S+ has shape \(6, \d+\), its settings \(n_users=5, n_items=3,000,000\) need \(3000000, \d+\)"),
    'n_factors changed':           (lambda m: _edit_settings(m, n_factors=400), r'has shape \(\d+, \d+\), its settings .* need \((6, 400|401, 8)\)'),
    'not safetensors':             (lambda m: ((m/'model.safetensors').write_bytes(b'\xff' * 64), _rewrite_manifest(m)), r'model\.safetensors: not a safetensors file'),
}

@pytest.mark.parametrize('case', list(TAMPER))
def test_a_changed_folder_is_refused(tmp_path, monkeypatch, case):
    edit, reason = TAMPER[case]
    m = tiny().save(tmp_path/'m'); edit(m)
    built, real = [], FLM.from_config
    def spy(c):                                                         # nothing may be allocated for a refused folder: only meta tensors
        if torch.get_default_device().type != 'meta': built.append(c)
        return real(c)
    monkeypatch.setattr(FLM, 'from_config', spy)
    monkeypatch.setattr(R, 'load_safetensors', lambda *a, **k: built.append('tensors'))
    with pytest.raises(ValueError) as e: Recommender.load(m)
    msg = str(e.value)
    assert '\n' not in msg and re.search(reason, msg), msg
    assert not built

def test_load_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'nope: no such folder'): Recommender.load(tmp_path/'nope')
    (tmp_path/'f').write_text('x')
    with pytest.raises(ValueError, match='not a folder'): Recommender.load(tmp_path/'f')

# --- serving checks ----------------------------------------------------------------------------------------------------

def test_recommend_for_refuses_ratings_that_are_not_on_the_scale():
    rec = tiny()
    for bad, shown in [(float('nan'), 'nan'), (50, '50'), (0, '0'), ('five', "'five'"), (None, 'None'), (True, 'True')]:
        with pytest.raises(ValueError, match=rf"the rating of item 2 is {re.escape(shown)}; ratings are numbers in \[1, 5\]"): rec.recommend_for({2: bad})
    with pytest.raises(ValueError, match='at least one'): rec.recommend_for({})
    with pytest.raises(KeyError, match='99'): rec.recommend_for({99: 4})
    assert np.isfinite(rec.recommend_for({2: 5, 3: 1}, k=3).predicted).all()

def test_add_items_refuses_bad_new_ids():
    rec = tiny(); rec._encoder = StubEncoder()
    new = lambda ids: pd.DataFrame({'id': ids, 'title': [f'New {i}' for i in range(len(ids))], 'genres': ['Drama'] * len(ids)})
    for ids, msg in [(['x', 'x'], r"1 new id\(s\) repeat, e\.g\. 'x'"), ([3], r'already in the catalogue, e\.g\. 3'), (['3'], r"new id '3' reads like the catalogue's id 3"),
                     ([None], r'1 new item\(s\) have no id'), ([], 'empty')]:
        with pytest.raises(ValueError, match=msg): rec.add_items(new(ids))
    assert rec.add_items(new(['x', 'y'])).model.n_items == 8

def test_k_must_be_positive():
    rec = tiny()
    for f in (lambda: rec.recommend('ann', k=0), lambda: rec.similar_items(1, k=-1), lambda: rec.recommend_for({1: 4}, k=0)):
        with pytest.raises(ValueError, match='k must be a positive int'): f()

def test_ids_as_text():
    rec = tiny((7, 'a', 8, 'b', -1, '07'))
    assert rec.codes_of(['7', 'a', '-1', '07']).tolist() == [0, 1, 4, 5]
    assert rec.id_of('7') == 7 and rec.id_of('07') == '07'
    with pytest.raises(KeyError, match="item '007' is not among this model's 6 items"): rec.codes_of('007')
    with pytest.raises(KeyError, match=r"2 user id\(s\) not among this model's 5 users, e.g. 'zed'"): rec.codes_of(['ann', 'zed', 'zoe'], 'user')


# --- the ratings travel with the model (format 3) --------------------------------------------------------------------

def test_history_and_new_ratings_round_trip(tmp_path):
    "Each user's training ratings (the CSR of `history`, with their values) and `new_ratings` are saved and loaded exactly."
    rec = tiny()
    rec.new_ratings = pd.DataFrame({'user': [0, 0, 3], 'item': [1, 5, 2], 'rating': [4.5, 2, 5], 'timestamp': [10, 11, 12]})
    back = Recommender.load(rec.save(tmp_path/'m'))
    same(rec, back)
    assert back.new_ratings.dtypes.astype(str).tolist() == ['int64', 'int64', 'float32', 'int64']
    items, ratings = back.user_ratings(0)
    h = rec.history
    assert items.tolist() == h[0].tolist() + [1, 5] and ratings.tolist() == h.values[h.ptr[0]:h.ptr[1]].tolist() + [4.5, 2.0]
    man = json.loads((tmp_path/'m'/'manifest.json').read_text())
    assert (man['version'], man['n_ratings'], man['n_new']) == (3, len(rec.seen), 3)

def test_new_ratings_leave_the_lists_and_user_ratings_keeps_the_latest():
    rec = tiny()
    before = rec.recommend('bob', k=6).id.tolist()
    rec.new_ratings = pd.DataFrame({'user': [1, 1], 'item': [rec._vocab.item_code(before[0])] * 2, 'rating': [2.0, 5.0], 'timestamp': [1, 2]})
    assert rec.recommend('bob', k=6).id.tolist() == before[1:]
    items, ratings = rec.user_ratings(1)
    assert list(items).count(rec._vocab.item_code(before[0])) == 1 and ratings[list(items).index(rec._vocab.item_code(before[0]))] == 5.0
    with pytest.raises(ValueError, match=r"new_ratings must be a DataFrame with columns \['user', 'item', 'rating', 'timestamp'\]"):
        rec.new_ratings = pd.DataFrame({'user': [1]})

def test_users_added_after_training_have_no_history():
    "08 may grow the user side: the history then reads as empty for the new codes (n_users is read at call time)."
    rec = tiny()
    m = rec.model
    for name in ('u_weight', 'u_bias'): setattr(m, name, R._grow(getattr(m, name), 1))
    m.seen_users = torch.cat([m.seen_users, torch.zeros(1, dtype=torch.bool)]); m.n_users += 1
    rec.users = pd.concat([rec.users, pd.DataFrame({'id': ['new'], 'age': [40]})], ignore_index=True)
    assert rec.user_ratings(5)[0].tolist() == [] and len(rec.recommend('new', k=3)) == 3
    assert len(rec.recommend_batch(k=2)) == 12

@pytest.mark.parametrize('what', ['history item', 'history rating', 'new user', 'new rating'])
def test_codes_and_ratings_outside_the_model_are_refused(tmp_path, what):
    rec = tiny()
    if what.startswith('new'):
        rec.new_ratings = pd.DataFrame({'user': [9 if what == 'new user' else 0], 'item': [1], 'rating': [0.0 if what == 'new rating' else 3.0], 'timestamp': [0]})
    else:
        h = rec.history
        vals = h.values.copy(); items = h.items.copy()
        if what == 'history item': items[0] = 99
        else: vals[0] = 7
        rec.history = type(h).from_csr(h.ptr, items, vals)
    m = rec.save(tmp_path/'m')
    reason = {'history item': r'history\.safetensors: item codes outside the vocabulary \(0 to 5\)',
              'history rating': r'history\.safetensors: 1 rating\(s\) outside the scale \[1, 5\], e\.g\. 7\.0',
              'new user': r'new_ratings\.safetensors: user codes outside the vocabulary \(0 to 4\)',
              'new rating': r'new_ratings\.safetensors: 1 rating\(s\) outside the scale \[1, 5\], e\.g\. 0\.0'}[what]
    with pytest.raises(ValueError, match=reason): Recommender.load(m)
