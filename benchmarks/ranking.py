"""Top-N ranking on Microsoft Recommenders' MovieLens protocol, and cold-item ranking, against the peers.

    python -m benchmarks.ranking --out benchmarks/results/ranking.json     # every part, every system (~35 min on 2 cores)
    python -m benchmarks.ranking --quick                                    # CI-size smoke test: few epochs, 2 seeds, ml-100k only
    python -m benchmarks.ranking --systems EASE cornac-BPR --no-cold        # a subset of systems
    python -m benchmarks.ranking --ml1m ~/data/ml-1m                        # also the warm part on ml-1m (skipped if absent)
    python -m benchmarks.ranking --systems MY-SYSTEM --merge --out benchmarks/results/ranking.json   # add rows to a file

Part 1, warm top-N (Recommenders' benchmark notebook): `load_movielens('ml-100k').split('recommenders', ratio=0.75,
by='item', seed=42)` (their `python_stratified_split`), every test rating is relevant whatever its value, each user's
training items are removed, the top 10 are taken over every item seen in training. Reported: NDCG@10, P@10, R@10,
MAP@10 (ours: average precision over min(#relevant, 10), Recommenders >= 1.2's `map_at_k`), "MAP (Recommenders)"
(the same lists, divided by #relevant: the `map` of their published table) and the fit time in seconds (the fit call
only, `time.perf_counter`), with its ratio to cornac BPR's fit time in the same run.
- Seeds: FLM-rank (the default recipe, `train_flm(objective='rank')`), EASE and the headline FLM recipe are trained
  with `--seeds` training seeds (42, 1, 2, 3, 4) on that split: each row gives the mean, `metrics_std` (sample std) and
  every seed's numbers (`per_seed`). EASE itself has no random start: its "seed" is the seed of the validation split
  that chooses its λ, so its spread is that choice's. The other peers run once, seed 42 (`--bivae-seeds` for BiVAE).
- Split spread: FLM-rank, EASE and the headline recipe again on `--split-seeds` (42, 1, 2) of the same split, training
  seed 42 (`split_spread`).
- The headline FLM recipe (`headline`) is chosen among FLM-rank, FLM-rank-notext and FLM-both by NDCG@10 on a
  validation split carved out of the training side only (`train.split('recommenders', ratio=0.75, by='item', seed=0)`,
  trained with seed 42): the test rows choose nothing.

Part 3, one model for both jobs: on ml-100k's official u1 fold, the test RMSE (and full-catalogue NDCG@10) of `train_flm`
with objective='both' next to objective='rate', each with its recipe's fixed epochs (`--no-rmse` skips it).

Part 2, cold items (LightFM paper, Kula 2015): `split('cold_items', pct=0.2, seed=0)` holds out 20 % of the items with
all their ratings, on ml-100k and ml-latest-small. Candidates are the cold items only; positives are test ratings >= 4.
Reported: the mean per-user ROC AUC over the cold items, and NDCG@10 among them. ml-latest-small's item texts carry no
tag of a held-out (user, item) pair (`benchmarks.common.movielens`; `item_text_tags` says how).

Systems (name -> settings; all seeded with 42 unless said):
- most-popular / popularity: training-rating counts (`evaluation.MostPopular`). Every cold item has count 0, so on
  cold items popularity is undefined: all scores tie, AUC is 0.5 and NDCG@10 is that of a random order.
- EASE (Steck 2019): B = I - P diag(1/diag P), P = (XᵀX + λI)⁻¹, diag(B) = 0, scores X·B on the binary training
  matrix. λ is chosen by NDCG@10 on a validation split carved out of the training side only
  (`train.split('recommenders', ratio=0.75, by='item', seed=s)`, s the row's seed), then EASE is refitted on the full train.
- cornac-BiVAE: the notebook's k=100, encoder_structure=[200], act_fn='tanh', likelihood='pois', n_epochs=500,
  batch_size=128, learning_rate=0.001, on the CPU; scores `model.score(user)` over every item.
- cornac-BPR: k=200, max_iter=100, learning_rate=0.01, lambda_reg=0.001 (cornac runs one thread when seeded).
- LightFM-WARP: no features, no_components=64, loss='warp', 30 epochs, other settings lightfm's defaults, 1 thread.
- implicit-ALS: factors=64, regularization=0.01, alpha=1, 15 iterations (implicit's defaults but factors), binary
  confidence. implicit-BPR: factors=64, learning_rate=0.01, regularization=0.01, 100 iterations, 1 thread.
  implicit >= 0.5 fits a user×item matrix; scores are user_factors @ item_factors.T.
- Surprise-SVD: default parameters, fitted on the rating values; its score is the predicted rating (clipped to the
  scale, as `predict` does and as Recommenders ranks it).
- FLM-rank: `train_flm(objective='rank')` (RANK_RECIPE: full-catalogue softmax, pooled history, frozen MiniLM item
  text); FLM-rank-notext: the same with `text=None`; FLM-both: `objective='both'`; FLM-mse: `objective='rate'`.
- content-kNN (cold part): `evaluation.ContentKNN` on the bundled MiniLM vectors of the item texts; the one-off
  encoding time is recorded apart (`encode_seconds`), not in the fit time.
- LightFM-features (cold part): WARP on the training ratings >= 4, items described by identity + genre + title-word
  features (the warm items only are trained); cold items are scored from their genre and title-word features alone.
Peers are optional: a peer that cannot be imported or fails is printed and recorded as {"system", "error"}.

Adding a system: write `def fit_x(train, test, args, seed) -> (model, fit_seconds, extra)` whose model follows the
evaluation model protocol (`n_users`, `n_items`, `seen_users`, `seen_items`, `score_items(users, cold=False)`), put
`extra['settings']` in `extra`, and register it in `SYSTEMS` (warm part) or `COLD_SYSTEMS` (cold part). Never look
at `test` while fitting: it is passed only so a system can check it shares the vocabulary.
"""
import argparse, dataclasses, json, re, sys, time
from pathlib import Path
import numpy as np, pandas as pd, torch

