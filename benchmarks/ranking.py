#!/usr/bin/env python
"""Top-N ranking on Microsoft Recommenders' MovieLens protocol, and cold-item ranking, against the peers.

    python benchmarks/ranking.py --out benchmarks/results/ranking.json     # both parts, every system (~15 min on 2 cores)
    python benchmarks/ranking.py --quick                                    # CI-size smoke test: few epochs, ml-100k only
    python benchmarks/ranking.py --systems EASE cornac-BPR --no-cold        # a subset of systems
    python benchmarks/ranking.py --ml1m ~/data/ml-1m                        # also the warm part on ml-1m (skipped if absent)
    python benchmarks/ranking.py --systems MY-SYSTEM --merge --out benchmarks/results/ranking.json   # add rows to a file

Part 1, warm top-N (Recommenders' benchmark notebook): `load_movielens('ml-100k').split('recommenders', ratio=0.75,
by='item', seed=42)` (their `python_stratified_split`), every test rating is relevant whatever its value, each user's
training items are removed, the top 10 are taken over every item seen in training. Reported: NDCG@10, P@10, R@10,
MAP@10 (ours: average precision over min(#relevant, 10), Recommenders >= 1.2's `map_at_k`), "MAP (Recommenders)"
(the same lists, divided by #relevant: the `map` of their published table) and the fit time in seconds (the fit call
only, `time.perf_counter`), with its ratio to cornac BPR's fit time in the same run.

Part 3, one model for both jobs: on ml-100k's official u1 fold, the test RMSE (and full-catalogue NDCG@10) of `train_flm`
with objective='both' next to objective='rate', each with its recipe's fixed epochs (`--no-rmse` skips it).

Part 2, cold items (LightFM paper, Kula 2015): `split('cold_items', pct=0.2, seed=0)` holds out 20 % of the items with
all their ratings, on ml-100k and ml-latest-small. Candidates are the cold items only; positives are test ratings >= 4.
Reported: the mean per-user ROC AUC over the cold items, and NDCG@10 among them.

Systems (name -> settings; all seeded with 42):
- most-popular / popularity: training-rating counts (`evaluation.MostPopular`). Every cold item has count 0, so on
  cold items popularity is undefined: all scores tie, AUC is 0.5 and NDCG@10 is that of a random order.
- EASE (Steck 2019): B = I - P diag(1/diag P), P = (XᵀX + λI)⁻¹, diag(B) = 0, scores X·B on the binary training
  matrix. λ is chosen by NDCG@10 on a validation split carved out of the training side only
  (`train.split('recommenders', ratio=0.75, by='item', seed=1)`), then EASE is refitted on the full train.
- cornac-BiVAE: the notebook's k=100, encoder_structure=[200], act_fn='tanh', likelihood='pois', n_epochs=500,
  batch_size=128, learning_rate=0.001, on the CPU; scores `model.score(user)` over every item.
- cornac-BPR: k=200, max_iter=100, learning_rate=0.01, lambda_reg=0.001 (cornac runs one thread when seeded).
- LightFM-WARP: no features, no_components=64, loss='warp', 30 epochs, other settings lightfm's defaults, 1 thread.
- implicit-ALS: factors=64, regularization=0.01, alpha=1, 15 iterations (implicit's defaults but factors), binary
  confidence. implicit-BPR: factors=64, learning_rate=0.01, regularization=0.01, 100 iterations, 1 thread.
  implicit >= 0.5 fits a user×item matrix; scores are user_factors @ item_factors.T.
- Surprise-SVD: default parameters, fitted on the rating values; its score is the predicted rating (clipped to the
  scale, as `predict` does and as Recommenders ranks it).
- content-kNN (cold part): `evaluation.ContentKNN` on the bundled MiniLM vectors of the item texts; the one-off
  encoding time is recorded apart (`encode_seconds`), not in the fit time.
- LightFM-features (cold part): WARP on the training ratings >= 4, items described by identity + genre + title-word
  features (the warm items only are trained); cold items are scored from their genre and title-word features alone.
Peers are optional: a peer that cannot be imported or fails is printed and recorded as {"system", "error"}.

Adding a system: write `def fit_x(train, test, args) -> (model, fit_seconds, extra)` whose model follows the
evaluation model protocol (`n_users`, `n_items`, `seen_users`, `seen_items`, `score_items(users, cold=False)`), put
`extra['settings']` in `extra`, and register it in `SYSTEMS` (warm part) or `COLD_SYSTEMS` (cold part). Never look
at `test` while fitting: it is passed only so a system can check it shares the vocabulary.

Installing the peers (a separate virtual environment keeps them away from the project's):

    python3 -m venv /work/benchvenv && . /work/benchvenv/bin/activate
    pip install torch==2.13.0 torchvision==0.28.0     # the CPU torch first, and the torchvision fastai's metadata asks for
    pip install cornac implicit scikit-surprise
    # lightfm 1.17's setup.py fails under PEP 517 ('dict' object has no attribute '__LIGHTFM_SETUP__'): build it through
    # the legacy setup.py path, which pip >= 25.3 no longer has, then give torch back the setuptools it asks for
    pip install "pip<25.3" "setuptools<70" wheel
    pip install --no-use-pep517 --no-build-isolation lightfm
    pip install "setuptools>=77.0.3"
    pip install -e ".[bench]"                         # every peer is already there: this installs the package only
    pip uninstall -y torchvision                      # as .ci/run does: with the CPU torch it breaks transformers
"""
import argparse, datetime, importlib.metadata, json, os, platform, re, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, torch

