#!/usr/bin/env python
"""How the cost grows with the data: load, encode, one training epoch, top-10 for every user, at 1 M, 5 M and 25 M
synthetic ratings shaped like ml-25m, with implicit ALS and cornac BPR on the same data in the same run.

    python benchmarks/scale.py --out benchmarks/results/scale.json     # 1 M, 5 M, 25 M (~50 min on 2 cores, ~8 GB free memory)
    python benchmarks/scale.py --sizes 1e6 5e6                         # some of the sizes
    python benchmarks/scale.py --quick                                 # CI size (~30 s): 100 k ratings of a 2,000-film catalogue, in-process

Data: `fine_tuning_flm.data.synthetic_ratings(n)` (ml-25m's 62,423 films at every size, its 162,541 users scaled by
n / 25 M, >= 20 ratings per user, a long tail of popularity, a planted rank-8 taste), written as ml-25m's files
(ratings.csv, movies.csv, empty tags/links/genome files) and read back by `load_movielens('ml-25m', path=...)`, the
reader a user of ml-25m runs (pyarrow's CSV engine when pyarrow is installed). ml-25m itself is not downloaded here.

Stages, each in a fresh child process so that its peak RSS (`ru_maxrss`) is its own (`--quick`: one process):
- load: `load_movielens('ml-25m', path=folder)` seconds and peak RSS.
- encode: the catalogue's texts through the bundled MiniLM (`TextEncoder.encode(..., cache=True)`, fp32, batches sorted
  by length), items/s; the vectors are cached and read back by the training stages (the catalogue is the same at every size).
- rate: one epoch of the rating objective as `train_flm(data, None, objective='rate')` trains it (its recipe: 32 factors,
  bs 4096, frozen MiniLM item text, fastai's `fit_one_cycle`), the epoch only (building the learner is `setup_seconds`),
  ratings/s; the peak RSS covers loading and training. The model is then saved (`Recommender.save`).
- serve: `Recommender.load` of that model, then `recommend_batch(k=10)` for every user over the whole catalogue
  (user·item scores per ms); peak RSS of the serving process.
- rank: one epoch of the ranking objective (`objective='rank'`: softmax) with `negatives='sampled'`, `n_neg=4` uniform
  negatives per positive, bs 4096 and no history pooling (see `RANK_SETTINGS` and the note printed with it: the
  recipe's full-catalogue softmax costs 62 k item scores per rating, and history pooling costs sum(n_u^2) lookups).
- als: implicit's ALS, one iteration (factors=64, regularization=0.01, 2 threads) on the binary user x item matrix;
  the fit call only.
- bpr: cornac's BPR, one epoch (k=64, learning_rate=0.01, lambda_reg=0.01, 2 threads, unseeded: cornac runs one thread when seeded)
  on a `cornac.data.Dataset` built from the same codes; the fit call only.
Peers that cannot be imported are recorded as skipped (run the script from /work/benchvenv to have them).

Reported per size and stage: seconds, rate, peak RSS; per stage the growth exponent (least-squares slope of log time
on log ratings over the sizes run); and the targets of issue #15 at the largest size, each met or missed by its number.
Every number is written with `--out` as JSON (atomically), with the command line, versions and load averages.
"""
import argparse, datetime, importlib.metadata, json, os, platform, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np, pandas as pd

SEED = 42
RANK_SETTINGS = dict(objective='rank', negatives='sampled', n_neg=4, bs=4096, history=False)
TARGETS = {  # issue #15, at 25 M ratings on the 2-core machine: (stage, what, limit)
    'rate epoch < 5 min': ('rate', 'seconds', 300), 'rate peak RSS < 6 GB': ('rate', 'peak_rss_gb', 6),
    'rank epoch < 10 min': ('rank', 'seconds', 600),
    'top-10 for all users < 60 s': ('serve', 'seconds', 60), 'serving peak RSS < 8 GB': ('serve', 'peak_rss_gb', 8)}
STAGES = ('load', 'encode', 'rate', 'serve', 'rank', 'als', 'bpr')

def rss_gb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20      # KiB on Linux

# ---------------------------------------------------------------------------------------------------- the data
def write_data(folder:Path, n:int, n_items:int):
    "Synthetic ratings in ml-25m's layout under `folder` (ratings.csv sorted by user and film, as ml-25m's)."
    from fine_tuning_flm.data import synthetic_ratings
    folder.mkdir(parents=True, exist_ok=True)
    r, m = synthetic_ratings(n, n_items=n_items, seed=0)
    try:
        import pyarrow as pa, pyarrow.csv as pc
        pc.write_csv(pa.Table.from_pandas(r, preserve_index=False), folder/'ratings.csv')
    except ImportError: r.to_csv(folder/'ratings.csv', index=False)
    m.to_csv(folder/'movies.csv', index=False)
    for fn, cols in (('tags.csv', 'userId,movieId,tag,timestamp'), ('links.csv', 'movieId,imdbId,tmdbId'),
                     ('genome-scores.csv', 'movieId,tagId,relevance'), ('genome-tags.csv', 'tagId,tag')):
        (folder/fn).write_text(cols + '\n')
    return dict(n_ratings=len(r), n_users=int(r.userId.nunique()), n_items=len(m), rated_items=int(r.movieId.nunique()))