from fine_tuning_flm.core import set_seed
from fine_tuning_flm.evaluation import ContentKNN, MostPopular, evaluate, seen_codes, top_items
from benchmarks.common import (SEED, VALIDATION, Scores, binary_matrix, blas_one_thread, cold_metrics, factor_scores, mean_std,
                               movielens, ndcg10, tag_policy, timed, validation_split)
from benchmarks.provenance import Run

PUBLISHED = {'ml-100k': {'cornac-BiVAE': 0.4751, 'cornac-BPR': 0.4420, 'Surprise-SVD': 0.0959},   # Recommenders' README
             'ml-1m': {'cornac-BiVAE': 0.438, 'cornac-BPR': 0.391, 'Surprise-SVD': 0.089}}
WARM_METRICS = ['ndcg', 'precision', 'recall', 'map']
MAP_RECO = 'MAP (Recommenders)'
SPLIT = dict(ratio=0.75, by='item')                            # Recommenders' python_stratified_split; its seed is 42
HEADLINE_CANDIDATES = ('FLM-rank', 'FLM-rank-notext', 'FLM-both')
HEADLINE_VALIDATION_SEED = 0
SEEDED = ('FLM-rank', 'EASE')                                  # trained with every training seed, and on every split seed (with the headline)

def train_seeds(n:int) -> list:
    "The first `n` training seeds: 42 (the seed of every single-seed row), then 1, 2, ..."
    return [SEED, *range(1, n)][:n]

# ---------------------------------------------------------------------------------------------------- warm systems
def fit_most_popular(train, test, args, seed=SEED):
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

def fit_ease(train, test, args, seed=SEED):
    "λ chosen on a validation split of the training side carved with `seed` (EASE's only random choice), then refitted on all of `train`."
    vtrn, vtst = validation_split(train, seed=seed)
    grid = [100, 500] if args.quick else [50, 100, 200, 300, 500, 1000, 2000]
    t = time.perf_counter(); val = {}
    for lam in grid: val[lam] = ndcg10(ease_model(vtrn, lam)[0], vtst, vtrn)
    search = time.perf_counter() - t
    lam = max(grid, key=lambda l: val[l])
    m, fit = ease_model(train, lam)
    return m, fit, dict(settings=dict(lam=lam, grid=grid, validation=VALIDATION.format(seed=seed)),
                        validation_ndcg10={str(k): round(v, 5) for k, v in val.items()}, search_seconds=search)

def cornac_dataset(train, seed=SEED):
    import cornac
    r = train.ratings
    return cornac.data.Dataset.from_uir(list(zip(r.user.tolist(), r.item.tolist(), r.rating.astype(float).tolist())), seed=seed)