from fine_tuning_flm.core import atomic_write, set_seed
from fine_tuning_flm.data import load_movielens
from fine_tuning_flm.evaluation import ContentKNN, MostPopular, evaluate, seen_codes, top_items

SEED = 42
PUBLISHED = {'ml-100k': {'cornac-BiVAE': 0.4751, 'cornac-BPR': 0.4420, 'Surprise-SVD': 0.0959},   # Recommenders' README
             'ml-1m': {'cornac-BiVAE': 0.438, 'cornac-BPR': 0.391, 'Surprise-SVD': 0.089}}
WARM_METRICS = ['ndcg', 'precision', 'recall', 'map']
MAP_RECO = 'MAP (Recommenders)'

# ---------------------------------------------------------------------------------------------------- adapters
class Scores:
    "The model protocol around a function users -> (len(users), n_items) scores; vocabulary from `train`."
    def __init__(self, train, fn):
        self.n_users, self.n_items = train.n_users, train.n_items
        self.seen_users, self.seen_items = seen_codes(train)
        self.fn = fn
    def score_items(self, users, cold=False):
        return torch.as_tensor(np.asarray(self.fn(np.asarray(users, np.int64))), dtype=torch.float32)

def factor_scores(train, U, V, item_bias=None):
    "Dot-product scores from user rows `U` and item rows `V`, both indexed by our codes."
    U, V = np.asarray(U, np.float32), np.asarray(V, np.float32)
    b = np.zeros(V.shape[0], np.float32) if item_bias is None else np.asarray(item_bias, np.float32)
    return Scores(train, lambda u: U[u] @ V.T + b[None])

def binary_matrix(train, min_rating=None):
    "The (n_users, n_items) CSR matrix with a 1 for every training rating (at least `min_rating`)."
    import scipy.sparse as sp
    r = train.ratings if min_rating is None else train.ratings[train.ratings.rating >= min_rating]
    return sp.csr_matrix((np.ones(len(r), np.float32), (r.user.to_numpy(), r.item.to_numpy())), shape=(train.n_users, train.n_items))

def timed(f, *a, **kw):
    t = time.perf_counter(); out = f(*a, **kw); return out, time.perf_counter() - t

# ---------------------------------------------------------------------------------------------------- warm systems
def fit_most_popular(train, test, args):
    m, fit = timed(MostPopular().fit, train)
    return m, fit, dict(settings={})

def ease_fit(X, lam):
    "EASE's item-item matrix B for a dense binary (users, items) matrix."
    G = X.T @ X
    G[np.diag_indices_from(G)] += lam
    P = np.linalg.inv(G)
    B = -P / np.diag(P)[None]
    B[np.diag_indices_from(B)] = 0
    return B

def ease_model(train, lam):
    X = binary_matrix(train).toarray().astype(np.float64)
    (B, fit) = timed(ease_fit, X, lam)
    S = (X @ B).astype(np.float32)
    return Scores(train, lambda u: S[u]), fit

