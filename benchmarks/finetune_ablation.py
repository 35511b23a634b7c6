#!/usr/bin/env python
"""Fine-tuning the language model: frozen vs top_k (k=2) vs LoRA vs full, fine-tune-first and joint, on ml-100k.

    python benchmarks/finetune_ablation.py                  # the full ablation (~45-60 min on 2 CPU cores)
    python benchmarks/finetune_ablation.py --quick          # a tiny version (10% of users, 1 epoch): ~2-3 min
    python benchmarks/finetune_ablation.py --configs frozen joint-lora --out results.json

Every config runs in its own subprocess (its peak RSS is its own) with the same seed, and is scored on
  - warm RMSE: the official u1 fold (u1.base / u1.test);
  - cold-item RMSE: `split('cold_items', pct=0.2, seed=0)`, predicted from text alone (`predict(..., cold=True)`).
The configs:
  - frozen: the pretrained MiniLM's vectors in `train_flm` (the baseline; the LM never trains);
  - ft-<mode>: fine-tune first (`finetune_encoder`, two-tower rating head, on the training side of each split, or a
    random subsample of it, see --ft-frac), then encode with the fine-tuned LM and run `train_flm` as for frozen;
  - joint-<mode>: `train_flm(text=mode)`: the recipe's epochs with the LM frozen, then `joint_epochs` with the LM unfrozen.
mode is top_k (top 2 layers), lora (r=8 on query/key/value) or full. 'LM s/epoch' times the stage that trains the LM
(the fine-tuning epoch, or the joint epochs); 'LM params' counts the LM weights that train there.
The ranker part: NDCG@10 of the frozen FLM's top-10 on u1, and of its top-50 re-ranked by a `PromptRanker`
(LoRA cross-encoder, one epoch on a sample of u1.base prompts), on a sample of test users.
The test folds are never used to choose anything. --out writes every number and the command line as JSON.
"""
import argparse, json, os, resource, subprocess, sys, time
import numpy as np, pandas as pd, torch

MODES = ('top_k', 'lora', 'full')
CONFIGS = ('frozen', 'ranker') + tuple(f'{k}-{m}' for m in MODES for k in ('ft', 'joint'))   # costliest last

def peak_mib(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB

def _shrink(d, mask, user_frac, n_items, seed=0):
    "--quick: a random `user_frac` of the users and their `n_items` most-rated items, re-coded (the LM then sees few texts)."
    from fine_tuning_flm.data import Interactions
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(d.n_users, max(1, round(user_frac*d.n_users)), replace=False))
    r = d.ratings[np.isin(d.ratings.user.to_numpy(), users)]
    items = np.sort(r.item.value_counts().index[:n_items].to_numpy())
    keep = np.isin(r.item.to_numpy(), items)
    r, m = r[keep].copy(), mask[r.index[keep]]
    r['user'], r['item'] = np.searchsorted(users, r.user.to_numpy()), np.searchsorted(items, r.item.to_numpy())
    small = Interactions(r.reset_index(drop=True), d.items.iloc[items].reset_index(drop=True), d.users.iloc[users].reset_index(drop=True),
                         d.scale, f'{d.name} ({len(users)} users x {len(items)} items)', d.path)
    return small, m

def _splits(a):
    "{'warm': u1 (train, test), 'cold': cold-item (train, test)}; with --quick, on a re-coded sample that keeps u1's assignment."
    from fine_tuning_flm.data import load_movielens
    d = load_movielens('ml-100k')
    if a.user_frac >= 1: return {'warm': d.split('official', fold='u1'), 'cold': d.split('cold_items', pct=0.2, seed=0)}
    _, u1 = d.split('official', fold='u1')
    key = lambda r: r.user.to_numpy().astype(np.int64) * d.n_items + r.item.to_numpy()
    small, m = _shrink(d, np.isin(key(d.ratings), key(u1.ratings)), a.user_frac, a.quick_items)
    r = small.ratings
    return {'warm': (small._like(r[~m], f'{small.name} u1 train'), small._like(r[m], f'{small.name} u1 test')),
            'cold': small.split('cold_items', pct=0.2, seed=0)}