def cornac_scores(train, ds, model):
    "Every user's `model.score(user)` over every item, cornac's internal indices mapped back to our codes."
    items = np.empty(ds.num_items, np.int64)
    for raw, idx in ds.iid_map.items(): items[idx] = raw
    S = np.full((train.n_users, train.n_items), -np.inf, np.float32)
    for raw, idx in ds.uid_map.items(): S[raw, items] = model.score(idx)
    return Scores(train, lambda u: S[u])

def fit_bivae(train, test, args, seed=SEED):
    import cornac
    torch.set_num_threads(args.threads)
    settings = dict(k=100, encoder_structure=[200], act_fn='tanh', likelihood='pois', n_epochs=5 if args.quick else 500,
                    batch_size=128, learning_rate=0.001, seed=seed, use_gpu=False)
    ds = cornac_dataset(train, seed)
    m = cornac.models.BiVAECF(**settings)
    _, fit = timed(m.fit, ds)
    return cornac_scores(train, ds, m), fit, dict(settings=dict(settings, torch_threads=args.threads))

def fit_cornac_bpr(train, test, args, seed=SEED):
    import cornac
    settings = dict(k=200, max_iter=10 if args.quick else 100, learning_rate=0.01, lambda_reg=0.001, seed=seed)
    ds = cornac_dataset(train, seed)
    m = cornac.models.BPR(**settings)
    _, fit = timed(m.fit, ds)
    return cornac_scores(train, ds, m), fit, dict(settings=dict(settings, threads=m.num_threads))

def fit_lightfm(train, test, args, seed=SEED):
    from lightfm import LightFM
    epochs = 3 if args.quick else 30
    m = LightFM(no_components=64, loss='warp', random_state=seed)
    _, fit = timed(m.fit, binary_matrix(train).tocoo(), epochs=epochs, num_threads=1)
    (_, U), (b, V) = m.get_user_representations(), m.get_item_representations()
    return factor_scores(train, U, V, b), fit, dict(settings=dict(no_components=64, loss='warp', epochs=epochs,
                                                   learning_rate=m.learning_rate, max_sampled=m.max_sampled, num_threads=1))

def fit_implicit_als(train, test, args, seed=SEED):
    from implicit.cpu.als import AlternatingLeastSquares
    settings = dict(factors=64, regularization=0.01, alpha=1.0, iterations=3 if args.quick else 15, random_state=seed)
    X = binary_matrix(train)
    with blas_one_thread():                    # the constructor checks the BLAS threads, fit uses them
        m = AlternatingLeastSquares(**settings, num_threads=args.threads)
        _, fit = timed(m.fit, X, show_progress=False)
    return factor_scores(train, m.user_factors, m.item_factors), fit, dict(settings=dict(settings, num_threads=args.threads))

def fit_implicit_bpr(train, test, args, seed=SEED):
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    settings = dict(factors=64, learning_rate=0.01, regularization=0.01, iterations=10 if args.quick else 100, random_state=seed)
    X = binary_matrix(train)
    with blas_one_thread():
        m = BayesianPersonalizedRanking(**settings, num_threads=1)
        _, fit = timed(m.fit, X, show_progress=False)
    return factor_scores(train, m.user_factors, m.item_factors), fit, dict(settings=dict(settings, num_threads=1))   # factors carry the item bias

def fit_surprise_svd(train, test, args, seed=SEED):
    from surprise import SVD, Dataset, Reader
    r = train.ratings
    ts = Dataset.load_from_df(pd.DataFrame({'u': r.user, 'i': r.item, 'r': r.rating}), Reader(rating_scale=train.scale)).build_full_trainset()
    settings = dict(random_state=seed, **(dict(n_epochs=5) if args.quick else {}))
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

# ---------------------------------------------------------------------------------------------------- ours
def fit_flm(objective, text='frozen', **overrides):
    "`train_flm` with the recipe of `objective` on the whole training side, no validation side: nothing is chosen on `test`."
    def fit(train, test, args, seed=SEED):
        from fine_tuning_flm.learner import JointConfig, recipe_for, text_vectors, train_flm
        torch.set_num_threads(args.threads)
        t = time.perf_counter()
        iv, uv = text_vectors(train) if text == 'frozen' else (None, None)       # cached on disk after the first run
        enc = time.perf_counter() - t
        kw = dict(overrides, **(dict(epochs=2) if args.quick else {}))
        learn, fit_s = timed(train_flm, train, None, objective=objective, text=text, item_vectors=iv, user_vectors=uv, progress=False, seed=seed, **kw)
        joint = {f.name for f in dataclasses.fields(JointConfig)}
        r = {k: v for k, v in recipe_for(objective).replace(**kw).asdict().items() if k not in joint}
        return learn.model.eval(), fit_s, dict(settings=dict(r, text=text, seed=seed), encode_seconds=enc)
    return fit