def restrict(test, train):
    "`test` without the ratings of users or items that `train` never saw (a validation split can leave some)."
    su, si = seen_codes(train)
    r = test.ratings
    return test._like(r[su[r.user.to_numpy()] & si[r.item.to_numpy()]], test.name)

def fit_ease(train, test, args):
    vtrn, vtst = train.split('recommenders', ratio=0.75, by='item', seed=1)   # carved out of the training side only
    vtst = restrict(vtst, vtrn)
    grid = [100, 500] if args.quick else [50, 100, 200, 300, 500, 1000, 2000]
    t = time.perf_counter(); val = {}
    for lam in grid:
        m, _ = ease_model(vtrn, lam)
        e = evaluate(m, vtst, vtrn, metrics=['ndcg'], k=10)
        val[lam] = float(e.value.iloc[0])
    search = time.perf_counter() - t
    lam = max(grid, key=lambda l: val[l])
    m, fit = ease_model(train, lam)
    return m, fit, dict(settings=dict(lam=lam, grid=grid, validation="train.split('recommenders', ratio=0.75, by='item', seed=1)"),
                        validation_ndcg10={str(k): round(v, 5) for k, v in val.items()}, search_seconds=search)

def cornac_dataset(train):
    import cornac
    r = train.ratings
    return cornac.data.Dataset.from_uir(list(zip(r.user.tolist(), r.item.tolist(), r.rating.astype(float).tolist())), seed=SEED)

def cornac_scores(train, ds, model):
    "Every user's `model.score(user)` over every item, cornac's internal indices mapped back to our codes."
    items = np.empty(ds.num_items, np.int64)
    for raw, idx in ds.iid_map.items(): items[idx] = raw
    S = np.full((train.n_users, train.n_items), -np.inf, np.float32)
    for raw, idx in ds.uid_map.items(): S[raw, items] = model.score(idx)
    return Scores(train, lambda u: S[u])

def fit_bivae(train, test, args):
    import cornac
    torch.set_num_threads(args.threads)
    settings = dict(k=100, encoder_structure=[200], act_fn='tanh', likelihood='pois', n_epochs=5 if args.quick else 500,
                    batch_size=128, learning_rate=0.001, seed=SEED, use_gpu=False)
    ds = cornac_dataset(train)
    m = cornac.models.BiVAECF(**settings)
    _, fit = timed(m.fit, ds)
    return cornac_scores(train, ds, m), fit, dict(settings=dict(settings, torch_threads=args.threads))

def fit_cornac_bpr(train, test, args):
    import cornac
    settings = dict(k=200, max_iter=10 if args.quick else 100, learning_rate=0.01, lambda_reg=0.001, seed=SEED)
    ds = cornac_dataset(train)
    m = cornac.models.BPR(**settings)
    _, fit = timed(m.fit, ds)
    return cornac_scores(train, ds, m), fit, dict(settings=dict(settings, threads=m.num_threads))

def fit_lightfm(train, test, args):
    from lightfm import LightFM
    epochs = 3 if args.quick else 30
    m = LightFM(no_components=64, loss='warp', random_state=SEED)
    _, fit = timed(m.fit, binary_matrix(train).tocoo(), epochs=epochs, num_threads=1)
    (_, U), (b, V) = m.get_user_representations(), m.get_item_representations()
    return factor_scores(train, U, V, b), fit, dict(settings=dict(no_components=64, loss='warp', epochs=epochs,
                                                   learning_rate=m.learning_rate, max_sampled=m.max_sampled, num_threads=1))

def _blas_one_thread():
    import scipy.linalg                        # loads scipy's own OpenBLAS now, so that the limit reaches it too
    from threadpoolctl import threadpool_limits
    return threadpool_limits(1, 'blas')        # implicit warns (and slows) when BLAS runs threads of its own

def fit_implicit_als(train, test, args):
    from implicit.cpu.als import AlternatingLeastSquares
    settings = dict(factors=64, regularization=0.01, alpha=1.0, iterations=3 if args.quick else 15, random_state=SEED)
    X = binary_matrix(train)
    with _blas_one_thread():                   # the constructor checks the BLAS threads, fit uses them
        m = AlternatingLeastSquares(**settings, num_threads=args.threads)
        _, fit = timed(m.fit, X, show_progress=False)
    return factor_scores(train, m.user_factors, m.item_factors), fit, dict(settings=dict(settings, num_threads=args.threads))