def md_table(df, fmts):
    "A markdown table (pandas' to_markdown needs tabulate, which this environment lacks)."
    cols = [df.index.name or ''] + list(df.columns)
    def cell(c, v):
        if isinstance(v, str): return v
        if v is None or (isinstance(v, float) and np.isnan(v)): return '–'
        return format(v, fmts.get(c, ''))
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '|'.join(['---'] + ['---:' if df[c].dtype.kind in 'if' else '---' for c in df.columns]) + '|']
    for i, row in df.iterrows(): lines.append('| ' + ' | '.join([str(i)] + [cell(c, row[c]) for c in df.columns]) + ' |')
    return '\n'.join(lines)

def _subsample(d, frac, seed):
    return d if frac >= 1 else d._like(d.ratings.sample(frac=frac, random_state=seed), f'{d.name} ({frac:.0%} of ratings)')

def _lm_params(mode, k):
    from fine_tuning_flm.embeddings import TextEncoder
    from fine_tuning_flm.finetune import trainable
    if mode == 'frozen': return 0
    te = trainable(TextEncoder(), mode, k=k)
    return sum(p.numel() for p in te.parameters() if p.requires_grad)

def _stage_clock():
    from fastai.callback.core import Callback
    class StageClock(Callback):
        "Wall time of every `fit` call (train_flm's joint path fits twice: LM frozen, then LM training)."
        order = 90
        def __init__(self): self.fits = []
        def before_fit(self): self.t0 = time.perf_counter()
        def after_fit(self): self.fits.append(dict(epochs=self.n_epoch, seconds=time.perf_counter() - self.t0))
    return StageClock()

def _score(learn, tst):
    "RMSE on all of `tst` through the cold path (u1.test has ratings on 32 items that u1.base lacks), and on its warm items."
    from fine_tuning_flm.evaluation import evaluate
    df = evaluate(learn.model, tst, metrics=['rmse'], cold=True, by='items').set_index('slice')
    return {k: float(df.value.get(s, np.nan)) for k, s in (('rmse', 'all'), ('rmse_warm_items', 'warm items'), ('rmse_cold_items', 'cold items'))} | \
           {'n_cold_item_ratings': int(df.n.get('cold items', 0))}

def run_config(cfg, a):
    "One config on both splits, in this process: a dict of numbers."
    from fine_tuning_flm.core import set_seed
    from fine_tuning_flm.learner import FLM_RECIPE, text_vectors, train_flm
    from fine_tuning_flm.finetune import finetune_encoder
    t_all = time.perf_counter()
    kind, mode = (cfg, 'frozen') if cfg == 'frozen' else cfg.split('-', 1)
    out = dict(config=cfg, approach={'frozen': 'pretrained', 'ft': 'fine-tune first', 'joint': 'joint'}[kind], mode=mode,
               lm_params=_lm_params(mode, a.k))
    ft_kw = dict(k=a.k) if mode == 'top_k' else {}
    for name, (trn, tst) in _splits(a).items():
        r = {}
        set_seed(a.seed)
        if kind == 'ft':
            ft_trn = _subsample(trn, a.ft_frac, a.seed)
            ft_val = _subsample(tst, a.ft_valid_frac, a.seed)
            t = time.perf_counter()
            enc = finetune_encoder(ft_trn, ft_val, mode=mode, head='rating', epochs=a.ft_epochs, progress=False,
                                   user_titles=a.ft_user_titles, **ft_kw)
            r['ft_seconds'] = time.perf_counter() - t
            r['lm_s_per_epoch'] = r['ft_seconds'] / a.ft_epochs
            r['ft_ratings'], r['ft_valid_loss'] = len(ft_trn), enc.finetune_history['values'][-1][1]
        else: enc = None
        t = time.perf_counter()
        iv, uv = text_vectors(trn, enc, cache=enc is None)    # fine-tuned weights: encode afresh, no cache files
        r['encode_seconds'] = time.perf_counter() - t
        clock = _stage_clock()
        t = time.perf_counter()
        if kind == 'joint':
            learn = train_flm(trn, tst, epochs=a.epochs, text=mode, joint_epochs=a.joint_epochs, progress=False, seed=a.seed,
                              finetune=ft_kw or None, item_vectors=iv, user_vectors=uv, cbs=[clock])
            r['lm_s_per_epoch'] = clock.fits[-1]['seconds'] / clock.fits[-1]['epochs']
        else:
            learn = train_flm(trn, tst, epochs=a.epochs, text='frozen', progress=False, seed=a.seed,
                              item_vectors=iv, user_vectors=uv, cbs=[clock])
        r['flm_seconds'] = time.perf_counter() - t
        r['fits'] = clock.fits
        r.update(_score(learn, tst))
        r['n_train'], r['n_test'] = len(trn), len(tst)
        out[name] = r
        print(f"  [{cfg}] {name}: RMSE {r['rmse']:.4f}" + (f", LM {r['lm_s_per_epoch']:.1f}s/epoch" if 'lm_s_per_epoch' in r else ''), flush=True)
        del learn, enc
    out['seconds'] = time.perf_counter() - t_all
    out['peak_rss_mib'] = peak_mib()
    return out