FLM_SYSTEMS = {'FLM-rank': fit_flm('rank'), 'FLM-rank-notext': fit_flm('rank', text=None), 'FLM-both': fit_flm('both'),
               'FLM-mse': fit_flm('rate')}
SYSTEMS = {'most-popular': fit_most_popular, 'EASE': fit_ease, 'cornac-BiVAE': fit_bivae, 'cornac-BPR': fit_cornac_bpr,
           'LightFM-WARP': fit_lightfm, 'implicit-ALS': fit_implicit_als, 'implicit-BPR': fit_implicit_bpr,
           'Surprise-SVD': fit_surprise_svd, **FLM_SYSTEMS}

# ---------------------------------------------------------------------------------------------------- cold systems
_ITEM_VECTORS = {}
def item_vectors(train):
    "MiniLM vectors of every item text (cached on disk by `TextEncoder.encode`), and the seconds it took."
    key = (train.name, hash(tuple(train.items.text)))
    if key not in _ITEM_VECTORS:
        from fine_tuning_flm.embeddings import TextEncoder
        t = time.perf_counter()
        v = TextEncoder().encode(train.items.text.tolist(), cache=True, progress=False)
        _ITEM_VECTORS[key] = (v, time.perf_counter() - t)
    return _ITEM_VECTORS[key]

def fit_popularity(train, test, args, seed=SEED):
    m, fit = timed(MostPopular().fit, train)
    return m, fit, dict(settings={}, note='every cold item has 0 training ratings: all scores tie, so AUC is 0.5 by '
                                        'construction and NDCG@10 is that of a random order (ties broken at random)')

def fit_content_knn(train, test, args, seed=SEED):
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

def fit_lightfm_features(train, test, args, seed=SEED):
    from lightfm import LightFM
    epochs = 3 if args.quick else 30
    warm = seen_codes(train)[1]
    F, n_content = item_features(train, warm)
    X = binary_matrix(train, min_rating=4)[:, warm].tocoo()          # positives >= 4, as in the paper; warm items only
    m = LightFM(no_components=64, loss='warp', random_state=seed)
    _, fit = timed(m.fit, X, item_features=F[warm], epochs=epochs, num_threads=1)
    (_, U), (b, V) = m.get_user_representations(), m.get_item_representations(F)   # cold rows: content features only
    return factor_scores(train, U, V, b), fit, dict(settings=dict(no_components=64, loss='warp', epochs=epochs, positives='rating >= 4',
                                                   features='identity (warm items) + genres + title words', n_content_features=n_content,
                                                   learning_rate=m.learning_rate, num_threads=1))

COLD_SYSTEMS = {'popularity': fit_popularity, 'content-kNN': fit_content_knn, 'LightFM-features': fit_lightfm_features,
                'FLM-rank': fit_flm('rank')}

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

def _fit_and_score(fit_fn, train, test, score_fn, args, seed):
    set_seed(seed)
    model, fit, extra = fit_fn(train, test, args, seed)
    return dict(metrics=score_fn(model, test, train), fit_seconds=fit, settings=extra.pop('settings', {}), **extra)

def _show(metrics):
    return '  '.join(f'{k} {v:.4f}' for k, v in metrics.items() if isinstance(v, float))

