"""Are `explain`'s explanations faithful? (#26) Deletion tests on the history side, a removal test on the text side, and the
latency of one explanation.

    python -m benchmarks.explain --out benchmarks/results/explain.json      # the full run (about 15 min on 2 busy cores)
    python -m benchmarks.explain --quick                                     # a small sample, a few minutes (writes only with --out)
    python -m benchmarks.explain --seq-users 200 --out ...                   # the Amazon tests on 200 test users instead of 1,000

History side, ml-100k, Microsoft Recommenders' split (`split('recommenders', ratio=0.75, by='item', seed=42)`):
- FLM: `train_flm(train, None, objective='rank')` (the ranking recipe: frozen MiniLM text, pooled history, so `explain` is
  exact). For every user and each item of their top 10 (training items left out), `Recommender.explain(user, item, k=3,
  fields=False)` names the 3 history items with the largest effects. Delete them and recompute the user's vector with the
  pooled history of the items left (the ID row and the text part stay, as in the model); then delete 3 random history items
  of the same user instead (seeded). The item's rank among the items the user did not rate in training, after minus
  before, is its rank drop. Reported: the share of (user, item) pairs where the explained deletion drops the item
  strictly more than the random one (`explained_beats_random`; ties apart), the mean rank drop of each, the mean score drop.
  `explain` orders history items by their *lead* (what each adds to the item's score minus its mean addition to the
  `LEAD_OVER` = 10 items ranked just below it); `by_effect` runs the same test with the 3 items that add most to the score
  itself, for comparison.
- implicit ALS (factors=64, regularization=0.01, alpha=1, 15 iterations: the settings of `benchmarks/ranking.py`), on the
  same training side as a 0/1 matrix: its top 10 (`recommend`, liked items filtered), its own `explain(user, items, item,
  N=3)`; a deletion removes the items from the user's row and refits the user (`recalculate_user`), as ALS serves a user.
  With alpha=1 ALS's user solve is a ridge regression, so its explanation is exact as well.
- The order-aware next-item model (below), where `explain` is leave-one-out: the same test on its test histories.

Text side, Amazon "Industrial and Scientific" (UniSRec's files, `load_recbole`): a `NextItem` with items='text' (inductive:
an item is its text through the adapter), frozen MiniLM, trained `--seq-epochs` epochs. For a sample of test users, each item
of their top 10: the field (sentence: title, category path, brand) that `NextItemRecommender.explain` ranks first, and a
random other field of the item. The drop of the item's score when a field is removed is measured through the serving path,
independently of `explain`'s arithmetic: every item's text without each field is added to the catalogue as a new item
(`add_items`), and scored after the user's history (`scores`). Because `explain` itself ranks fields by re-encoding the text
without each one, this checks that its ranking is the one the served scores give (ties and encoder differences aside); it is
not a test of an approximation.

Latency: `explain(user, item)` on the trained ml-100k model for 200 (user, top item) pairs: with the item's fields the first
time (its field texts are encoded) and again (remembered), and without fields; `recommend(user, k=10)`; medians, and the
ratio of each to `recommend`.
"""
import argparse, os, sys, time
import numpy as np, torch

from benchmarks.common import SEED, binary_matrix, blas_one_thread
from benchmarks.provenance import Run

QUANTILES = np.linspace(0, 100, 101)

def _summary(explained:np.ndarray, random:np.ndarray, s_exp:np.ndarray, s_rnd:np.ndarray) -> dict:
    "The comparison of two arrays of rank drops (and score drops), one entry per (user, item) pair."
    return dict(pairs=len(explained), explained_beats_random=float((explained > random).mean()), ties=float((explained == random).mean()),
                random_beats_explained=float((explained < random).mean()),
                mean_drop=dict(explained=float(explained.mean()), random=float(random.mean())),
                median_drop=dict(explained=float(np.median(explained)), random=float(np.median(random))),
                mean_score_drop=dict(explained=float(s_exp.mean()), random=float(s_rnd.mean())),
                drop_quantiles=dict(explained=np.percentile(explained, QUANTILES).tolist(), random=np.percentile(random, QUANTILES).tolist()))

def _rank(scores:torch.Tensor, cand:torch.Tensor, item:int) -> int:
    "1-based rank of `item` among the candidate items (bool mask) by `scores`."
    return int(((scores > scores[item]) & cand).sum()) + 1

