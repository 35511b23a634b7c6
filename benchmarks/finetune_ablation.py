"""Fine-tuning the language model through the ranking objective: frozen vs top_k vs LoRA vs full, 3 seeds.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.finetune_ablation --out benchmarks/results/finetune_ablation.json   # ~50 min on 2 cores
    python -m benchmarks.finetune_ablation --quick                       # CI-size smoke test (~4 min)
    python -m benchmarks.finetune_ablation --parts memory --device cuda  # one part, on a GPU (see --device)

Every run is `train_flm(..., objective='rank')` (RANK_RECIPE: full-catalogue softmax, pooled history) in its own
subprocess (`python -m benchmarks.finetune_ablation --child ...`), so its peak RSS (VmHWM) is its own. The configs:
  - frozen: `text='frozen'`, the pretrained MiniLM's vectors (the LM never trains);
  - frozen-2stage: the control. `text='top_k'` with the LM's learning rate at 0: the same two stages, the same joint
    steps (in-batch softmax, logQ-corrected), the same dropout, but the LM's weights stay. What the fine-tuned rows gain
    over it, the LM's training earned; what they gain over `frozen` may be the extra steps;
  - top_k / lora / full: `train_flm(text=mode, objective='rank')`: RANK_RECIPE's epochs with the LM frozen (its vectors
    cached; this stage is the `frozen` run of the same seed, loaded, so every joint row is paired with its frozen row and
    differs from it by the joint stage alone), then `--joint-epochs` in which the ranking loss (softmax over in-batch negatives, logQ-corrected) reaches
    into the LM (top 2 layers; LoRA r=8 on query/key/value; every weight), at `LM_LR[mode]`, on a random sample of
    `--joint-rows` training rows per epoch, batches of `--joint-bs`, at most `--max-items` distinct items per step.
Parts:
  - cold: ml-latest-small, `split('cold_items', pct=0.2, seed=0)`: candidates are the cold items only, relevant = test
    ratings >= 4; mean per-user ROC AUC and NDCG@10 among the cold items (`benchmarks.common.cold_metrics`, as
    `benchmarks.ranking`'s cold part); `--seeds` seeds (training seeds; the split is fixed). Item texts carry the
    tags of training (user, item) pairs only (`split` rebuilds them, #21): a cold item's text has none;
  - cold-valid: the same, one level down: the cold part's training side split again (`split('cold_items', pct=0.2,
    seed=1)`), `--valid-seeds` seeds. `targets()` chooses the fine-tuning mode here, by NDCG@10: the test items choose nothing;
  - warm: ml-100k, Microsoft Recommenders' protocol (`split('recommenders', ratio=0.75, by='item', seed=42)`, every test
    rating relevant, training items removed, top-10 over all items): NDCG@10; `--warm-seeds` seeds;
  - memory: a synthetic catalogue of `--mem-items` items whose texts are ~256-token descriptions, `--mem-ratings`
    ratings, `TextEncoder(max_length=256)`: each mode trains `--mem-rows` joint rows; peak RSS per mode;
  - ranker: the PromptRanker (LoRA cross-encoder) trained on `--ranker-pairs` training interactions plus as many hard
    negatives from the frozen FLM's top-50 (unrated items only), then re-ranking that retriever's top-50 for
    `--rank-users` sampled test users of the warm split: NDCG@10 before and after, on the same users.
Nothing is tuned here: the settings are the library's defaults (RANK_RECIPE, LM_LR); the one choice, the best mode of the
targets, is made on cold-valid, and no test fold chooses anything.
Results are written (atomically) after every run, so an interrupted run keeps what it finished.
"""
import argparse, json, os, subprocess, sys, tempfile, time
import numpy as np, pandas as pd, torch

from benchmarks.common import cold_metrics as _cold_metrics, movielens, ndcg10, peak_rss_mib, tag_policy
from benchmarks.provenance import ROOT, Run