def run_system(name, fit_fn, train, test, score_fn, args, seeds=(SEED,)):
    "Fit and score one system with each of `seeds`; several seeds give the mean in `metrics`, `metrics_std` and `per_seed`. Any failure becomes a row with the exact error."
    rows = []
    for s in seeds:
        print(f'  {name}' + (f' seed {s}' if len(seeds) > 1 else '') + ' ...', end=' ', flush=True)
        try: rows.append(dict(_fit_and_score(fit_fn, train, test, score_fn, args, s), seed=s))
        except Exception as e:                                 # noqa: BLE001 -- a peer's failure must not stop the others
            row = dict(system=name, error=f'{type(e).__name__}: {e}', seed=s)
            print(f"ERROR {row['error']}", flush=True)
            return row
        print(f"fit {rows[-1]['fit_seconds']:.2f}s  " + _show(rows[-1]['metrics']), flush=True)
    if len(rows) == 1: return dict(system=name, **rows[0])
    keys = [k for k, v in rows[0]['metrics'].items() if isinstance(v, float)]
    stats = {k: mean_std([r['metrics'][k] for r in rows]) for k in keys}
    out = dict(system=name, seeds=list(seeds), metrics={k: m for k, (m, _) in stats.items()}, metrics_std={k: s for k, (_, s) in stats.items()},
               fit_seconds=float(np.mean([r['fit_seconds'] for r in rows])), settings={k: v for k, v in rows[0]['settings'].items() if k != 'seed'},
               per_seed=[dict(seed=r['seed'], metrics=r['metrics'], fit_seconds=r['fit_seconds'],
                              **{k: v for k, v in r.items() if k not in ('seed', 'metrics', 'fit_seconds', 'settings')},
                              **({'lam': r['settings']['lam']} if 'lam' in r['settings'] else {})) for r in rows])
    print(f"  {name}, mean ± std over {len(rows)} seeds: " + '  '.join(f'{k} {m:.4f} ± {s:.4f}' for k, (m, s) in stats.items()), flush=True)
    return out

# ---------------------------------------------------------------------------------------------------- headline, spread
def choose_headline(train, args, candidates):
    "The FLM recipe with the best NDCG@10 on a validation split carved out of the training side (seed 42 training); why, in words."
    fit, valid = validation_split(train, seed=HEADLINE_VALIDATION_SEED)
    print(f'\n  headline FLM recipe, chosen on validation: {len(fit):,} fit / {len(valid):,} validation ratings of the training side', flush=True)
    val = {}
    for name in candidates:
        set_seed(SEED)
        model, fit_s, _ = SYSTEMS[name](fit, valid, args, SEED)
        val[name] = dict(ndcg10=ndcg10(model, valid, fit), fit_seconds=fit_s)
        print(f"    {name}: validation NDCG@10 {val[name]['ndcg10']:.4f} ({fit_s:.0f}s)", flush=True)
    order = sorted(val, key=lambda n: -val[n]['ndcg10'])
    best = order[0]
    why = (f"highest validation NDCG@10 ({val[best]['ndcg10']:.4f}"
           + (f"; next {order[1]} {val[order[1]]['ndcg10']:.4f}, a margin of {val[best]['ndcg10'] - val[order[1]]['ndcg10']:.4f}" if len(order) > 1 else '')
           + ") on a validation split of the training side; the test split was not read")
    print(f'    -> {best}: {why}', flush=True)
    return dict(chosen=best, reason=why, candidates=list(candidates), validation=val,
                split=VALIDATION.format(seed=HEADLINE_VALIDATION_SEED), training_seed=SEED, n_fit=len(fit), n_valid=len(valid))

def split_spread(load, name, systems, rows, args):
    "Each of `systems` on every split seed (training seed 42): split seed 42 is the published split's seed-42 run, the others are new."
    out = {}
    for sname in systems:
        row = next((r for r in rows if r['system'] == sname and 'metrics' in r), None)
        if row is None: continue
        if 'per_seed' in row: first = next((p['metrics'] for p in row['per_seed'] if p['seed'] == SEED), None)
        else: first = row['metrics'] if row.get('seed', SEED) == SEED else None
        out[sname] = dict(per_split=[dict(split_seed=42, metrics=first)] if first is not None and 42 in args.split_seeds else [])
    for ss in [s for s in args.split_seeds if s != 42]:
        train, test = load().split('recommenders', **SPLIT, seed=ss)
        print(f'\n  split seed {ss}: {len(train):,} train / {len(test):,} test', flush=True)
        for sname in out:
            r = run_system(sname, SYSTEMS[sname], train, test, warm_metrics, args, seeds=(SEED,))
            out[sname]['per_split'].append(dict(split_seed=ss, **({'metrics': r['metrics'], 'fit_seconds': r['fit_seconds']} if 'metrics' in r else {'error': r['error']})))
    for sname, v in out.items():
        ok = [p['metrics'] for p in v['per_split'] if 'metrics' in p]
        keys = [k for k, x in ok[0].items() if isinstance(x, float)] if ok else []
        stats = {k: mean_std([m[k] for m in ok]) for k in keys}
        v.update(split_seeds=[p['split_seed'] for p in v['per_split']], training_seed=SEED,
                 mean={k: m for k, (m, _) in stats.items()}, std={k: s for k, (_, s) in stats.items()})
        if stats: print(f"  {sname} over split seeds {v['split_seeds']}: NDCG@10 {stats['NDCG@10'][0]:.4f} ± {stats['NDCG@10'][1]:.4f}", flush=True)
    return out