def fit_implicit_bpr(train, test, args):
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    settings = dict(factors=64, learning_rate=0.01, regularization=0.01, iterations=10 if args.quick else 100, random_state=SEED)
    X = binary_matrix(train)
    with _blas_one_thread():
        m = BayesianPersonalizedRanking(**settings, num_threads=1)
        _, fit = timed(m.fit, X, show_progress=False)
    return factor_scores(train, m.user_factors, m.item_factors), fit, dict(settings=dict(settings, num_threads=1))   # factors carry the item bias

def fit_surprise_svd(train, test, args):
    from surprise import SVD, Dataset, Reader
    r = train.ratings
    ts = Dataset.load_from_df(pd.DataFrame({'u': r.user, 'i': r.item, 'r': r.rating}), Reader(rating_scale=train.scale)).build_full_trainset()
    settings = dict(random_state=SEED, **(dict(n_epochs=5) if args.quick else {}))
    m = SVD(**settings)
    _, fit = timed(m.fit, ts)
    users = np.array([ts.to_inner_uid(u) for u in range(train.n_users)])          # every user has training ratings
    inner = {ts.to_raw_iid(j): j for j in range(ts.n_items)}
    codes = np.array(sorted(inner)); cols = np.array([inner[c] for c in codes])
    lo, hi = train.scale
    S = np.full((train.n_users, train.n_items), -np.inf, np.float32)
    S[:, codes] = (ts.global_mean + m.bu[users, None] + m.bi[None, cols] + m.pu[users] @ m.qi[cols].T).clip(lo, hi)
    assert abs(S[0, codes[0]] - m.predict(0, codes[0]).est) < 1e-4, "Surprise-SVD: vectorised scores differ from predict()"
    return Scores(train, lambda u: S[u]), fit, dict(settings=dict(settings, note='default parameters'))

SYSTEMS = {'most-popular': fit_most_popular, 'EASE': fit_ease, 'cornac-BiVAE': fit_bivae, 'cornac-BPR': fit_cornac_bpr,
           'LightFM-WARP': fit_lightfm, 'implicit-ALS': fit_implicit_als, 'implicit-BPR': fit_implicit_bpr,
           'Surprise-SVD': fit_surprise_svd}

# ---------------------------------------------------------------------------------------------------- ours
def fit_flm(objective, text='frozen', **overrides):
    "`train_flm` with the recipe of `objective` on the whole training side, no validation side: nothing is chosen on `test`."
    def fit(train, test, args):
        from fine_tuning_flm.learner import recipe, text_vectors, train_flm
        torch.set_num_threads(args.threads)
        t = time.perf_counter()
        iv, uv = text_vectors(train) if text == 'frozen' else (None, None)       # cached on disk after the first run
        enc = time.perf_counter() - t
        kw = dict(overrides, **(dict(epochs=2) if args.quick else {}))
        learn, fit_s = timed(train_flm, train, None, objective=objective, text=text, item_vectors=iv, user_vectors=uv, progress=False, seed=SEED, **kw)
        r = {k: v for k, v in {**recipe(objective), **kw}.items() if not k.startswith('joint')}
        return learn.model.eval(), fit_s, dict(settings=dict(r, text=text), encode_seconds=enc)
    return fit

FLM_SYSTEMS = {'FLM-rank': fit_flm('rank'), 'FLM-rank-notext': fit_flm('rank', text=None), 'FLM-both': fit_flm('both'),
               'FLM-mse': fit_flm('rate')}

# ---------------------------------------------------------------------------------------------------- cold systems
_ITEM_VECTORS = {}
def item_vectors(train):
    "MiniLM vectors of every item text (cached on disk by `TextEncoder.encode`), and the seconds it took."
    if train.name not in _ITEM_VECTORS:
        from fine_tuning_flm.embeddings import TextEncoder
        t = time.perf_counter()
        v = TextEncoder().encode(train.items.text.tolist(), cache=True, progress=False)
        _ITEM_VECTORS[train.name] = (v, time.perf_counter() - t)
    return _ITEM_VECTORS[train.name]