def load(folder):
    from fine_tuning_flm.data import load_movielens
    return load_movielens('ml-25m', path=folder)

# ---------------------------------------------------------------------------------------------------- stages
def stage_load(folder, a):
    t = time.perf_counter(); d = load(folder); s = time.perf_counter() - t
    return dict(seconds=s, rate=len(d) / s, unit='ratings/s', peak_rss_gb=rss_gb())

def stage_encode(folder, a):
    from fine_tuning_flm.embeddings import TextEncoder
    texts = load(folder).items.text.tolist()
    enc = TextEncoder()
    enc.cache_path(texts).unlink(missing_ok=True)                          # measure the encoding, not a read of the cache
    t = time.perf_counter(); v = enc.encode(texts, cache=True, progress=False); s = time.perf_counter() - t
    return dict(seconds=s, rate=len(texts) / s, unit='items/s', n_texts=len(texts), dim=int(v.shape[1]), peak_rss_gb=rss_gb(),
                note='fp32 MiniLM on the CPU, batches of 32 sorted by length; cached for the training stages')

def _fit_one_epoch(d, objective, **kw):
    "A learner as `train_flm` builds it (the objective's recipe, overridden by `kw`), then one epoch of `fit_one_cycle`: (learner, setup seconds, epoch seconds)."
    from fine_tuning_flm.learner import flm_learner, recipe
    from fine_tuning_flm.core import set_seed
    r = {**recipe(objective), **kw}
    lr = r.pop('lr'); [r.pop(k) for k in ('epochs', 'joint_epochs', 'joint_lr', 'joint_bs')]
    set_seed(SEED)
    t = time.perf_counter(); learn = flm_learner(d, None, seed=SEED, **r); setup = time.perf_counter() - t   # text vectors from the cache, tensors
    t = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, lr)
    return learn, setup, time.perf_counter() - t

def stage_rate(folder, a):
    from fine_tuning_flm.recommend import Recommender
    d = load(folder)
    learn, setup, s = _fit_one_epoch(d, 'rate')
    loss = float(learn.recorder.losses[-1]) if learn.recorder.losses else None
    t = time.perf_counter(); Recommender.from_learner(learn, d).save(folder/'model'); ts = time.perf_counter() - t
    return dict(seconds=s, rate=len(d) / s, unit='ratings/s', peak_rss_gb=rss_gb(), setup_seconds=setup, save_seconds=ts, last_batch_loss=loss,
                settings='train_flm objective=rate, its recipe (32 factors, bs 4096, frozen MiniLM item text), 1 epoch, no validation side')

def stage_serve(folder, a):
    from fine_tuning_flm.recommend import Recommender
    t = time.perf_counter(); rec = Recommender.load(folder/'model'); tl = time.perf_counter() - t
    t = time.perf_counter(); top = rec.recommend_batch(k=10, batch_size=a.serve_batch); s = time.perf_counter() - t
    cells = rec.model.n_users * rec.model.n_items
    return dict(seconds=s, rate=cells / s / 1e3, unit='user-item scores per ms', load_seconds=tl, rows=len(top),
                n_users=rec.model.n_users, n_items=rec.model.n_items, batch_size=a.serve_batch, peak_rss_gb=rss_gb())

def stage_rank(folder, a):
    d = load(folder)
    learn, setup, s = _fit_one_epoch(d, **RANK_SETTINGS)
    return dict(seconds=s, rate=len(d) / s, unit='ratings/s', peak_rss_gb=rss_gb(), setup_seconds=setup, settings=RANK_SETTINGS)

def _binary(d):
    import scipy.sparse as sp
    r = d.ratings
    return sp.csr_matrix((np.ones(len(r), np.float32), (r.user.to_numpy(), r.item.to_numpy())), shape=(d.n_users, d.n_items))

def stage_als(folder, a):
    try: from implicit.cpu.als import AlternatingLeastSquares
    except ImportError as e: return dict(skipped=f'implicit not installed ({e})')
    X = _binary(load(folder))
    m = AlternatingLeastSquares(factors=64, regularization=0.01, iterations=1, num_threads=a.threads, random_state=SEED)
    t = time.perf_counter(); m.fit(X, show_progress=False); s = time.perf_counter() - t
    return dict(seconds=s, rate=X.nnz / s, unit='ratings/s', peak_rss_gb=rss_gb(), settings='factors=64, regularization=0.01, 1 iteration')