# ---------------------------------------------------------------------------------------------------- the FLM
def flm_test(rec, train, rng, users) -> dict:
    "The deletion test of `Recommender.explain` (exact: pooled history)."
    m = rec.model
    q, b = m._item_table(cold=True); c = b[:, -1]
    out = {k: [] for k in ('exp', 'rnd', 's_exp', 's_rnd', 'eff', 's_eff')}
    with torch.no_grad():
        for u in users:
            terms = rec._user_terms(int(u))
            codes, y = terms['history']
            base = sum(v[0] for k, v in terms.items() if k != 'history')              # the ID row and the text part: they stay
            cand = torch.ones(m.n_items, dtype=torch.bool); cand[torch.from_numpy(rec._seen_items(int(u)))] = False
            top = rec.recommend(rec.users.id[u], k=10)
            for iid in top.id:
                i = int(rec._vocab.item_code(iid))
                ex = rec.explain(rec.users.id[u], iid, k=3, fields=False)
                d_exp = np.flatnonzero(np.isin(codes, rec._vocab.item_code(ex[ex.part == 'history'].id.to_numpy())))
                d_rnd = rng.choice(len(codes), 3, replace=False)
                d_eff = torch.topk(y @ q[i], 3).indices.numpy()                          # by effect on the score alone, not by lead
                s0 = q @ (base + y.sum(0)) + c; r0 = _rank(s0, cand, i)
                for d, kr, ks in ((d_exp, 'exp', 's_exp'), (d_rnd, 'rnd', 's_rnd'), (d_eff, 'eff', 's_eff')):
                    keep = np.setdiff1d(np.arange(len(codes)), d)
                    p = base + y[keep].sum(0) * (len(codes) / len(keep)) ** m.history_alpha     # the pooled history of the items left
                    s = q @ p + c
                    out[kr].append(_rank(s, cand, i) - r0); out[ks].append(float(s0[i] - s[i]))
    o = {k: np.array(v) for k, v in out.items()}
    return _summary(o['exp'], o['rnd'], o['s_exp'], o['s_rnd']) | dict(by_effect=_summary(o['eff'], o['rnd'], o['s_eff'], o['s_rnd']))

def train_flm_model(train, epochs):
    from fine_tuning_flm.learner import text_vectors, train_flm
    from fine_tuning_flm.recommend import Recommender
    iv, uv = text_vectors(train)
    t = time.perf_counter()
    learn = train_flm(train, None, objective='rank', item_vectors=iv, user_vectors=uv, progress=False, seed=SEED, epochs=epochs)
    return Recommender.from_learner(learn, train), time.perf_counter() - t

# ---------------------------------------------------------------------------------------------------- implicit ALS
def als_test(train, rng, users, threads:int) -> dict:
    "The deletion test of implicit ALS's own `explain`, a deletion refitting the user as ALS does (`recalculate_user`)."
    from implicit.cpu.als import AlternatingLeastSquares
    settings = dict(factors=64, regularization=0.01, alpha=1.0, iterations=15, random_state=SEED)
    X = binary_matrix(train).tocsr()
    out = {k: [] for k in ('exp', 'rnd', 's_exp', 's_rnd')}
    with blas_one_thread():
        m = AlternatingLeastSquares(**settings, num_threads=threads); m.fit(X, show_progress=False)
        V = torch.from_numpy(np.asarray(m.item_factors))
        for u in users:
            row = X[u]; liked = row.indices.copy()
            cand = torch.ones(X.shape[1], dtype=torch.bool); cand[torch.from_numpy(liked.astype(np.int64))] = False
            ids, _ = m.recommend(u, row, N=10, filter_already_liked_items=True, recalculate_user=True)
            s0 = V @ torch.from_numpy(np.asarray(m.recalculate_user(u, row)))
            for i in ids:
                _, contrib, _ = m.explain(u, X, int(i), N=3)
                d_exp = np.array([j for j, _ in contrib]); d_rnd = rng.choice(liked, 3, replace=False)
                r0 = _rank(s0, cand, int(i))
                for d, kr, ks in ((d_exp, 'exp', 's_exp'), (d_rnd, 'rnd', 's_rnd')):
                    r = row.copy(); r.data[np.isin(r.indices, d)] = 0; r.eliminate_zeros()
                    s = V @ torch.from_numpy(np.asarray(m.recalculate_user(u, r)))
                    out[kr].append(_rank(s, cand, int(i)) - r0); out[ks].append(float(s0[int(i)] - s[int(i)]))
    return _summary(*(np.array(out[k]) for k in ('exp', 'rnd', 's_exp', 's_rnd'))) | dict(settings=dict(settings, num_threads=threads))