def run_ranker(a):
    "NDCG@10 on u1 of the frozen FLM's ranking, with and without re-ranking its top-50 by a PromptRanker."
    from fine_tuning_flm.core import set_seed
    from fine_tuning_flm.data import user_texts
    from fine_tuning_flm.learner import text_vectors, train_flm
    from fine_tuning_flm.finetune import prompt_ranker_learner
    from fine_tuning_flm.evaluation import evaluate, ndcg_at_k, top_items
    t_all = time.perf_counter()
    trn, tst = _splits(a)['warm']
    set_seed(a.seed)
    iv, uv = text_vectors(trn)
    learn = train_flm(trn, tst, epochs=a.epochs, progress=False, seed=a.seed, item_vectors=iv, user_vectors=uv)
    model = learn.model
    rng = np.random.default_rng(a.seed)
    test_users = np.unique(tst.ratings.user.to_numpy())
    users = np.sort(rng.choice(test_users, min(a.rank_users, len(test_users)), replace=False))
    res = dict(config='ranker', n_users=len(users), n_test_users=len(test_users), candidates=a.candidates)
    # the library's NDCG@10 of the FLM, on all test users and on the sample (a check for the hand-made hits below)
    for th in (None, 4):
        key = 'all' if th is None else 'liked'
        res[f'flm_ndcg_allusers_{key}'] = float(evaluate(model, tst, trn, metrics=['ndcg'], k=10, threshold=th, cold=True).value.iloc[0])
        sub = tst._like(tst.ratings[np.isin(tst.ratings.user.to_numpy(), users)])
        res[f'flm_ndcg_eval_{key}'] = float(evaluate(model, sub, trn, metrics=['ndcg'], k=10, threshold=th, cold=True).value.iloc[0])
    # the ranker: one epoch of BCE on liked / not-liked prompts from u1.base
    set_seed(a.seed)
    pl = prompt_ranker_learner(trn, tst, max_pairs=a.ranker_pairs, bs=32, seed=a.seed)
    t = time.perf_counter()
    with pl.no_bar(), pl.no_logging(): pl.fit_one_cycle(1, a.ranker_lr)
    res['ranker_train_seconds'], res['ranker_train_prompts'] = time.perf_counter() - t, len(pl.dls.train_ds)
    res['ranker_valid_bce'] = float(pl.recorder.values[-1][1])
    ranker = pl.model
    top = top_items(model, users, train=trn, k=a.candidates, cold=True)   # cold: items without u1.base ratings rank by text
    utexts, itexts = user_texts(trn, n_titles=5), trn.items.text.tolist()
    t = time.perf_counter()
    reranked = np.stack([ranker.rerank(utexts[u], c[c >= 0], itexts)[:10] for u, c in zip(users, top)])
    res['rerank_seconds'] = time.perf_counter() - t
    r = tst.ratings
    for th in (None, 4):
        key = 'all' if th is None else 'liked'
        rel_r = r if th is None else r[r.rating >= th]
        rel = {u: set(g.item) for u, g in rel_r.groupby('user')}
        keep = np.array([u in rel for u in users])          # evaluate() skips users without relevant test items
        n_rel = np.array([len(rel.get(u, ())) for u in users])[keep]
        for name, lists in (('flm', top[:, :10]), ('reranked', reranked)):
            hits = np.array([[i in rel.get(u, ()) for i in row] for u, row in zip(users, lists)])[keep]
            res[f'{name}_ndcg_{key}'] = float(ndcg_at_k(hits, n_rel, 10).mean())
        res[f'n_users_{key}'] = int(keep.sum())
    res['seconds'] = time.perf_counter() - t_all
    res['peak_rss_mib'] = peak_mib()
    return res

