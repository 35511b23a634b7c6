"""Issue #15, at a size CI can afford: batched serving gives the lists `recommend` gives and never shows a rated item (in
training or since); the synthetic ml-25m has the shape it claims; ml-25m's layout goes through the loader (a zip built here,
served on 127.0.0.1); and `python -m benchmarks.scale --quick` runs every stage, each in its own process, and writes its JSON. No training but the quick run."""
import http.server, io, json, sys, threading, zipfile, hashlib
from pathlib import Path

import numpy as np, pandas as pd, pytest, torch

import fine_tuning_flm.data as data
from fine_tuning_flm.data import Interactions, load_movielens, synthetic_ratings
from fine_tuning_flm.factorization import FLM
from fine_tuning_flm.recommend import Recommender

def served(n_users=37, n_items=120, seed=0, **flm_kw) -> Recommender:
    "A random FLM with item text over `n_users` x `n_items`, each user with 0 to 30 training ratings, the last 10 items never rated."
    torch.manual_seed(seed); rng = np.random.default_rng(seed)
    m = FLM(n_users, n_items, n_factors=8, y_range=(0.5, 5.5), item_text=torch.randn(n_items, 12), **flm_kw)
    with torch.no_grad():
        for p in m.parameters(): p.normal_(0, 0.3)                  # small enough that no predicted rating saturates (no ties at 5.5)
    rows = [(u, i) for u in range(n_users) for i in rng.choice(n_items - 10, rng.integers(0, min(31, n_items - 9)), replace=False)]
    r = pd.DataFrame(rows, columns=['user', 'item']).assign(rating=lambda d: rng.integers(1, 6, len(d)).astype('float32'), timestamp=0)
    d = Interactions(r, pd.DataFrame({'id': [f'i{i}' for i in range(n_items)], 'text': [f'item {i}' for i in range(n_items)]}),
                     pd.DataFrame({'id': [f'u{u}' for u in range(n_users)]}), (1, 5))
    m.set_seen(d)
    return Recommender(m, d.items, d.users, d.user_items(), scale=(1, 5))

MODELS = {'rate': {}, 'rank': dict(objective='softmax'), 'both with history': dict(objective='mse+softmax', history=True, rate_factors=4)}

@pytest.mark.parametrize('kind', list(MODELS))
def test_recommend_batch_equals_recommend(kind):
    rec = served(**MODELS[kind])
    b = rec.recommend_batch(k=7, batch_size=5)
    col = 'predicted' if kind == 'rate' else 'score'
    assert b.columns.tolist() == ['user', 'rank', 'item', col]
    for u in rec.users.id:
        one, got = rec.recommend(u, k=7), b[b.user == u]
        assert got.item.tolist() == one.id.tolist(), u
        np.testing.assert_allclose(got[col].to_numpy(), one[col].to_numpy(), atol=6e-4)          # `recommend` rounds to 3 decimals
    assert b.groupby('user')['rank'].apply(list).map(lambda r: r == list(range(1, len(r) + 1))).all()

@pytest.mark.parametrize('kind', list(MODELS))
def test_the_bf16_pass_changes_no_list(kind):
    "The bfloat16 candidates re-scored in float32 give float32's lists; with no spare candidates (extra=0) the error bound sends rows to float32 scoring."
    rec = served(n_items=400, **MODELS[kind]); users = np.arange(rec.model.n_users)
    exact = np.concatenate([t for _, t, _ in rec.top_codes(users, 10, approx=False)])
    for extra in (40, 0):
        got = np.concatenate([t for _, t, _ in rec.top_codes(users, 10, extra=extra)])
        assert (got == exact).all(), (kind, extra, (got != exact).any(1).sum())

def test_the_batch_size_changes_nothing():
    rec = served()
    a, b = rec.recommend_batch(k=10, batch_size=1), rec.recommend_batch(k=10, batch_size=1024)
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-5)