def stage_bpr(folder, a):
    try:
        import cornac
        from cornac.data import Dataset
    except ImportError as e: return dict(skipped=f'cornac not installed ({e})')
    d = load(folder); r = d.ratings
    ds = Dataset(d.n_users, d.n_items, {u: u for u in range(d.n_users)}, {i: i for i in range(d.n_items)},
                 (r.user.to_numpy(), r.item.to_numpy(), r.rating.to_numpy(np.float32)), seed=SEED)
    m = cornac.models.BPR(k=64, max_iter=1, learning_rate=0.01, lambda_reg=0.01, num_threads=a.threads, seed=None, verbose=False)
    t = time.perf_counter(); m.fit(ds); s = time.perf_counter() - t
    return dict(seconds=s, rate=len(r) / s, unit='ratings/s', peak_rss_gb=rss_gb(), settings='k=64, learning_rate=0.01, lambda_reg=0.01, 1 epoch')

RUN = {'load': stage_load, 'encode': stage_encode, 'rate': stage_rate, 'serve': stage_serve, 'rank': stage_rank, 'als': stage_als, 'bpr': stage_bpr}

def child(a):
    "One stage in this process: prints its result as the last line."
    import torch
    torch.set_num_threads(a.threads)
    out = RUN[a.stage](Path(a.folder), a)
    print('RESULT ' + json.dumps(out), flush=True)