def fit_popularity(train, test, args):
    m, fit = timed(MostPopular().fit, train)
    return m, fit, dict(settings={}, note='every cold item has 0 training ratings: all scores tie, so AUC is 0.5 by '
                                        'construction and NDCG@10 is that of a random order (ties broken at random)')

def fit_content_knn(train, test, args):
    torch.set_num_threads(args.threads)
    v, enc = item_vectors(train)
    m, fit = timed(ContentKNN(v).fit, train)
    return m, fit, dict(settings=dict(k=m.k, like=m.like, item_vectors='bundled all-MiniLM-L6-v2 on items.text'), encode_seconds=enc)

def title_words(title):
    "Lower-case words of a title without its year: 'Toy Story (1995)' -> ['toy', 'story']."
    return re.findall(r"[a-z0-9']+", re.sub(r'\(\d{4}\)\s*$', '', str(title)).lower())

def item_features(train, warm):
    "Rows: items; columns: identity of each warm item, then genres, then title words seen on warm items. Rows sum to 1."
    import scipy.sparse as sp
    it = train.items
    genres = [[g for g in str(s).split('|') if g] for s in it.genres.fillna('')]
    words = [title_words(t) for t in it.title]
    vocab = {f: j for j, f in enumerate(sorted({'g:' + g for i in np.flatnonzero(warm) for g in genres[i]} |
                                              {'w:' + w for i in np.flatnonzero(warm) for w in words[i]}))}
    wcode = np.full(len(it), -1); wcode[warm] = np.arange(warm.sum())
    rows, cols = [], []
    for i in range(len(it)):
        fs = ([wcode[i]] if warm[i] else []) + [warm.sum() + vocab[f] for f in {'g:' + g for g in genres[i]} | {'w:' + w for w in words[i]} if f in vocab]
        rows += [i] * len(fs); cols += fs
    F = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(it), warm.sum() + len(vocab)))
    n = np.asarray(F.sum(1)).ravel()
    return sp.diags(1 / np.maximum(n, 1)).astype(np.float32) @ F, len(vocab)

def fit_lightfm_features(train, test, args):
    from lightfm import LightFM
    epochs = 3 if args.quick else 30
    warm = seen_codes(train)[1]
    F, n_content = item_features(train, warm)
    X = binary_matrix(train, min_rating=4)[:, warm].tocoo()          # positives >= 4, as in the paper; warm items only
    m = LightFM(no_components=64, loss='warp', random_state=SEED)
    _, fit = timed(m.fit, X, item_features=F[warm], epochs=epochs, num_threads=1)
    (_, U), (b, V) = m.get_user_representations(), m.get_item_representations(F)   # cold rows: content features only
    return factor_scores(train, U, V, b), fit, dict(settings=dict(no_components=64, loss='warp', epochs=epochs, positives='rating >= 4',
                                                   features='identity (warm items) + genres + title words', n_content_features=n_content,
                                                   learning_rate=m.learning_rate, num_threads=1))

COLD_SYSTEMS = {'popularity': fit_popularity, 'content-kNN': fit_content_knn, 'LightFM-features': fit_lightfm_features,
                'FLM-rank': fit_flm('rank')}
SYSTEMS.update(FLM_SYSTEMS)

# ---------------------------------------------------------------------------------------------------- scoring
def map_recommenders(model, test, train, k=10):
    "(MAP as Recommenders' published table: precision at each hit of the top k over #relevant, ours over min(#rel, k))."
    r = test.ratings
    users, n_rel = np.unique(r.user.to_numpy(), return_counts=True)
    top = top_items(model, users, train, k=k, seed=0)                       # evaluate's lists: same candidates, same ties
    rel = set(zip(r.user.tolist(), r.item.tolist()))
    hits = np.array([[(u, i) in rel for i in row] for u, row in zip(users.tolist(), top.tolist())], dtype=np.float64)
    ap = (hits.cumsum(1) / np.arange(1, k + 1) * hits).sum(1)
    return float((ap / n_rel).mean()), float((ap / np.minimum(n_rel, k)).mean())

def warm_metrics(model, test, train):
    e = evaluate(model, test, train, metrics=WARM_METRICS, k=10)
    out = dict(zip(e.metric, e.value.astype(float)))
    out[MAP_RECO], ours = map_recommenders(model, test, train)
    if abs(ours - out['MAP@10']) > 1e-9: out['warning'] = f"MAP@10 from top_items ({ours:.6f}) differs from evaluate's ({out['MAP@10']:.6f})"
    return out