# ---------------------------------------------------------------------------------------------------- reporting
def add_ratios(rows):
    "Each row's fit time over cornac BPR's, with whether BPR was fitted in the same run."
    bpr = next((r for r in rows if r['system'] == 'cornac-BPR' and 'fit_seconds' in r), None)
    for r in rows:
        if bpr and 'fit_seconds' in r:
            r['fit_vs_cornac_bpr'] = r['fit_seconds'] / bpr['fit_seconds']
            r['cornac_bpr_same_run'] = r.get('run') == bpr.get('run')

def markdown(rows, cols, sort):
    "A markdown table of `rows` sorted by `sort` (descending), errors last; a metric with a std shows as mean ± std."
    ok = sorted([r for r in rows if 'error' not in r], key=lambda r: -np.nan_to_num(r['metrics'].get(sort, np.nan), nan=-1))
    fmt = lambda v: '' if v is None else f'{v:.4f}' if isinstance(v, float) and abs(v) < 1 else f'{v:.2f}' if isinstance(v, float) else str(v)
    def cell(r, get):
        v = get(r)
        return fmt(v) + (f" ± {r['metrics_std'][get.key]:.4f}" if getattr(get, 'key', None) in r.get('metrics_std', {}) else '')
    lines = ['| system | ' + ' | '.join(c for c, _ in cols) + ' |', '|---' * (len(cols) + 1) + '|']
    lines += ['| ' + r['system'] + (' (headline)' if r.get('headline') else '') + (f" ({len(r['seeds'])} seeds)" if 'seeds' in r else '') + ' | '
              + ' | '.join(cell(r, get) for _, get in cols) + ' |' for r in ok]
    lines += [f"| {r['system']} | error: {r['error']} |" + ' |' * (len(cols) - 1) for r in rows if 'error' in r]
    return '\n'.join(lines)

def _metric(k):
    get = lambda r: r['metrics'].get(k)
    get.key = k
    return get

def warm_table(rows, published):
    cols = [('NDCG@10', _metric('NDCG@10')), ('P@10', _metric('P@10')), ('R@10', _metric('R@10')), ('MAP@10 (ours, /min(#rel,10))', _metric('MAP@10')),
            ('MAP (Recommenders, /#rel)', _metric(MAP_RECO)), ('fit s', lambda r: r.get('fit_seconds')),
            ('fit / cornac-BPR fit', lambda r: r.get('fit_vs_cornac_bpr') if r.get('cornac_bpr_same_run', True)
                                              else f"{r['fit_vs_cornac_bpr']:.4g} (BPR of another run)"), ('published NDCG@10', lambda r: published.get(r['system']))]
    return markdown(rows, cols, 'NDCG@10')

def cold_table(rows):
    return markdown(rows, [('AUC (cold items)', _metric('AUC')), ('NDCG@10 (cold items)', _metric('NDCG@10')), ('fit s', lambda r: r.get('fit_seconds'))], 'AUC')

def pick(registry, wanted):
    if not wanted: return dict(registry)
    low = {w.lower() for w in wanted}
    return {k: f for k, f in registry.items() if k.lower() in low}

def merge_rows(old, new):
    "Rows of `old` whose system was not run now, then the new rows."
    names = {r['system'] for r in new}
    return [r for r in old if r['system'] not in names] + new