def test_rated_items_never_appear():
    "Training ratings, then ratings received since (`new_ratings`), are left out of every list; `include_cold=False` also leaves out the cold items."
    rec = served()
    first = rec.recommend_batch(k=5)
    rec.new_ratings = pd.DataFrame({'user': rec._vocab.user_code(first.user.to_numpy()), 'item': rec._vocab.item_code(first.item.to_numpy()),
                                    'rating': 3.0, 'timestamp': 1})          # every user rates the five they were shown
    b = rec.recommend_batch(k=20)
    pairs = set(zip(rec._vocab.user_code(b.user.to_numpy()).tolist(), rec._vocab.item_code(b.item.to_numpy()).tolist()))
    rated = set(zip(rec.seen[:, 0].tolist(), rec.seen[:, 1].tolist())) | set(zip(rec.new_ratings.user, rec.new_ratings.item))
    assert len(pairs) == len(b) == 20 * rec.model.n_users and not pairs & rated
    warm = rec.recommend_batch(k=20, include_cold=False)
    assert rec.model.seen_items[rec._vocab.item_code(warm.item.to_numpy())].all()
    both = rec.recommend_batch(k=200, exclude_seen=False)
    assert len(both) == 120 * rec.model.n_users                                # nothing left out: every item, every user

def test_short_lists_are_padded_in_codes_and_cut_in_tables():
    "A user with fewer items left than k gets a shorter list: -1 and -inf pad `top_codes`, and the table has only the real rows."
    rec = served(n_items=12)                                                   # 2 warm items ... 12: few left after the rated ones
    users = np.arange(rec.model.n_users)
    left = np.array([rec.model.n_items - len(rec._seen_items(u)) for u in users])
    codes = np.concatenate([c for _, c, _ in rec.top_codes(users, k=12, batch_size=8)])
    scores = np.concatenate([s for _, _, s in rec.top_codes(users, k=12, batch_size=8)])
    assert ((codes >= 0).sum(1) == np.minimum(left, 12)).all() and np.isneginf(scores[codes < 0]).all()
    assert rec.recommend_batch(k=12).groupby('user').size().reindex(rec.users.id).fillna(0).astype(int).tolist() == np.minimum(left, 12).tolist()

def test_recommend_batch_of_some_users_by_raw_id():
    rec = served()
    b = rec.recommend_batch(['u3', 'u0'], k=4)
    assert b.user.tolist() == ['u3'] * 4 + ['u0'] * 4
    with pytest.raises(KeyError, match='nobody'): rec.recommend_batch(['nobody'])
    with pytest.raises(ValueError, match='k must be a positive int'): rec.recommend_batch(k=0)

# --- the synthetic ml-25m -------------------------------------------------------------------------------------------

def test_synthetic_ratings_have_the_shape_of_ml25m():
    r, m = synthetic_ratings(60_000, n_items=3_000, seed=1)
    assert r.columns.tolist() == ['userId', 'movieId', 'rating', 'timestamp'] and m.columns.tolist() == ['movieId', 'title', 'genres']
    assert len(r) == 60_000 and r.userId.nunique() == round(162_541 * 60_000 / 25_000_095) and len(m) == 3_000
    assert not r.duplicated(['userId', 'movieId']).any() and r.groupby('userId').size().min() >= 20
    assert set(np.unique(r.rating)) <= set(np.arange(1, 11) / 2) and r.movieId.isin(m.movieId).all()
    assert (np.diff(r.userId.to_numpy() * 10**6 + r.movieId.to_numpy()) > 0).all()        # sorted by user, then film, as ml-25m's file
    pd.testing.assert_frame_equal(synthetic_ratings(30_000, n_items=3_000, seed=1)[1], m)   # the same catalogue at every size
    with pytest.raises(ValueError, match='exceed n_ratings'): synthetic_ratings(1_000, n_users=100)

# --- ml-25m through the loader --------------------------------------------------------------------------------------

class _Server:
    def __init__(self, body):
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers(); self.wfile.write(body)
            def log_message(self, *a): pass
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
        threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True).start()
        self.url = f'http://127.0.0.1:{self.httpd.server_port}/ml-25m.zip'