def run_stage(stage, folder, a, log):
    "A stage in a child process (its own peak RSS), or in this one with --quick."
    if a.quick:
        import torch; torch.set_num_threads(a.threads)
        return RUN[stage](folder, a)
    cmd = [sys.executable, __file__, '--stage', stage, '--folder', str(folder), '--threads', str(a.threads), '--serve-batch', str(a.serve_batch)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'OMP_WAIT_POLICY': os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')})
    last = [l for l in p.stdout.splitlines() if l.startswith('RESULT ')]
    if p.returncode or not last:
        log(f'  {stage}: failed with status {p.returncode}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "no output"}')
        return dict(error=(p.stderr or p.stdout)[-2000:], status=p.returncode)
    return json.loads(last[-1][7:])

# ---------------------------------------------------------------------------------------------------- report
def exponent(ns, secs):
    "Least-squares slope of log(seconds) on log(ratings): 1 is linear growth."
    ok = [(n, s) for n, s in zip(ns, secs) if s and s > 0]
    return float(np.polyfit(np.log([n for n, _ in ok]), np.log([s for _, s in ok]), 1)[0]) if len(ok) >= 2 else None

def table(res) -> str:
    sizes = list(res['sizes'])
    lines = [f"{'stage':8} " + ''.join(f"{s:>34}" for s in sizes) + f"{'growth':>9}"]
    for st in STAGES:
        cells = []
        for s in sizes:
            r = res['sizes'][s]['stages'].get(st, {})
            if 'seconds' in r: cells.append(f"{r['seconds']:8.1f}s {r['rate']:>12,.0f} {r['unit'][:9]:9} {r.get('peak_rss_gb', 0):4.1f}GB")
            else: cells.append(f"{('skipped' if 'skipped' in r else 'failed' if 'error' in r else '-'):>34}")
        g = res['growth_exponent'].get(st)
        lines.append(f"{st:8} " + ''.join(f"{c:>34}" for c in cells) + (f"{g:9.2f}" if g is not None else f"{'':9}"))
    return '\n'.join(lines)

def versions():
    out = {'python': platform.python_version()}
    for p in ('fine_tuning_flm', 'torch', 'numpy', 'pandas', 'pyarrow', 'scipy', 'implicit', 'cornac', 'fastai'):
        try: out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            try: out[p] = __import__(p).__version__
            except Exception: out[p] = None                   # noqa: BLE001 -- provenance only
    return out

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--sizes', nargs='+', type=float, default=None, help='numbers of ratings (default 1e6 5e6 25e6; --quick: 1e5)')
    p.add_argument('--items', type=int, default=None, help="catalogue size (default ml-25m's 62,423; --quick: 2,000)")
    p.add_argument('--stages', nargs='+', default=list(STAGES), choices=STAGES)
    p.add_argument('--quick', action='store_true', help='CI size, every stage in this process')
    p.add_argument('--threads', type=int, default=2, help='threads for torch, implicit and cornac (default 2)')
    p.add_argument('--serve-batch', type=int, default=1024, help='users per matrix product in recommend_batch (default 1024)')
    p.add_argument('--work', default=None, help='folder for the data and models (default: a temporary folder, removed at the end)')
    p.add_argument('--out', default=None, help='write every number here as JSON')
    p.add_argument('--stage', help=argparse.SUPPRESS); p.add_argument('--folder', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.stage: return child(a)
    sizes = [int(s) for s in (a.sizes or ([1e5] if a.quick else [1e6, 5e6, 25e6]))]
    n_items = a.items or (2_000 if a.quick else 62_423)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='flm-scale-'))
    os.environ.setdefault('FLM_CACHE', str(work/'cache'))                  # a fresh embedding cache: the encode stage really encodes
    log = lambda *s: print(*s, flush=True)
    run = dict(command='python benchmarks/scale.py ' + ' '.join(argv), date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
               load_average_start=os.getloadavg(), host=dict(cpus=os.cpu_count(), machine=platform.machine(),
               memory_gb=round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30, 1)), versions=versions(),
               quick=a.quick, threads=a.threads)
    log(f"{run['command']}\n{run['date']}  load average {' '.join(f'{x:.2f}' for x in run['load_average_start'])}  "
        + '  '.join(f'{k} {v}' for k, v in run['versions'].items() if v))
    res = dict(run=run, data="synthetic_ratings(n, n_items, seed=0), written in ml-25m's layout and read by load_movielens('ml-25m', path=...)",
               rank_settings=RANK_SETTINGS, sizes={}, growth_exponent={}, targets={})
    t0 = time.perf_counter()
    try:
        for n in sizes:
            folder = work/f'n{n}'
            t = time.perf_counter(); info = write_data(folder, n, n_items)
            log(f"\n## {n:,} ratings: {info['n_users']:,} users, {info['n_items']:,} films ({info['rated_items']:,} rated); written in {time.perf_counter() - t:.0f}s")
            out = res['sizes'][str(n)] = dict(**info, write_seconds=time.perf_counter() - t, stages={})
            for st in a.stages:
                if st == 'encode' and any('encode' in v['stages'] for v in res['sizes'].values() if v is not out):
                    continue                                                   # the same catalogue: encoded once
                if st == 'serve' and 'seconds' not in out['stages'].get('rate', {}): continue
                r = out['stages'][st] = run_stage(st, folder, a, log)
                if 'seconds' in r: log(f"  {st:7} {r['seconds']:8.1f}s  {r['rate']:>12,.0f} {r['unit']}  peak RSS {r.get('peak_rss_gb', 0):.2f} GB")
                elif 'skipped' in r: log(f"  {st:7} skipped: {r['skipped']}")
            shutil.rmtree(folder, ignore_errors=True) if not a.work else None
    finally:
        if not a.work: shutil.rmtree(work, ignore_errors=True)
    ns = [int(n) for n in res['sizes']]
    for st in STAGES:
        res['growth_exponent'][st] = exponent(ns, [res['sizes'][str(n)]['stages'].get(st, {}).get('seconds') for n in ns])
    big = str(max(ns)); s = res['sizes'][big]['stages']
    for name, (st, key, lim) in TARGETS.items():
        v = s.get(st, {}).get(key)
        res['targets'][name] = dict(at=int(big), value=v, limit=lim, met=None if v is None else bool(v < lim))
    als, ours = s.get('als', {}).get('seconds'), {k: s.get(k, {}).get('seconds') for k in ('rate', 'rank')}
    for k, v in ours.items():
        if als and v: res['targets'][f'{k} epoch <= 3x one ALS iteration'] = dict(at=int(big), value=v / als, limit=3, met=bool(v / als <= 3))
    for k in ('rate', 'rank'):
        g = res['growth_exponent'].get(k)
        if g is not None and len(ns) > 1: res['targets'][f'{k} epoch grows linearly (exponent <= 1.15)'] = dict(value=g, limit=1.15, met=bool(g <= 1.15))
    run.update(load_average_end=os.getloadavg(), wall_seconds=time.perf_counter() - t0)
    log('\n' + table(res))
    log('\nratios at ' + f"{int(big):,}: " + ', '.join(f"{k} / ALS iteration {v / als:.2f}x" for k, v in ours.items() if als and v)
        + (f"; BPR epoch / ALS iteration {s['bpr']['seconds'] / als:.2f}x" if als and 'seconds' in s.get('bpr', {}) else ''))
    log('targets: ' + '; '.join(f"{k}: {'met' if t['met'] else 'MISSED' if t['met'] is False else 'not run'}"
                                + (f" ({t['value']:.2f} vs {t['limit']})" if t['value'] is not None else '') for k, t in res['targets'].items()))
    if a.out:
        from fine_tuning_flm.core import atomic_write
        with atomic_write(a.out, 'w') as f: json.dump(res, f, indent=1)
        log(f'wrote {a.out}')
    return res

if __name__ == '__main__': main()