# ---------------------------------------------------------------------------------------------------- main
def parse(argv):
    p = argparse.ArgumentParser(prog='python -m benchmarks.ranking', description=__doc__.splitlines()[0])
    p.add_argument('--data', nargs='+', default=['ml-100k'], choices=['ml-100k', 'ml-latest-small'], help='datasets of the warm part')
    p.add_argument('--ml1m', default=None, metavar='PATH', help='a folder with ml-1m (ratings.dat, movies.dat, users.dat): add it to the warm part')
    p.add_argument('--cold-data', nargs='+', default=None, choices=['ml-100k', 'ml-latest-small'],
                   help='datasets of the cold part (default: both; --quick: ml-100k)')
    p.add_argument('--systems', nargs='+', default=None, metavar='NAME',
                   help=f"run only these (case-insensitive): warm {list(SYSTEMS)}, cold {list(COLD_SYSTEMS)}")
    p.add_argument('--seeds', type=int, default=None, help=f'training seeds of {list(SEEDED)} and the headline recipe (default 5; --quick 2)')
    p.add_argument('--bivae-seeds', type=int, default=1, help='training seeds of cornac-BiVAE (default 1: about 3 min each on 2 cores)')
    p.add_argument('--split-seeds', nargs='+', type=int, default=None, help='split seeds of the spread (default 42 1 2; --quick 42 1)')
    p.add_argument('--no-spread', action='store_true', help='skip the spread over split seeds')
    p.add_argument('--no-headline', action='store_true', help='skip choosing the headline FLM recipe on validation')
    p.add_argument('--no-warm', action='store_true', help='skip the warm top-N part')
    p.add_argument('--no-cold', action='store_true', help='skip the cold-item part')
    p.add_argument('--no-rmse', action='store_true', help="skip the multi-task part (RMSE of 'both' against 'rate' on ml-100k u1)")
    p.add_argument('--quick', action='store_true', help='CI-size smoke test: 2 epochs, 2 seeds, 2 split seeds, a 2-point EASE grid, cold part on ml-100k')
    p.add_argument('--threads', type=int, default=2, help='threads for torch (BiVAE, content-kNN) and implicit ALS (default 2)')
    p.add_argument('--out', default=None, help='write every number here as JSON')
    p.add_argument('--merge', action='store_true', help='keep the rows already in --out of the systems not run now')
    a = p.parse_args(argv)
    unknown = [s for s in a.systems or [] if s.lower() not in {k.lower() for k in [*SYSTEMS, *COLD_SYSTEMS]}]
    if unknown: p.error(f"unknown system(s) {unknown}; choose from {list(SYSTEMS) + list(COLD_SYSTEMS)}")
    if a.seeds is None: a.seeds = 2 if a.quick else 5
    if a.split_seeds is None: a.split_seeds = [42, 1] if a.quick else [42, 1, 2]
    if a.seeds < 1 or a.bivae_seeds < 1: p.error('--seeds and --bivae-seeds must be >= 1')
    return a

def warm_part(res, a, warm, rid):
    sets = [(n, lambda n=n: movielens(n)) for n in a.data]
    if a.ml1m is None: print('\nml-1m: not run (pass --ml1m PATH to a folder with ratings.dat, movies.dat, users.dat)')
    elif not Path(a.ml1m).expanduser().is_dir():
        print(f'\nml-1m: skipped, no folder at {a.ml1m}'); res['ranking']['ml-1m'] = dict(skipped=f'no folder at {a.ml1m}')
    else: sets.append(('ml-1m', lambda: movielens('ml-1m', path=Path(a.ml1m).expanduser())))
    for name, load in sets:
        train, test = load().split('recommenders', **SPLIT, seed=42)
        print(f'\n## Top-10 ranking, {name}: {len(train):,} train / {len(test):,} test ratings (Recommenders\' split)', flush=True)
        cands = [c for c in HEADLINE_CANDIDATES if c in warm]
        head = None if a.no_headline or not cands else choose_headline(train, a, cands)
        if head: res['headline'][name] = head
        seeded = {*SEEDED, *([head['chosen']] if head else [])}
        n_seeds = lambda s: a.seeds if s in seeded else a.bivae_seeds if s == 'cornac-BiVAE' else 1
        rows = [dict(run_system(s, f, train, test, warm_metrics, a, seeds=train_seeds(n_seeds(s))), run=rid) for s, f in warm.items()]
        if head:
            for r in rows: r['headline'] = r['system'] == head['chosen']
            hr = next((r for r in rows if r['headline'] and 'metrics' in r), None)
            if hr: head['test'] = dict(seeds=hr.get('seeds', [SEED]), ndcg10=hr['metrics']['NDCG@10'], ndcg10_std=hr.get('metrics_std', {}).get('NDCG@10', 0.0))
        prev = res['ranking'].get(name, {}).get('systems', []) if a.merge else []
        rows = merge_rows(prev, rows); add_ratios(rows)
        res['ranking'][name] = dict(n_train=len(train), n_test=len(test), n_users=int(test.ratings.user.nunique()), systems=rows,
                                    published_ndcg10=PUBLISHED.get(name, {}), training_seeds=train_seeds(a.seeds))
        if not a.no_spread:
            spread = [s for s in dict.fromkeys([*SEEDED, *([head['chosen']] if head else [])]) if s in warm]
            res['ranking'][name]['split_spread'] = split_spread(load, name, spread, rows, a)
        print('\n' + warm_table(rows, PUBLISHED.get(name, {})), flush=True)