# ---------------------------------------------------------------------------------------------------- the next-item model
def train_seq_model(epochs:int):
    "A `NextItem` (items='text', frozen MiniLM) on Amazon Scientific, served as a `NextItemRecommender`; (rec, train, test, seconds)."
    from fine_tuning_flm.core import data_dir
    from fine_tuning_flm.sequential import load_recbole, next_item_learner, fit_next_item
    from fine_tuning_flm.recommend import NextItemRecommender
    trn, val, tst = load_recbole(data_dir()/'amazon-scientific')
    t = time.perf_counter()
    learn = fit_next_item(next_item_learner(trn, val, seed=SEED), epochs=epochs, joint=False, progress=False)
    return NextItemRecommender.from_learner(learn, trn), trn, tst, time.perf_counter() - t

def seq_history_test(rec, tst, rng, users) -> dict:
    "The deletion test of the next-item model's leave-one-out `explain`: delete the 3 history items it names (every occurrence), or 3 random ones."
    out = {k: [] for k in ('exp', 'rnd', 's_exp', 's_rnd')}
    cand = torch.ones(rec.model.n_items, dtype=torch.bool)                  # RecBole's rule: nothing masked
    for u in users:
        h = rec.items.id.to_numpy()[tst.sequences[u]][-rec.config.max_len:]
        if len(set(h)) < 4: continue
        s0 = rec.scores(h)
        for i in torch.topk(s0, 10).indices.tolist():
            ex = rec.explain(h, rec.items.id[i], k=3, fields=False)
            named = ex[ex.side == 'user'].id.to_numpy()
            for d, kr, ks in ((named, 'exp', 's_exp'), (rng.choice(np.unique(h), 3, replace=False), 'rnd', 's_rnd')):
                s = rec.scores(h[~np.isin(h, d)])
                out[kr].append(_rank(s, cand, i) - _rank(s0, cand, i)); out[ks].append(float(s0[i] - s[i]))
    return _summary(*(np.array(out[k]) for k in ('exp', 'rnd', 's_exp', 's_rnd'))) | dict(users=len(users))

def text_test(rec, tst, rng, users) -> dict:
    "Does removing the field `explain` ranks first lower the item's score more than removing a random other field? Scores through `add_items` + `scores`."
    from fine_tuning_flm.recommend import text_fields
    import pandas as pd
    pairs, rows = [], []
    for u in users:
        h = rec.items.id.to_numpy()[tst.sequences[u]][-rec.config.max_len:]
        for i in torch.topk(rec.scores(h), 10).indices.tolist():
            fl = text_fields(rec.items, rec.items.iloc[i].to_dict())
            if len(fl) < 2: continue
            ex = rec.explain(h, rec.items.id[i], k=1)
            f = ex[ex.part == 'text field']; first = f.id.iloc[int(np.argmax(f.effect.to_numpy()))]
            other = rng.choice([c for c in fl if c != first])
            pairs.append((u, h, i, first, other)); rows += [(i, first, fl[first]), (i, other, fl[other])]
    new = pd.DataFrame(rows, columns=['item', 'field', 'text']).drop_duplicates(['item', 'field'], ignore_index=True)
    new['id'] = [f'explain-test-{j}' for j in range(len(new))]
    rec2 = rec.add_items(new[['id', 'text']])
    code = {(r.item, r.field): rec.model.n_items + j for j, r in enumerate(new.itertuples())}
    d_first, d_other = [], []
    for u, h, i, first, other in pairs:
        s = rec2.scores(h)
        d_first.append(float(s[i] - s[code[i, first]])); d_other.append(float(s[i] - s[code[i, other]]))
    a, b = np.array(d_first), np.array(d_other)
    return dict(pairs=len(a), users=len(users), first_beats_random=float((a > b).mean()), ties=float((a == b).mean()),
                mean_score_drop=dict(first=float(a.mean()), random=float(b.mean())), fields_per_item=float(np.mean([len(text_fields(rec.items, rec.items.iloc[p[2]].to_dict())) for p in pairs])))

# ---------------------------------------------------------------------------------------------------- latency
def latency(rec, rng, n:int=200) -> dict:
    "Median milliseconds of `explain` (fields encoded the first time, then remembered; no fields) and of `recommend`, over `n` (user, top item) pairs."
    users = rng.choice(rec.model.n_users, n, replace=True)
    rec._encoded_texts = {}
    t = {k: [] for k in ('recommend', 'explain_first', 'explain_again', 'explain_no_fields')}
    for u in users:
        uid = rec.users.id[u]
        t0 = time.perf_counter(); top = rec.recommend(uid, k=10); t['recommend'].append(time.perf_counter() - t0)
        iid = top.id[rng.integers(10)]
        for k, kw in (('explain_first', {}), ('explain_again', {}), ('explain_no_fields', dict(fields=False))):
            if k == 'explain_first': rec._encoded_texts.pop(next((key for key in rec._encoded_texts if key[0] == rec.items.text[rec._vocab.item_code(iid)]), None), None)
            t0 = time.perf_counter(); rec.explain(uid, iid, **kw); t[k].append(time.perf_counter() - t0)
    ms = {k: float(np.median(v) * 1e3) for k, v in t.items()}
    return dict(pairs=n, median_ms=ms, ratio_to_recommend={k: ms[k] / ms['recommend'] for k in ms if k != 'recommend'},
                p90_ms={k: float(np.percentile(v, 90) * 1e3) for k, v in t.items()}, load_average=[round(x, 2) for x in os.getloadavg()])