def cold_metrics(model, test, train):
    cand = ~seen_codes(train)[1] & np.isin(np.arange(train.n_items), test.ratings.item.unique())
    e = evaluate(model, test, train, metrics=['auc', 'ndcg'], k=10, cold=True, threshold=4, candidates=cand)
    return dict(zip(e.metric, e.value.astype(float))) | {'n_users': int(e.n.iloc[0]), 'n_cold_items': int(cand.sum())}

def run_system(name, fit_fn, train, test, score_fn, args):
    "Fit and score one system; any failure (an import too) becomes a row with the exact error."
    print(f'  {name} ...', end=' ', flush=True)
    set_seed(SEED)
    try:
        model, fit, extra = fit_fn(train, test, args)
        row = dict(system=name, metrics=score_fn(model, test, train), fit_seconds=fit, settings=extra.pop('settings', {}), **extra)
        print(f"fit {fit:.2f}s  " + '  '.join(f'{k} {v:.4f}' for k, v in row['metrics'].items() if isinstance(v, float)), flush=True)
    except Exception as e:                                     # noqa: BLE001 -- a peer's failure must not stop the others
        row = dict(system=name, error=f'{type(e).__name__}: {e}')
        print(f"ERROR {row['error']}", flush=True)
    return row

# ---------------------------------------------------------------------------------------------------- reporting
def add_ratios(rows):
    "Each row's fit time over cornac BPR's, with whether BPR was fitted in the same run."
    bpr = next((r for r in rows if r['system'] == 'cornac-BPR' and 'fit_seconds' in r), None)
    for r in rows:
        if bpr and 'fit_seconds' in r:
            r['fit_vs_cornac_bpr'] = r['fit_seconds'] / bpr['fit_seconds']
            r['cornac_bpr_same_run'] = r.get('run') == bpr.get('run')

def markdown(rows, cols, sort):
    "A markdown table of `rows` sorted by `sort` (descending), errors last."
    ok = sorted([r for r in rows if 'error' not in r], key=lambda r: -np.nan_to_num(r['metrics'].get(sort, np.nan), nan=-1))
    fmt = lambda v: '' if v is None else f'{v:.4f}' if isinstance(v, float) and abs(v) < 1 else f'{v:.2f}' if isinstance(v, float) else str(v)
    lines = ['| system | ' + ' | '.join(c for c, _ in cols) + ' |', '|---' * (len(cols) + 1) + '|']
    lines += ['| ' + r['system'] + ' | ' + ' | '.join(fmt(get(r)) for _, get in cols) + ' |' for r in ok]
    lines += [f"| {r['system']} | error: {r['error']} |" + ' |' * (len(cols) - 1) for r in rows if 'error' in r]
    return '\n'.join(lines)

def warm_table(rows, published):
    m = lambda k: lambda r: r['metrics'].get(k)
    cols = [('NDCG@10', m('NDCG@10')), ('P@10', m('P@10')), ('R@10', m('R@10')), ('MAP@10 (ours, /min(#rel,10))', m('MAP@10')),
            ('MAP (Recommenders, /#rel)', m(MAP_RECO)), ('fit s', lambda r: r.get('fit_seconds')),
            ('fit / cornac-BPR fit', lambda r: r.get('fit_vs_cornac_bpr') if r.get('cornac_bpr_same_run', True)
                                              else f"{r['fit_vs_cornac_bpr']:.4g} (BPR of another run)"), ('published NDCG@10', lambda r: published.get(r['system']))]
    return markdown(rows, cols, 'NDCG@10')

def cold_table(rows):
    m = lambda k: lambda r: r['metrics'].get(k)
    return markdown(rows, [('AUC (cold items)', m('AUC')), ('NDCG@10 (cold items)', m('NDCG@10')), ('fit s', lambda r: r.get('fit_seconds'))], 'AUC')

def versions():
    out = {'python': platform.python_version()}
    for p in ('fine_tuning_flm', 'torch', 'numpy', 'pandas', 'scipy', 'cornac', 'implicit', 'lightfm', 'scikit-surprise', 'threadpoolctl'):
        try: out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError: out[p] = None
    return out