def test_ml25m_is_downloaded_checked_and_read(tmp_path, monkeypatch):
    "`load_movielens('ml-25m')` with the spec of MOVIELENS (its files, md5 and size checked), pointed at a zip of synthetic ratings served here."
    r, m = synthetic_ratings(5_000, n_items=400, seed=2)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
        z.writestr('ml-25m/ratings.csv', r.to_csv(index=False)); z.writestr('ml-25m/movies.csv', m.to_csv(index=False))
        z.writestr('ml-25m/tags.csv', f'userId,movieId,tag,timestamp\n1,{m.movieId[0]},Quiet,1\n2,{m.movieId[0]},quiet,2\n')
        for fn in ('links.csv', 'genome-scores.csv', 'genome-tags.csv'): z.writestr(f'ml-25m/{fn}', 'x\n')
    body = buf.getvalue()
    assert data.MOVIELENS['ml-25m']['files'] == ('ratings.csv', 'movies.csv', 'tags.csv', 'links.csv', 'genome-scores.csv', 'genome-tags.csv')
    srv = _Server(body)
    try:
        monkeypatch.setitem(data.MOVIELENS, 'ml-25m', {**data.MOVIELENS['ml-25m'], 'url': srv.url, 'md5': hashlib.md5(body).hexdigest(), 'size': len(body)})
        monkeypatch.setenv('FLM_DATA', str(tmp_path/'none')); (tmp_path/'none').mkdir(); monkeypatch.setenv('FLM_CACHE', str(tmp_path/'cache'))
        d = load_movielens('ml-25m')
    finally: srv.httpd.shutdown(); srv.httpd.server_close()
    assert (len(d), d.n_users, d.n_items, d.scale) == (5_000, 33, 400, (0.5, 5.0))
    assert d.items.text[0].endswith('Tags: quiet.') and d.ratings.rating.dtype == np.float32
    monkeypatch.setitem(data.MOVIELENS, 'ml-25m', {**data.MOVIELENS['ml-25m'], 'md5': '0' * 32})
    assert len(load_movielens('ml-25m')) == 5_000                                             # now from the cache, not downloaded again

# --- the benchmark, CI size -----------------------------------------------------------------------------------------

def test_scale_benchmark_quick(tmp_path):
    """`python -m benchmarks.scale --quick`: every stage of ours at 100 k ratings (peers skipped where not installed), each in its own
    process (`benchmarks.scale_stage`) with its own peak RSS, and JSON with the provenance record."""
    import os, subprocess
    root, out = Path(__file__).parents[1], tmp_path/'scale.json'
    r = subprocess.run([sys.executable, '-m', 'benchmarks.scale', '--quick', '--items', '400', '--out', str(out)], cwd=root, capture_output=True,
                       text=True, timeout=900, env={**os.environ, 'FLM_CACHE': str(tmp_path/'cache')})
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got['provenance']['command'] == f'python -m benchmarks.scale --quick --items 400 --out {out}' and list(got['sizes']) == ['100000']
    assert got['run']['command'] == got['provenance']['command']
    st = got['sizes']['100000']['stages']
    for k in ('load', 'encode', 'rate', 'serve', 'rank'): assert st[k]['seconds'] > 0 and st[k]['peak_rss_gb'] > 0, k
    peaks = {k: v['peak_rss_gb'] for k, v in st.items() if 'peak_rss_gb' in v}
    assert len(set(peaks.values())) > 1, peaks                        # each stage's own peak (ru_maxrss gave one inherited number)
    assert peaks['load'] < peaks['rate'], peaks                       # loading alone holds less than loading + a model + an epoch
    assert st['serve']['rows'] == 10 * got['sizes']['100000']['n_users']
    assert {'rate epoch < 5 min', 'top-10 for all users < 60 s'} <= set(got['targets']) and got['rank_settings']['negatives'] == 'sampled'