# ---------------------------------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', help='the results file (JSON); default: print only')
    p.add_argument('--quick', action='store_true', help='a sample of users and few epochs, to check the script')
    p.add_argument('--seq-epochs', type=int, default=10, help='epochs of the next-item model (default 10)')
    p.add_argument('--seq-users', type=int, default=1000, help='test users of the Amazon tests (default 1000)')
    p.add_argument('--threads', type=int, default=2)
    a = p.parse_args(argv)
    run = Run(__spec__.name, argv, out=a.out); print(run.banner(), flush=True)
    torch.set_num_threads(a.threads)
    from fine_tuning_flm.data import load_movielens
    train, _ = load_movielens('ml-100k').split('recommenders', ratio=0.75, by='item', seed=SEED)
    rec, fit_s = train_flm_model(train, 2 if a.quick else None)
    print(f"FLM-rank trained in {fit_s:.0f}s", flush=True)
    rng = np.random.default_rng(SEED)
    users = rng.choice(train.n_users, 60, replace=False) if a.quick else np.arange(train.n_users)
    res = dict(history=dict(data="ml-100k, load_movielens('ml-100k').split('recommenders', ratio=0.75, by='item', seed=42): the training side",
                            users=len(users), top_k=10, deleted=3))
    t = time.perf_counter(); res['history']['flm'] = flm_test(rec, train, np.random.default_rng(SEED), users) | dict(fit_seconds=fit_s, test_seconds=time.perf_counter() - t)
    print('FLM', {k: res['history']['flm'][k] for k in ('explained_beats_random', 'ties', 'mean_drop')}, flush=True)
    t = time.perf_counter(); res['history']['als'] = als_test(train, np.random.default_rng(SEED), users, a.threads) | dict(test_seconds=time.perf_counter() - t)
    print('ALS', {k: res['history']['als'][k] for k in ('explained_beats_random', 'ties', 'mean_drop')}, flush=True)
    res['latency'] = latency(rec, np.random.default_rng(SEED), 40 if a.quick else 200)
    print('latency', res['latency']['median_ms'], flush=True)
    srec, strn, stst, seq_s = train_seq_model(1 if a.quick else a.seq_epochs)
    su = np.random.default_rng(SEED).choice(stst.n_users, 30 if a.quick else a.seq_users, replace=False)
    t = time.perf_counter(); res['history']['sequence'] = seq_history_test(srec, stst, np.random.default_rng(SEED), su) | dict(fit_seconds=seq_s, epochs=1 if a.quick else a.seq_epochs, test_seconds=time.perf_counter() - t)
    print('sequence', {k: res['history']['sequence'][k] for k in ('explained_beats_random', 'ties', 'mean_drop')}, flush=True)
    t = time.perf_counter(); res['text'] = text_test(srec, stst, np.random.default_rng(SEED), su) | dict(data="Amazon Scientific (UniSRec's files), NextItem items='text', frozen MiniLM", test_seconds=time.perf_counter() - t)
    print('text', {k: res['text'][k] for k in ('first_beats_random', 'ties', 'mean_score_drop')}, flush=True)
    h = res['history']
    res['targets'] = dict(faithful_pairs=dict(target=0.90, flm=h['flm']['explained_beats_random'], met=h['flm']['explained_beats_random'] >= 0.90),
                          ours_vs_als=dict(flm_mean_drop=h['flm']['mean_drop']['explained'], als_mean_drop=h['als']['mean_drop']['explained'],
                                           flm_fraction=h['flm']['explained_beats_random'], als_fraction=h['als']['explained_beats_random'],
                                           met=h['flm']['mean_drop']['explained'] >= h['als']['mean_drop']['explained'] and h['flm']['explained_beats_random'] >= h['als']['explained_beats_random']),
                          latency_ms=dict(target=50, explain_first=res['latency']['median_ms']['explain_first'], explain_again=res['latency']['median_ms']['explain_again'],
                                          met=res['latency']['median_ms']['explain_first'] < 50))
    res['quick'] = a.quick
    run.write(res, a.out)
    print(res['targets'])

if __name__ == '__main__': main()