def git_commit():
    try: return subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except Exception: return None                              # noqa: BLE001 -- provenance only

def pick(registry, wanted):
    if not wanted: return dict(registry)
    low = {w.lower() for w in wanted}
    return {k: f for k, f in registry.items() if k.lower() in low}

def merge_rows(old, new):
    "Rows of `old` whose system was not run now, then the new rows."
    names = {r['system'] for r in new}
    return [r for r in old if r['system'] not in names] + new

# ---------------------------------------------------------------------------------------------------- main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', nargs='+', default=['ml-100k'], choices=['ml-100k', 'ml-latest-small'], help='datasets of the warm part')
    p.add_argument('--ml1m', default=None, metavar='PATH', help='a folder with ml-1m (ratings.dat, movies.dat, users.dat): add it to the warm part')
    p.add_argument('--cold-data', nargs='+', default=None, choices=['ml-100k', 'ml-latest-small'],
                   help='datasets of the cold part (default: both; --quick: ml-100k)')
    p.add_argument('--systems', nargs='+', default=None, metavar='NAME',
                   help=f"run only these (case-insensitive): warm {list(SYSTEMS)}, cold {list(COLD_SYSTEMS)}")
    p.add_argument('--no-warm', action='store_true', help='skip the warm top-N part')
    p.add_argument('--no-cold', action='store_true', help='skip the cold-item part')
    p.add_argument('--no-rmse', action='store_true', help="skip the multi-task part (RMSE of 'both' against 'rate' on ml-100k u1)")
    p.add_argument('--quick', action='store_true', help='CI-size smoke test: few epochs, a 2-point EASE grid, cold part on ml-100k')
    p.add_argument('--threads', type=int, default=2, help='threads for torch (BiVAE, content-kNN) and implicit ALS (default 2)')
    p.add_argument('--out', default=None, help='write every number here as JSON')
    p.add_argument('--merge', action='store_true', help='keep the rows already in --out of the systems not run now')
    a = p.parse_args(argv)
    unknown = [s for s in a.systems or [] if s.lower() not in {k.lower() for k in [*SYSTEMS, *COLD_SYSTEMS]}]
    if unknown: p.error(f"unknown system(s) {unknown}; choose from {list(SYSTEMS) + list(COLD_SYSTEMS)}")
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    run = dict(command='python benchmarks/ranking.py ' + ' '.join(argv), date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
               load_average_start=os.getloadavg(), host=dict(cpus=os.cpu_count(), machine=platform.machine()), git_commit=git_commit(),
               versions=versions(), quick=a.quick, threads=a.threads)
    print(f"{run['command']}\n{run['date']}  load average {' '.join(f'{x:.2f}' for x in run['load_average_start'])}  "
          + '  '.join(f'{k} {v}' for k, v in run['versions'].items() if v), flush=True)
    res = dict(protocol=dict(
        warm="load_movielens(name).split('recommenders', ratio=0.75, by='item', seed=42); relevant = every test rating; each "
             "user's training items removed; top 10 over every item seen in training",
        map="'MAP@10' is ours (average precision over min(#relevant, 10), Recommenders >= 1.2 map_at_k); 'MAP (Recommenders)' divides "
            "the same sum by #relevant, as the 'MAP' of Recommenders' published table",
        cold="split('cold_items', pct=0.2, seed=0); candidates = the cold items; relevant = test ratings >= 4; mean per-user ROC AUC and "
             "NDCG@10 among the cold items (users with at least one relevant cold item)",
        fit_seconds='time.perf_counter around the fit call only (EASE: the final refit; its lambda search is search_seconds)'),
        runs=[run], ranking={}, cold_items={})
    if a.merge and a.out and Path(a.out).exists():
        old = json.loads(Path(a.out).read_text())
        res['runs'] = old.get('runs', []) + [run]
        res['ranking'], res['cold_items'] = old.get('ranking', {}), old.get('cold_items', {})
    rid = len(res['runs']) - 1

    warm = pick(SYSTEMS, a.systems)
    if not a.no_warm and warm:
        sets = [(n, lambda n=n: load_movielens(n)) for n in a.data]
        if a.ml1m is None: print('\nml-1m: not run (pass --ml1m PATH to a folder with ratings.dat, movies.dat, users.dat)')
        elif not Path(a.ml1m).expanduser().is_dir():
            print(f'\nml-1m: skipped, no folder at {a.ml1m}'); res['ranking']['ml-1m'] = dict(skipped=f'no folder at {a.ml1m}')
        else: sets.append(('ml-1m', lambda: load_movielens('ml-1m', path=Path(a.ml1m).expanduser())))
        for name, load in sets:
            train, test = load().split('recommenders', ratio=0.75, by='item', seed=42)
            print(f'\n## Top-10 ranking, {name}: {len(train):,} train / {len(test):,} test ratings (Recommenders\' split)', flush=True)
            rows = [dict(run_system(s, f, train, test, warm_metrics, a), run=rid) for s, f in warm.items()]
            prev = res['ranking'].get(name, {}).get('systems', []) if a.merge else []
            rows = merge_rows(prev, rows); add_ratios(rows)
            res['ranking'][name] = dict(n_train=len(train), n_test=len(test), n_users=int(test.ratings.user.nunique()), systems=rows,
                                        published_ndcg10=PUBLISHED.get(name, {}))
            print('\n' + warm_table(rows, PUBLISHED.get(name, {})), flush=True)

    cold = pick(COLD_SYSTEMS, a.systems)
    if not a.no_cold and cold:
        for name in a.cold_data or (['ml-100k'] if a.quick else ['ml-100k', 'ml-latest-small']):
            train, test = load_movielens(name).split('cold_items', pct=0.2, seed=0)
            print(f'\n## Cold items, {name}: {test.ratings.item.nunique():,} cold items, {len(test):,} test ratings', flush=True)
            rows = [dict(run_system(s, f, train, test, cold_metrics, a), run=rid) for s, f in cold.items()]
            prev = res['cold_items'].get(name, {}).get('systems', []) if a.merge else []
            rows = merge_rows(prev, rows)
            res['cold_items'][name] = dict(n_train=len(train), n_test=len(test), systems=rows)
            print('\n' + cold_table(rows), flush=True)

    if not a.no_rmse:
        # Part 3: can one model do both jobs? The multi-task recipe's RMSE on ml-100k's official u1 fold next to the rating recipe's
        # (and the ranking FLM's NDCG@10 on the same fold), each with its recipe's fixed epochs: the test fold chooses nothing.
        from fine_tuning_flm.learner import text_vectors, train_flm, ranking_metric
        from fine_tuning_flm.evaluation import rmse
        train, test = load_movielens('ml-100k').split('official', fold='u1')
        print(f'\n## Rating and ranking with one model: ml-100k u1 ({len(train):,} / {len(test):,})', flush=True)
        iv, uv = text_vectors(train)
        rows = []
        for name, obj in (('FLM-mse', 'rate'), ('FLM-both', 'both')):
            set_seed(SEED)
            learn, fit_s = timed(train_flm, train, None, objective=obj, item_vectors=iv, user_vectors=uv, progress=False, seed=SEED, **(dict(epochs=2) if a.quick else {}))
            m = learn.model.eval()
            r = test.ratings
            row = dict(system=name, objective=obj, rmse=rmse(m.predict(r.user, r.item, cold=True), r.rating), fit_seconds=fit_s,
                       ndcg10=ranking_metric(m, np.unique(r.user.to_numpy()), train.user_items(), test.user_items()))
            print(f"  {name}: RMSE {row['rmse']:.4f}  NDCG@10 {row['ndcg10']:.4f}  fit {fit_s:.1f}s", flush=True)
            rows.append(row)
        res['u1'] = dict(rows=rows, rmse_gap=rows[1]['rmse'] - rows[0]['rmse'], run=rid)
        print(f"  RMSE of the multi-task model minus the rating model's: {res['u1']['rmse_gap']:+.4f}")

    run['load_average_end'], run['wall_seconds'] = os.getloadavg(), time.perf_counter() - t0
    print(f"\nwall time {run['wall_seconds']:.0f}s, load average at the end {' '.join(f'{x:.2f}' for x in run['load_average_end'])}")
    if a.out:
        with atomic_write(a.out, 'w') as fh: json.dump(res, fh, indent=1, default=float)
        print(f'wrote {a.out}')
    return res

if __name__ == '__main__': main()