def cold_part(res, a, cold, rid):
    for name in a.cold_data or (['ml-100k'] if a.quick else ['ml-100k', 'ml-latest-small']):
        d = movielens(name)
        train, test = d.split('cold_items', pct=0.2, seed=0)
        print(f'\n## Cold items, {name}: {test.ratings.item.nunique():,} cold items, {len(test):,} test ratings; {tag_policy(d)}', flush=True)
        rows = [dict(run_system(s, f, train, test, cold_metrics, a), run=rid) for s, f in cold.items()]
        prev = res['cold_items'].get(name, {}).get('systems', []) if a.merge else []
        rows = merge_rows(prev, rows)
        res['cold_items'][name] = dict(n_train=len(train), n_test=len(test), systems=rows, item_text_tags=tag_policy(d))
        print('\n' + cold_table(rows), flush=True)

def rmse_part(res, a, rid):
    "Part 3: can one model do both jobs? The multi-task recipe's RMSE on ml-100k's official u1 fold next to the rating recipe's, fixed epochs."
    from fine_tuning_flm.learner import text_vectors, train_flm, ranking_metric
    from fine_tuning_flm.metrics import rmse
    train, test = movielens('ml-100k').split('official', fold='u1')
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

def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(x) for x in argv]
    a = parse(argv)
    torch.set_num_threads(a.threads)
    prov = Run(__spec__.name, argv, out=a.out)
    print(prov.banner(), flush=True)
    run = dict(prov.start, quick=a.quick, threads=a.threads)
    res = dict(protocol=dict(
        warm="load_movielens(name).split('recommenders', ratio=0.75, by='item', seed=42); relevant = every test rating; each "
             "user's training items removed; top 10 over every item seen in training",
        seeds=f"{list(SEEDED)} and the headline recipe: training seeds {train_seeds(a.seeds)} (metrics = mean, metrics_std = sample std, "
              "per_seed); EASE's seed is that of the validation split choosing its lambda; other systems: seed 42",
        split_spread=f"split seeds {a.split_seeds} of the same split, training seed 42",
        headline=f"the FLM recipe among {list(HEADLINE_CANDIDATES)} with the best NDCG@10 on "
                 f"{VALIDATION.format(seed=HEADLINE_VALIDATION_SEED)}, trained with seed 42",
        map="'MAP@10' is ours (average precision over min(#relevant, 10), Recommenders >= 1.2 map_at_k); 'MAP (Recommenders)' divides "
            "the same sum by #relevant, as the 'MAP' of Recommenders' published table",
        cold="split('cold_items', pct=0.2, seed=0); candidates = the cold items; relevant = test ratings >= 4; mean per-user ROC AUC and "
             "NDCG@10 among the cold items (users with at least one relevant cold item); no held-out user's tag in an item text",
        fit_seconds='time.perf_counter around the fit call only (EASE: the final refit; its lambda search is search_seconds); '
                    'several seeds: their mean'),
        runs=[run], ranking={}, cold_items={}, headline={})
    if a.merge and a.out and Path(a.out).exists():
        old = json.loads(Path(a.out).read_text())
        res['runs'] = old.get('runs', []) + [run]
        for k in ('ranking', 'cold_items', 'headline', 'u1'):
            if k in old: res[k] = old[k]
    rid = len(res['runs']) - 1

    warm = pick(SYSTEMS, a.systems)
    if not a.no_warm and warm: warm_part(res, a, warm, rid)
    cold = pick(COLD_SYSTEMS, a.systems)
    if not a.no_cold and cold: cold_part(res, a, cold, rid)
    if not a.no_rmse: rmse_part(res, a, rid)

    p = prov.record()
    run.update(load_average_end=p['load_average_end'], wall_seconds=p['wall_seconds'], host=p['host'])
    prov.write(res, a.out, p)
    print(f"\nwall time {p['wall_seconds']:.0f}s, load average at the end {' '.join(f'{x:.2f}' for x in p['load_average_end'])}"
          + (f'\nwrote {a.out}' if a.out else ''))
    return res

if __name__ == '__main__': main()