MODES = ('top_k', 'lora', 'full')
CONFIGS = ('frozen', 'frozen-2stage') + MODES
PARTS = ('cold', 'cold-valid', 'warm', 'memory', 'ranker')
COLD_VALID = "the cold split's training side .split('cold_items', pct=0.2, seed=1)"

def lm_params(mode):
    "Weights of the LM that train in `mode` (0 when frozen)."
    from fine_tuning_flm.embeddings import TextEncoder
    from fine_tuning_flm.towers import trainable
    if mode in ('frozen', 'frozen-2stage'): return 0
    return sum(p.numel() for p in trainable(TextEncoder(), mode).parameters() if p.requires_grad)

def stage_clock():
    from fastai.callback.core import Callback
    class StageClock(Callback):
        "Wall time of every `fit` (train_flm's joint path fits twice: LM frozen, then LM training)."
        order = 90
        def __init__(self): self.fits = []
        def before_fit(self): self.t0 = time.perf_counter()
        def after_fit(self): self.fits.append(dict(epochs=self.n_epoch, steps=self.n_epoch * len(self.dls.train), seconds=time.perf_counter() - self.t0))
    return StageClock()

def _shrink(d, n_users, n_items, seed=0):
    "--quick: a random `n_users` users and their `n_items` most-rated items, re-coded."
    from fine_tuning_flm.data import Interactions
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(d.n_users, min(n_users, d.n_users), replace=False))
    r = d.ratings[np.isin(d.ratings.user.to_numpy(), users)]
    items = np.sort(r.item.value_counts().index[:n_items].to_numpy())
    r = r[np.isin(r.item.to_numpy(), items)].copy()
    r['user'], r['item'] = np.searchsorted(users, r.user.to_numpy()), np.searchsorted(items, r.item.to_numpy())
    out = Interactions(r.reset_index(drop=True), d.items.iloc[items].reset_index(drop=True), d.users.iloc[users].reset_index(drop=True),
                       d.scale, f'{d.name} ({len(users)} users x {len(items)} items)', d.path)
    if getattr(d, 'tags', None) is not None:             # the tags of the kept pairs, re-coded, so that split() still builds texts from them
        t = d.tags[np.isin(d.tags.user.to_numpy(), users) & np.isin(d.tags.item.to_numpy(), items)].copy()
        t['user'], t['item'] = np.searchsorted(users, t.user.to_numpy()), np.searchsorted(items, t.item.to_numpy())
        out.template, out.tags = d.template, t.reset_index(drop=True)
    return out

WORDS = ('a detective a city a family secret war love journey ship island storm memory betrayal village king soldier '
         'river night letter train doctor island music school prison desert brother sister mountain winter summer dream '
         'escape crime courage friendship revenge future machine forest ocean empire rebellion hunter stranger fortune').split()