def child(cfg, a):
    torch.set_num_threads(a.threads) if a.threads else None
    res = run_ranker(a) if cfg == 'ranker' else run_config(cfg, a)
    with open(a.result, 'w') as fh: json.dump(res, fh)

def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=CONFIGS)
    p.add_argument('--quick', action='store_true', help="10%% of users x their 200 most-rated items (u1's assignment kept), 1 FLM epoch, 1 joint epoch, small fine-tune/ranker samples")
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--epochs', type=int, default=None, help="FLM epochs (LM frozen); default FLM_RECIPE's 20")
    p.add_argument('--joint-epochs', type=int, default=None, help="joint epochs (LM training); default FLM_RECIPE's 2")
    p.add_argument('--k', type=int, default=2, help='top_k: layers that train')
    p.add_argument('--ft-epochs', type=int, default=1, help='fine-tune-first: epochs of finetune_encoder')
    p.add_argument('--ft-frac', type=float, default=None, help='fine-tune-first: fraction of the training ratings it sees (default 0.1; quick 0.15 of the sample)')
    p.add_argument('--ft-user-titles', type=int, default=0, help="fine-tune-first: favourite titles in the user texts (default 0: demographics only, as the FLM's user texts; 5 triples the LM cost per step)")
    p.add_argument('--ft-valid-frac', type=float, default=None, help='fine-tune-first: fraction of the test side used as its (reporting-only) valid set')
    p.add_argument('--rank-users', type=int, default=None, help='ranker: test users sampled (default 100; quick 10)')
    p.add_argument('--candidates', type=int, default=50, help="ranker: the FLM's top-n that it re-ranks")
    p.add_argument('--ranker-pairs', type=int, default=None, help='ranker: u1.base ratings sampled for training prompts (plus as many random negatives as positives)')
    p.add_argument('--ranker-lr', type=float, default=1e-3)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--out', default=None, help='write all numbers here as JSON')
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    p.add_argument('--result', default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    q = a.quick
    a.user_frac, a.quick_items = (0.1, 200) if q else (1.0, None)
    from fine_tuning_flm.learner import FLM_RECIPE
    if a.epochs is None: a.epochs = 1 if q else FLM_RECIPE['epochs']
    if a.joint_epochs is None: a.joint_epochs = 1 if q else FLM_RECIPE['joint_epochs']
    if a.ft_frac is None: a.ft_frac = 0.15 if q else 0.1
    if a.ft_valid_frac is None: a.ft_valid_frac = 0.1 if q else 0.25
    if a.rank_users is None: a.rank_users = 10 if q else 100
    if a.ranker_pairs is None: a.ranker_pairs = 120 if q else 1500
    return a

def table(rows):
    recs = []
    for r in rows:
        w, c = r['warm'], r['cold']
        recs.append({'config': r['config'], 'approach': r['approach'], 'mode': r['mode'],
                     'warm RMSE (u1)': w['rmse'], 'cold-item RMSE': c['rmse'],
                     'LM s/epoch (u1)': w.get('lm_s_per_epoch', np.nan), 'LM params': r['lm_params'],
                     'peak RSS MiB': r['peak_rss_mib'], 'wall s': r['wall_seconds']})
    return pd.DataFrame(recs).set_index('config')

def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    if a.child: return child(a.child, a)
    from fine_tuning_flm.learner import FLM_RECIPE
    t0 = time.perf_counter()
    cmd = 'python benchmarks/finetune_ablation.py ' + ' '.join(argv)
    setup = dict(seed=a.seed, user_frac=a.user_frac, quick_items=a.quick_items, ft_user_titles=a.ft_user_titles, flm_epochs=a.epochs, joint_epochs=a.joint_epochs, k=a.k, ft_epochs=a.ft_epochs,
                 ft_frac=a.ft_frac, ft_valid_frac=a.ft_valid_frac, rank_users=a.rank_users, candidates=a.candidates,
                 ranker_pairs=a.ranker_pairs, ranker_lr=a.ranker_lr, threads=a.threads or torch.get_num_threads())
    print(f"setup: {setup}")
    print(f"reduced to fit the time budget: fine-tune-first sees {a.ft_frac:.0%} of each split's training ratings for "
          f"{a.ft_epochs} epoch, user texts with {a.ft_user_titles} favourite titles (valid: {a.ft_valid_frac:.0%} of the test side, reporting only); the PromptRanker trains one "
          f"epoch on {a.ranker_pairs:,} sampled u1.base ratings (+ random negatives) and re-ranks for {a.rank_users} sampled test users"
          + (f"; --quick: {a.user_frac:.0%} of users x their {a.quick_items} most-rated items, {a.epochs} FLM epoch(s), {a.joint_epochs} joint epoch(s)" if a.quick else ''), flush=True)
    res = dict(command=cmd, setup=setup, recipe=FLM_RECIPE, configs={})
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in a.configs:
            fn = os.path.join(tmp, f'{cfg}.json')
            t = time.perf_counter()
            p = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, '--child', cfg, '--result', fn])
            wall = time.perf_counter() - t
            if p.returncode != 0 or not os.path.exists(fn):
                print(f"{cfg}: FAILED (exit {p.returncode}) after {wall:.0f}s", flush=True)
                res['configs'][cfg] = dict(config=cfg, failed=p.returncode, wall_seconds=wall); continue
            r = json.load(open(fn)); r['wall_seconds'] = wall
            res['configs'][cfg] = r
            print(f"{cfg}: done in {wall:.0f}s (peak RSS {r['peak_rss_mib']:.0f} MiB)", flush=True)
            if a.out: _write(a.out, dict(res, partial=True))   # partial results survive an interrupted run
    res['children_peak_rss_mib'] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rows = [r for c, r in res['configs'].items() if c != 'ranker' and 'failed' not in r]
    if rows:
        df = table(rows)
        res['table'] = df.round(4).reset_index().to_dict('records')
        print('\n' + md_table(df, {'warm RMSE (u1)': '.4f', 'cold-item RMSE': '.4f', 'LM s/epoch (u1)': '.1f', 'LM params': ',.0f',
                                    'peak RSS MiB': ',.0f', 'wall s': '.0f'}))
        ft = {r['config']: r['warm'].get('ft_ratings') for r in rows if 'ft_ratings' in r['warm']}
        if ft: print(f"\nfine-tune-first trained the LM on {next(iter(ft.values())):,} u1.base ratings ({a.ft_frac:.0%}), {a.ft_epochs} epoch; "
                     f"the FLM epochs ({a.epochs}) then ran on all training ratings. Joint: {a.epochs} epochs LM frozen + {a.joint_epochs} LM training.")
    rk = res['configs'].get('ranker')
    if rk and 'failed' not in rk:
        print(f"\nRe-ranking on u1, {rk['n_users']} sampled test users (seed {a.seed}); the FLM's top-{rk['candidates']} re-ranked by a PromptRanker "
              f"trained for 1 epoch on {rk['ranker_train_prompts']:,} prompts ({rk['ranker_train_seconds']:.0f}s; re-ranking took {rk['rerank_seconds']:.0f}s):")
        rt = pd.DataFrame({'relevant = any test rating': [f"{rk['flm_ndcg_all']:.4f}", f"{rk['reranked_ndcg_all']:.4f}", str(rk['n_users_all'])],
                           'relevant = test rating >= 4': [f"{rk['flm_ndcg_liked']:.4f}", f"{rk['reranked_ndcg_liked']:.4f}", str(rk['n_users_liked'])]},
                          index=pd.Index(['NDCG@10 frozen FLM', f"NDCG@10 FLM top-{rk['candidates']} re-ranked", 'users'], name='u1 sample'))
        print(md_table(rt, {}))
        print(f"(frozen FLM NDCG@10 on all {rk['n_test_users']} test users, by `evaluate`: {rk['flm_ndcg_allusers_all']:.4f} any rating, "
              f"{rk['flm_ndcg_allusers_liked']:.4f} rating >= 4; on the sample by `evaluate`: {rk['flm_ndcg_eval_all']:.4f} / {rk['flm_ndcg_eval_liked']:.4f})")
    res['wall_seconds'] = time.perf_counter() - t0
    print(f"\ntotal wall time {res['wall_seconds']:.0f}s")
    if a.out: _write(a.out, res)
    return res

def _write(fn, res):
    "JSON, written atomically (a reader never sees half a file)."
    from fine_tuning_flm.core import atomic_write
    with atomic_write(fn, 'w') as fh: json.dump(res, fh, indent=1, default=float)

if __name__ == '__main__': main()