def memory_data(a):
    "A synthetic catalogue shaped like the issue's: `mem_items` items with ~256-token plot descriptions, `mem_ratings` ratings."
    from fine_tuning_flm.data import Interactions, synthetic_ratings
    ratings, movies = synthetic_ratings(n_users=max(a.mem_ratings // 60, 50), n_items=a.mem_items, n_ratings=a.mem_ratings, seed=0)
    rng = np.random.default_rng(0)
    movies['plot'] = [' '.join(rng.choice(WORDS, 230)) + '.' for _ in range(len(movies))]
    ratings.to_csv(os.path.join(a.tmp, 'r.csv'), index=False); movies.to_csv(os.path.join(a.tmp, 'm.csv'), index=False)
    return Interactions.from_csv(os.path.join(a.tmp, 'r.csv'), items=os.path.join(a.tmp, 'm.csv'), user_col='userId', item_col='movieId',
                                 text_cols=['title', 'genres', 'plot'])

def data_for(part, a):
    if part in ('cold', 'cold-valid'):
        d = movielens('ml-latest-small')
        if a.quick: d = _shrink(d, 120, 400)
        trn, tst = d.split('cold_items', pct=0.2, seed=0)
        return trn.split('cold_items', pct=0.2, seed=1) if part == 'cold-valid' else (trn, tst)
    if part in ('warm', 'ranker'):
        d = movielens('ml-100k')
        if a.quick: d = _shrink(d, 150, 300)
        return d.split('recommenders', ratio=0.75, by='item', seed=42)
    return memory_data(a), None

def cold_metrics(model, test, train):
    "`benchmarks.common.cold_metrics` (the same candidates and relevance as `benchmarks.ranking`'s cold part), under this script's names."
    v = _cold_metrics(model, test, train)
    return dict(auc=v['AUC'], ndcg10=v['NDCG@10'], n_users=v['n_users'], n_cold_items=v['n_cold_items'])

def warm_metrics(model, test, train):
    return dict(ndcg10=ndcg10(model, test, train), n_users=int(test.ratings.user.nunique()))

def load_stage1(path):
    "A callback that starts the first fit from the frozen run's weights (the LM's own entries are the joint model's)."
    from fastai.callback.core import Callback
    sd = {k: v for k, v in torch.load(path).items() if not k.startswith('i_text.')}
    class LoadStage1(Callback):
        order = -20
        def before_fit(self):
            missing, unexpected = self.learn.model.load_state_dict(sd, strict=False)
            bad = [k for k in missing if not k.startswith('i_text.')] + list(unexpected)
            if bad: raise RuntimeError(f"stage-1 weights do not fit: {bad[:5]}")
    return LoadStage1()

def train(cfg, trn, a, seed, part, encoder=None):
    "One `train_flm` run of `cfg`; returns the learner and its timings. Joint configs start from the frozen run's weights (`a.stage1`)."
    from fine_tuning_flm.learner import train_flm
    clock = stage_clock()
    kw = dict(objective='rank', seed=seed, progress=False, cbs=[clock], device=a.device)
    if a.epochs is not None: kw['epochs'] = a.epochs
    if part == 'memory': kw['epochs'] = 0                      # memory: the joint stage is what is measured
    elif cfg != 'frozen':                                      # stage 1 is the frozen run itself: load it, train stage 2 only
        kw['epochs'] = 0; kw['cbs'] = [clock, load_stage1(a.stage1)]
    if encoder is not None: kw['encoder'] = encoder
    if a.device == 'cuda': kw['mixed_precision'] = True
    t = time.perf_counter()
    if cfg == 'frozen':
        learn = train_flm(trn, None, text='frozen', **kw)
        if a.stage1: torch.save({k: v.cpu() for k, v in learn.model.state_dict().items()}, a.stage1)
    else:
        mode = 'top_k' if cfg == 'frozen-2stage' else cfg
        rows = a.mem_rows if part == 'memory' else a.joint_rows
        learn = train_flm(trn, None, text=mode, joint_epochs=a.joint_epochs, joint_rows=rows, joint_bs=a.joint_bs, max_items=a.max_items,
                          lm_lr=0.0 if cfg == 'frozen-2stage' else None, **kw)
    out = dict(train_seconds=time.perf_counter() - t, fits=clock.fits)
    if cfg != 'frozen' and clock.fits:
        j = clock.fits[-1]
        out.update(lm_s_per_epoch=j['seconds'] / max(j['epochs'], 1), joint_steps=j['steps'], joint_rows=min(rows or len(trn), len(trn)),
                   lm_s_per_full_epoch=j['seconds'] / max(j['epochs'], 1) * len(trn) / min(rows or len(trn), len(trn)))
    return learn, out

def run_one(part, cfg, seed, a):
    "One (part, config, seed) in this process: a dict of numbers."
    from fine_tuning_flm.core import set_seed
    from fine_tuning_flm.embeddings import TextEncoder
    torch.set_num_threads(a.threads) if a.threads else None
    t0 = time.perf_counter()
    set_seed(seed)
    trn, tst = data_for(part, a)
    enc = TextEncoder(max_length=256, device=a.device) if part == 'memory' else TextEncoder(device=a.device)
    learn, r = train(cfg, trn, a, seed, part, enc)
    m = learn.model
    if part in ('cold', 'cold-valid'): r.update(cold_metrics(m, tst, trn))
    elif part == 'warm': r.update(warm_metrics(m, tst, trn))
    r.update(part=part, config=cfg, seed=seed, lm_params=lm_params(cfg), n_train=len(trn), n_items=trn.n_items,
             seconds=time.perf_counter() - t0, peak_rss_mib=peak_rss_mib())
    if a.device == 'cuda': r['peak_cuda_mib'] = torch.cuda.max_memory_allocated() / 2**20
    return r

def run_ranker(seed, a):
    "The PromptRanker with hard negatives from the frozen FLM's top-50, re-ranking that FLM's top-50 for sampled test users."
    from fine_tuning_flm.core import set_seed
    from fine_tuning_flm.data import user_texts
    from fine_tuning_flm.experimental import prompt_ranker_learner
    from fine_tuning_flm.evaluation import top_items
    from fine_tuning_flm.metrics import ndcg_at_k
    t0 = time.perf_counter()
    set_seed(seed)
    trn, tst = data_for('ranker', a)
    if a.stage1 and not os.path.exists(a.stage1): a.stage1 = None
    if a.stage1:                                             # the warm part's frozen run of this seed: the same split and recipe
        from fine_tuning_flm.learner import train_flm
        learn = train_flm(trn, None, objective='rank', text='frozen', epochs=0, progress=False, seed=seed, device=a.device)   # no fit: the weights are loaded
        learn.model.load_state_dict(torch.load(a.stage1))
        r = dict(retriever='the warm part\'s frozen run, seed 0')
    else: learn, r = train('frozen', trn, a, seed, 'ranker')
    model = learn.model
    rng = np.random.default_rng(seed)
    # hard negatives: for a sample of training users, unrated items of the retriever's top-50
    tr_users = np.sort(rng.choice(trn.n_users, min(trn.n_users, max(a.ranker_pairs // 20, 1)), replace=False))
    top_tr = top_items(model, tr_users, train=trn, k=a.candidates)
    hu, hi = np.repeat(tr_users, top_tr.shape[1]), top_tr.ravel()
    ok = hi >= 0
    pick = rng.choice(int(ok.sum()), min(a.ranker_pairs, int(ok.sum())), replace=False)
    hard = (hu[ok][pick], hi[ok][pick])
    set_seed(seed)
    pl = prompt_ranker_learner(trn, tst, max_pairs=a.ranker_pairs, neg_ratio=0.0, threshold=0.0, hard=hard, bs=32, seed=seed,
                               device=a.device)
    t = time.perf_counter()
    with pl.no_bar(), pl.no_logging(): pl.fit_one_cycle(a.ranker_epochs, a.ranker_lr)
    r.update(ranker_train_seconds=time.perf_counter() - t, ranker_train_prompts=len(pl.dls.train_ds), ranker_hard_negatives=len(hard[0]),
             ranker_valid_bce=float(pl.recorder.values[-1][1]))
    ranker = pl.model
    test_users = np.unique(tst.ratings.user.to_numpy())
    users = np.sort(rng.choice(test_users, min(a.rank_users, len(test_users)), replace=False))
    top = top_items(model, users, train=trn, k=a.candidates)
    utexts, itexts = user_texts(trn, n_titles=5), trn.items.text.tolist()
    t = time.perf_counter()
    reranked = np.stack([ranker.rerank(utexts[u], c[c >= 0], itexts)[:10] for u, c in zip(users, top)])
    r['rerank_seconds'] = time.perf_counter() - t
    rel = {u: set(g.item) for u, g in tst.ratings.groupby('user')}
    n_rel = np.array([len(rel[u]) for u in users])
    for name, lists in (('retriever', top[:, :10]), ('reranked', reranked)):
        hits = np.array([[i in rel[u] for i in row] for u, row in zip(users, lists)])
        r[f'{name}_ndcg10'] = float(ndcg_at_k(hits, n_rel, 10).mean())
    r.update(part='ranker', config='ranker', seed=seed, n_users=len(users), candidates=a.candidates, seconds=time.perf_counter() - t0,
             peak_rss_mib=peak_rss_mib())
    return r

def parse(argv):
    p = argparse.ArgumentParser(prog='python -m benchmarks.finetune_ablation', description=__doc__.splitlines()[0])
    p.add_argument('--parts', nargs='+', default=list(PARTS), choices=PARTS)
    p.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=CONFIGS)
    p.add_argument('--seeds', type=int, default=3, help='cold part: training seeds 0..n-1')
    p.add_argument('--valid-seeds', type=int, default=1, help='cold-valid part: seeds (each costs about 0.8 of a cold seed)')
    p.add_argument('--warm-seeds', type=int, default=1, help='warm part: seeds (each costs as much as a cold seed)')
    p.add_argument('--epochs', type=int, default=None, help="epochs with the LM frozen (default RANK_RECIPE's)")
    p.add_argument('--joint-epochs', type=int, default=1)
    p.add_argument('--joint-rows', type=int, default=None, help='training rows per joint epoch (default 3072; --quick 512; cuda: all)')
    p.add_argument('--joint-bs', type=int, default=256)
    p.add_argument('--max-items', type=int, default=192, help='distinct items per joint step (CapItems)')
    p.add_argument('--mem-items', type=int, default=3000); p.add_argument('--mem-ratings', type=int, default=60000)
    p.add_argument('--mem-rows', type=int, default=None, help='memory part: joint rows per mode (default 256, one step; --quick 64)')
    p.add_argument('--ranker-pairs', type=int, default=None, help='ranker: training interactions (plus as many hard negatives); default 1500')
    p.add_argument('--ranker-epochs', type=int, default=1); p.add_argument('--ranker-lr', type=float, default=1e-3)
    p.add_argument('--rank-users', type=int, default=None, help='ranker: test users re-ranked (default 60)')
    p.add_argument('--candidates', type=int, default=50)
    p.add_argument('--device', default='cpu', help="'cuda': the GPU path (mixed precision, all joint rows by default); finishes in minutes on a GPU")
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--quick', action='store_true', help='CI-size: small samples, 2 epochs, 1 seed, small joint and memory runs')
    p.add_argument('--out', default=None)
    p.add_argument('--child', nargs=3, default=None, help=argparse.SUPPRESS)
    p.add_argument('--result', default=None, help=argparse.SUPPRESS)
    p.add_argument('--stage1', default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    q, gpu = a.quick, a.device == 'cuda'
    if q:
        a.seeds, a.warm_seeds, a.valid_seeds = min(a.seeds, 1), min(a.warm_seeds, 1), min(a.valid_seeds, 1)
        if a.epochs is None: a.epochs = 2
        a.mem_items, a.mem_ratings = min(a.mem_items, 200), min(a.mem_ratings, 3000)
    if a.joint_rows is None: a.joint_rows = 512 if q else (None if gpu else 3072)
    if a.mem_rows is None: a.mem_rows = 64 if q else 256
    if a.ranker_pairs is None: a.ranker_pairs = 60 if q else 1500
    if a.rank_users is None: a.rank_users = 5 if q else 60
    return a

def runs(a):
    "(part, config, seed) in the order they run: the cold part first (the target), the costliest configs last."
    out = []
    for part in a.parts:
        if part == 'ranker': out.append(('ranker', 'ranker', 0)); continue
        n = {'cold': a.seeds, 'cold-valid': a.valid_seeds, 'warm': a.warm_seeds, 'memory': 1}[part]
        cfgs = [c for c in a.configs if not (part in ('memory', 'cold-valid') and c == 'frozen-2stage')]   # memory: the control is top_k's; cold-valid chooses a mode
        if part != 'memory': cfgs = ['frozen'] + [c for c in cfgs if c != 'frozen']     # the joint runs start from the frozen run
        out += [(part, c, s) for s in range(n) for c in cfgs]
    return out

def summary(rows):
    "Mean ± std over seeds per (part, config)."
    df = pd.DataFrame([r for r in rows if 'failed' not in r and r['part'] != 'ranker'])
    if df.empty: return []
    out = []
    for (part, cfg), g in df.groupby(['part', 'config'], sort=False):
        rec = dict(part=part, config=cfg, seeds=len(g), lm_params=int(g.lm_params.iloc[0]), peak_rss_mib=float(g.peak_rss_mib.max()))
        for c in ('ndcg10', 'auc', 'lm_s_per_epoch', 'lm_s_per_full_epoch', 'train_seconds'):
            if c in g and g[c].notna().any():
                rec[c] = float(g[c].mean()); rec[c + '_std'] = float(g[c].std(ddof=1)) if len(g) > 1 else 0.0
        out.append(rec)
    return out

def md(summ):
    lines = ['| part | config | seeds | NDCG@10 | AUC | LM s/joint epoch | LM params | peak RSS MiB |', '|---|---|---:|---:|---:|---:|---:|---:|']
    f = lambda r, c, p: f"{r[c]:.{p}f} ± {r[c + '_std']:.{p}f}" if c in r else '–'
    for r in summ:
        lines.append(f"| {r['part']} | {r['config']} | {r['seeds']} | {f(r, 'ndcg10', 4)} | {f(r, 'auc', 4)} | {f(r, 'lm_s_per_epoch', 0)} | "
                     f"{r['lm_params']:,} | {r['peak_rss_mib']:,.0f} |")
    return '\n'.join(lines)

def targets(summ):
    """The issue's targets, from the summary. The best fine-tuned mode is the one with the highest NDCG@10 on cold-valid (a
    cold-item split of the training side); its cold gain, warm loss and memory are then read on the test side."""
    by = {(r['part'], r['config']): r for r in summ}
    out = {}
    fz = by.get(('cold', 'frozen'))
    valid = {m: by[('cold-valid', m)] for m in MODES if ('cold-valid', m) in by}
    if fz and not valid:
        out['cold'] = dict(best=None, note='no cold-valid run of a fine-tuned mode: no mode chosen (the test side chooses nothing)')
    if fz and valid:
        choice = max(valid, key=lambda m: valid[m]['ndcg10'])
        best = by.get(('cold', choice))
        out['cold'] = dict(best=choice, chosen_on=COLD_VALID, validation_ndcg10={m: v['ndcg10'] for m, v in valid.items()},
                           validation_frozen_ndcg10=by.get(('cold-valid', 'frozen'), {}).get('ndcg10'))
        if best:
            diff = best['ndcg10'] - fz['ndcg10']
            out['cold'].update(best_ndcg10=best['ndcg10'], frozen_ndcg10=fz['ndcg10'], rel_gain=diff / fz['ndcg10'], diff=diff,
                               two_std=2 * max(best['ndcg10_std'], fz['ndcg10_std']), met_10pct=diff / fz['ndcg10'] >= 0.10,
                               met_2std=diff > 2 * max(best['ndcg10_std'], fz['ndcg10_std']) and best['seeds'] > 1)
            ctl = by.get(('cold', 'frozen-2stage'))
            if ctl: out['cold'].update(control_ndcg10=ctl['ndcg10'], gain_over_control=best['ndcg10'] - ctl['ndcg10'])
    wf = by.get(('warm', 'frozen'))
    if wf and out.get('cold', {}).get('best') and ('warm', out['cold']['best']) in by:
        w = by[('warm', out['cold']['best'])]
        out['warm'] = dict(config=w['config'], ndcg10=w['ndcg10'], frozen_ndcg10=wf['ndcg10'], diff=w['ndcg10'] - wf['ndcg10'],
                           met=w['ndcg10'] - wf['ndcg10'] >= -0.005)
    mem = [r for r in summ if r['part'] == 'memory']
    if mem: out['memory'] = dict(peak_rss_mib={r['config']: r['peak_rss_mib'] for r in mem}, met=all(r['peak_rss_mib'] < 8192 for r in mem))
    return out

def main(argv=None):
    argv = [str(x) for x in (sys.argv[1:] if argv is None else argv)]
    a = parse(argv)
    if a.child:
        part, cfg, seed = a.child
        with tempfile.TemporaryDirectory() as tmp:
            a.tmp = tmp
            res = run_ranker(int(seed), a) if part == 'ranker' else run_one(part, cfg, int(seed), a)
        with open(a.result, 'w') as fh: json.dump(res, fh, default=float)
        return res
    from fine_tuning_flm.learner import RANK_RECIPE, LM_LR
    prov = Run(__spec__.name, argv, out=a.out)
    print(prov.banner(), flush=True)
    settings = {k: v for k, v in vars(a).items() if k not in ('child', 'result', 'out')}
    res = dict(command=prov.start['command'], settings=settings, recipe=RANK_RECIPE.asdict(), lm_lr=LM_LR, date=prov.start['date'],
               item_text_tags=tag_policy(movielens('ml-latest-small')) if {'cold', 'cold-valid'} & set(a.parts) else None, runs=[], summary=[], targets={})
    print(f"settings: {settings}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for part, cfg, seed in runs(a):
            fn = os.path.join(tmp, f'{part}-{cfg}-{seed}.json')
            st1 = os.path.join(tmp, f"{'warm' if part == 'ranker' else part}-stage1-{seed}.pt")
            if part not in ('memory', 'ranker') and cfg != 'frozen' and not os.path.exists(st1):
                print(f"[{part}] {cfg} seed {seed}: skipped, its frozen run failed", flush=True); continue
            t = time.perf_counter()
            p = subprocess.run([sys.executable, '-m', __spec__.name, *argv, '--child', part, cfg, str(seed), '--result', fn, '--stage1', st1], cwd=ROOT)
            wall = time.perf_counter() - t
            if p.returncode != 0 or not os.path.exists(fn):
                print(f"[{part}] {cfg} seed {seed}: FAILED (exit {p.returncode}) after {wall:.0f}s", flush=True)
                res['runs'].append(dict(part=part, config=cfg, seed=seed, failed=p.returncode, wall_seconds=wall))
            else:
                r = json.load(open(fn)); r['wall_seconds'] = wall
                res['runs'].append(r)
                show = ', '.join(f"{k} {r[k]:.4f}" for k in ('ndcg10', 'auc', 'retriever_ndcg10', 'reranked_ndcg10') if k in r)
                print(f"[{part}] {cfg} seed {seed}: {show} LM {r.get('lm_s_per_epoch', 0):.0f}s/joint epoch, peak RSS {r['peak_rss_mib']:,.0f} MiB, "
                      f"{wall:.0f}s", flush=True)
            res['summary'] = summary(res['runs']); res['targets'] = targets(res['summary'])
            if a.out: prov.write(dict(res, partial=True), a.out)          # what finished survives an interrupted run
    p = prov.record()
    res['wall_seconds'] = p['wall_seconds']
    print('\n' + md(res['summary']))
    print('\ntargets:', json.dumps(res['targets'], indent=1, default=float))
    rk = [r for r in res['runs'] if r['part'] == 'ranker' and 'failed' not in r]
    for r in rk: print(f"\nPromptRanker, {r['n_users']} test users: retriever NDCG@10 {r['retriever_ndcg10']:.4f}, re-ranked {r['reranked_ndcg10']:.4f} "
                       f"({r['ranker_train_prompts']:,} training prompts, {r['ranker_hard_negatives']:,} hard negatives, {r['ranker_train_seconds']:.0f}s)")
    print(f"\ntotal wall time {res['wall_seconds']:.0f}s")
    return prov.write(res, a.out, p)

if __name__ == '__main__': main()
