"""Where an FLM fit spends its time, and the same fits with the code of another commit, side by side in one run (#24).

    python -m benchmarks.profile --before 4c1ed18~1 --after 4c1ed18 --out benchmarks/results/profile.json   # before and after #24 (~25 min on 2 cores)
    python -m benchmarks.profile --quick                                                  # CI size (a 20 % sample, 2 epochs, 100 k synthetic ratings)

Each measurement runs in a fresh process of its own (`python -m benchmarks.profile --measure NAME`), once with the
library of this tree or of commit `--after REF` ("after") and, with `--before REF`, once with the library of commit REF
("before"): a commit's `fine_tuning_flm/` is taken with `git archive` and put first on that process's path, so that
uncommitted changes of other modules reach neither side. The two alternate, so both see
about the same load; every number is a ratio inside one run, or a wall time beside the load average it ran under.

Measurements:
- `rank100k`: ml-100k, Microsoft Recommenders' split (`split('recommenders', ratio=0.75, by='item', seed=42)`):
  cornac BPR's fit (k=200, 100 iterations, as `benchmarks.ranking`) and then `train_flm(train, None, objective='rank')`
  (the ranking recipe, frozen MiniLM text, seed 42), in the same process: fit seconds, their ratio, NDCG@10 on the test
  side (every test rating relevant, training items left out). Then one more epoch of the same recipe under
  `torch.profiler`: the operators by self CPU time.
- `u1`: ml-100k's official u1 fold: `train_flm(objective='rate')` and `objective='both'`, test RMSE, NDCG@10, fit seconds.
- `scale`: one epoch of the rating recipe and one of the ranking settings of `benchmarks.scale` (sampled negatives) at
  5 M synthetic ratings (`synthetic_ratings`, ml-25m's 62,423 films), with random 384-dimensional stand-ins of the MiniLM
  item vectors (the epoch's cost does not depend on their values; encoding 62 k texts takes minutes); then 40 batches
  of each under `torch.profiler`.

- `parts`: each part the speed work changed, alone, at a fixed size (the least of `--repeat` timings, so that a process
  descheduled by the load counts least): the full-catalogue softmax of a batch of 1,024 (forward, loss, backward of a
  softmax model of ml-100k's shape, no text, no history); the pooled history of 1,024 rows of ml-100k's users
  (forward and backward); one optimizer step and `zero_grad` of `flm_learner`'s rating model at 25 M's shape (162,541
  users, 62,423 films, 384-d text, a batch of 4,096); 4 sampled negatives for each of 4,096 rows against the 25 M
  known positives; and (after only) one step of the ranking recipe with and without bf16 autocast.

Every training batch is cut into phases by two callbacks that run first and last at each fastai event: batch assembly
(the loader), forward (split into the item table, the user side with its pooled history, and the rest: logits,
ratings, penalty), loss, backward, optimizer step, zero_grad, and fastai's other callbacks (the time between the two
clocks at each event). What a fit spends outside its training batches (building the learner, per-epoch work) is
`outside batches`.
"""
import os, sys
if os.environ.get('FLM_CODE'): sys.path.insert(0, os.environ['FLM_CODE'])     # the "before" library: first on the path, before any import of it
import argparse, io, json, subprocess, tarfile, tempfile, time
from collections import defaultdict
from pathlib import Path

import numpy as np, torch

from benchmarks.common import SEED, movielens, ndcg10, timed
from benchmarks.provenance import ROOT, Run, _git

PHASES = ('batch assembly', 'forward: item table', 'forward: user side (ID, text)', 'forward: pooled history', 'forward: logits, ratings, penalty',
          'loss', 'backward', 'optimizer step', 'zero_grad', 'fastai callbacks')
MEASURES = ('rank100k', 'u1', 'scale', 'parts')

# ---------------------------------------------------------------------------------------------------- the clock
class Clock:
    "Wall seconds per phase of the training batches; `mark(label)` charges the time since the last mark to `label`."
    def __init__(self): self.t, self.last, self.on, self.sub, self.batches = defaultdict(float), None, False, defaultdict(float), 0
    def mark(self, label):
        now = time.perf_counter()
        if self.on and self.last is not None: self.t[label] += now - self.last
        self.last = now

    def wrap(self, cls, name, label):
        "Time `cls.name` (a method of the model) into `label` while a forward pass is being timed."
        f = getattr(cls, name, None)
        if f is None: return
        clock = self
        def timed_method(*a, **kw):
            if not clock.on: return f(*a, **kw)
            t = time.perf_counter()
            try: return f(*a, **kw)
            finally: clock.sub[label] += time.perf_counter() - t
        setattr(cls, name, timed_method)

    def callbacks(self):
        from fastai.callback.core import Callback
        clock = self
        cb_events = ('before_batch', 'after_pred', 'after_loss', 'before_backward', 'after_backward', 'before_step', 'after_step', 'after_batch')
        first = {'before_batch': 'batch assembly', 'after_pred': 'forward', 'after_loss': 'loss', 'after_backward': 'backward',
                 'after_step': 'optimizer step', 'after_batch': 'zero_grad'}
        class First(Callback):
            order = -10_000
            def before_train(self): clock.on, clock.last = True, time.perf_counter()
        class Last(Callback):
            order = 10_000
            def after_train(self): clock.on = False
            def after_batch(self): clock.mark('fastai callbacks'); clock.batches += 1
        for ev in cb_events:       # First charges the interval that just ended to its phase; Last charges the other callbacks of the event
            setattr(First, ev, (lambda lab: lambda self: clock.mark(lab))(first.get(ev, 'fastai callbacks')))
            if ev != 'after_batch': setattr(Last, ev, lambda self: clock.mark('fastai callbacks'))
        return [First(), Last()]

    def phases(self, total:float) -> dict:
        "Seconds per phase (the forward split by the timed methods), and `outside batches` = `total` - their sum."
        t = dict(self.t); fwd = t.pop('forward', 0.0)
        hist = self.sub.get('pooled history', 0.0)
        out = {'batch assembly': t.pop('batch assembly', 0.0), 'forward: item table': self.sub.get('item table', 0.0),
               'forward: user side (ID, text)': self.sub.get('user side', 0.0) - hist, 'forward: pooled history': hist}
        out['forward: logits, ratings, penalty'] = fwd - sum(v for k, v in out.items() if k.startswith('forward'))
        out.update({k: t.pop(k, 0.0) for k in ('loss', 'backward', 'optimizer step', 'zero_grad', 'fastai callbacks')})
        out['outside batches'] = total - sum(out.values())
        return {k: round(v, 4) for k, v in out.items()}

def _clocked():
    "A clock with the model's item table, user side and pooled history timed."
    from fine_tuning_flm.factorization import FLM
    c = Clock()
    for name, label in (('item_parts', 'item table'), ('user_side', 'user side'), ('pooled_history', 'pooled history')): c.wrap(FLM, name, label)
    return c

def op_table(prof, n:int=15) -> list:
    "The `n` operators with the most self CPU time: name, calls, self ms, share of all self time."
    ev = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    tot = sum(e.self_cpu_time_total for e in ev)
    ev.sort(key=lambda e: -e.self_cpu_time_total)
    return [dict(op=e.key, calls=e.count, self_ms=round(e.self_cpu_time_total / 1e3, 2), share=round(e.self_cpu_time_total / tot, 4)) for e in ev[:n]]

def _profiled(fn):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof: fn()
    return op_table(prof)

# ---------------------------------------------------------------------------------------------------- measurements (one process each)
def _threads(): return dict(torch_threads=torch.get_num_threads(), load_average=[round(x, 2) for x in os.getloadavg()])

def measure_rank100k(a) -> dict:
    from fine_tuning_flm.core import set_seed
    from fine_tuning_flm.learner import text_vectors, train_flm, recipe_for
    from benchmarks.ranking import fit_cornac_bpr
    d = movielens('ml-100k')
    if a.quick: d = d.sample(0.2, seed=0)
    train, test = d.split('recommenders', ratio=0.75, by='item', seed=42)
    iv, uv = text_vectors(train)
    args = argparse.Namespace(quick=a.quick, threads=a.threads)
    load0 = os.getloadavg()[0]
    bpr, bpr_s, _ = fit_cornac_bpr(train, test, args, SEED)
    kw = dict(epochs=2) if a.quick else {}
    clock = _clocked()
    set_seed(SEED)
    learn, fit_s = timed(train_flm, train, None, objective='rank', item_vectors=iv, user_vectors=uv, progress=False, seed=SEED, cbs=clock.callbacks(), **kw)
    out = dict(data=f'{d.name}: {len(train):,} train / {len(test):,} test ratings', recipe={k: str(v) for k, v in recipe_for('rank').replace(**kw).asdict().items()},
               cornac_bpr_fit_seconds=bpr_s, flm_fit_seconds=fit_s, fit_vs_cornac_bpr=fit_s / bpr_s, ndcg10=ndcg10(learn.model.eval(), test, train),
               cornac_bpr_ndcg10=ndcg10(bpr, test, train), batches=clock.batches, phases=clock.phases(fit_s), load_average_at_start=round(load0, 2))
    set_seed(SEED)
    out['ops'] = _profiled(lambda: train_flm(train, None, objective='rank', item_vectors=iv, user_vectors=uv, progress=False, seed=SEED, epochs=1))
    out['ops_of'] = 'one epoch of the same recipe under torch.profiler (CPU)'
    return out | _threads()

def measure_u1(a) -> dict:
    from fine_tuning_flm.core import set_seed
    from fine_tuning_flm.learner import text_vectors, train_flm, ranking_metric
    from fine_tuning_flm.metrics import rmse
    d = movielens('ml-100k')
    train, test = d.split('official', fold='u1')
    if a.quick: train = train.sample(0.2, seed=0)
    iv, uv = text_vectors(train)
    out = {}
    for name, obj in (('FLM-mse', 'rate'), ('FLM-both', 'both')):
        clock = _clocked()
        set_seed(SEED)
        learn, fit_s = timed(train_flm, train, None, objective=obj, item_vectors=iv, user_vectors=uv, progress=False, seed=SEED,
                             cbs=clock.callbacks(), **(dict(epochs=2) if a.quick else {}))
        m, r = learn.model.eval(), test.ratings
        out[name] = dict(objective=obj, rmse=rmse(m.predict(r.user, r.item, cold=True), r.rating), fit_seconds=fit_s, batches=clock.batches,
                         ndcg10=ranking_metric(m, np.unique(r.user.to_numpy()), train.user_items(), test.user_items()), phases=clock.phases(fit_s))
    return out | _threads()

def _synthetic(n:int, n_items:int):
    from fine_tuning_flm.data import Interactions
    from fine_tuning_flm.datasets import synthetic_ratings
    r, m = synthetic_ratings(n, n_items=n_items, seed=0)
    return Interactions.from_df(r.rename(columns={'userId': 'user_id', 'movieId': 'item_id'}), m.rename(columns={'movieId': 'item_id'}),
                                scale=(0.5, 5), name=f'synthetic {n:,}')

def measure_scale(a) -> dict:
    from fastai.callback.core import Callback, CancelFitException
    from fine_tuning_flm.core import set_seed
    from fine_tuning_flm.learner import flm_learner, recipe_for
    from benchmarks.scale_stage import RANK_SETTINGS
    n, n_items = (100_000, 2_000) if a.quick else (5_000_000, 62_423)
    t = time.perf_counter(); d = _synthetic(n, n_items); gen = time.perf_counter() - t
    iv = torch.randn(d.n_items, 384, generator=torch.Generator().manual_seed(0))
    iv = iv / iv.norm(dim=1, keepdim=True)
    out = dict(data=f'{d.name}: {d.n_users:,} users, {d.n_items:,} films', generate_seconds=gen)
    class Stop(Callback):
        def __init__(self, n): self.n = n
        def after_batch(self):
            if self.training and self.iter + 1 >= self.n: raise CancelFitException()
    for name, (obj, kw) in (('rate', ('rate', {})), ('rank', (RANK_SETTINGS['objective'], {k: v for k, v in RANK_SETTINGS.items() if k != 'objective'}))):
        r = recipe_for(obj).replace(**kw)
        def learner(cbs=()):
            set_seed(SEED)
            return flm_learner(d, None, r, item_vectors=iv, user_vectors=None, seed=SEED, cbs=list(cbs))
        clock = _clocked()
        learn, setup = timed(learner, clock.callbacks())
        t = time.perf_counter()
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, r['lr'])
        s = time.perf_counter() - t
        learn2 = learner([Stop(40)])
        def forty():
            with learn2.no_bar(), learn2.no_logging(): learn2.fit_one_cycle(1, r['lr'])
        out[name] = dict(settings={k: str(v) for k, v in kw.items()}, setup_seconds=setup, epoch_seconds=s, ratings_per_s=len(d) / s,
                         batches=clock.batches, phases=clock.phases(s), ops=_profiled(forty), ops_of='the first 40 batches of the epoch under torch.profiler (CPU)')
        del learn, learn2
    return out | _threads()

def _best(f, repeat:int) -> float:
    "The least of `repeat` timings of `f()` (after two untimed calls), in ms."
    f(); f(); best = float('inf')
    for _ in range(repeat):
        t = time.perf_counter(); f(); best = min(best, time.perf_counter() - t)
    return best * 1e3

def _toy_interactions(n_users, n_items, n, seed=0):
    import pandas as pd
    from fine_tuning_flm.data import Interactions
    g = np.random.default_rng(seed)
    df = pd.DataFrame({'user_id': np.r_[np.arange(n_users), g.integers(0, n_users, n - n_users)], 'item_id': np.r_[np.arange(n_items), g.integers(0, n_items, n - n_items)][:n],
                       'rating': g.integers(1, 6, n).astype(float)}).drop_duplicates(['user_id', 'item_id'])
    return Interactions.from_df(df, scale=(1, 5))

def measure_parts(a) -> dict:
    from fine_tuning_flm.factorization import FLM, FLMLoss
    from fine_tuning_flm.learner import flm_learner, recipe_for, sample_negatives, pair_keys
    rep, g, out = (5 if a.quick else a.repeat), torch.Generator().manual_seed(0), {}
    B, nu, ni = 1024, 943, 1682
    x = torch.stack([torch.randint(0, nu, (B,), generator=g), torch.randint(0, ni, (B,), generator=g)], 1)
    torch.manual_seed(0); m = FLM(nu, ni, n_factors=64, objective='softmax').train()
    def softmax_step():
        m.zero_grad(); (FLMLoss(m)(m(x), torch.ones(B)) + m.penalty).backward()
    out['full-catalogue softmax: forward, loss, backward (ms)'] = _best(softmax_step, rep)
    d = _toy_interactions(nu, ni, 75_000)
    torch.manual_seed(0); h = FLM(d.n_users, d.n_items, n_factors=64, objective='softmax', history=True).set_seen(d).train()
    r = d.ratings.sample(B, random_state=0)
    u, i = torch.tensor(r.user.to_numpy()), torch.tensor(r.item.to_numpy())
    def history():
        h.zero_grad(); h.pooled_history(u, exclude=i).sum().backward()
    out['pooled history of 1,024 rows: forward, backward (ms)'] = _best(history, rep)
    big = _toy_interactions(162_541, 62_423, 400_000)
    set_seed_ = __import__('fine_tuning_flm.core', fromlist=['set_seed']).set_seed; set_seed_(0)
    learn = flm_learner(big, None, recipe_for('rate'), item_vectors=torch.randn(big.n_items, 384, generator=g), user_vectors=None)
    learn.create_opt(); learn.opt.set_hyper('lr', 1e-3)
    lm = learn.model.train()
    xb, yb = next(iter(learn.dls.train))
    def opt_step():
        (learn.loss_func(lm(xb), yb) + lm.penalty).backward()
        t = time.perf_counter(); learn.opt.step(); learn.opt.zero_grad(); return time.perf_counter() - t
    for _ in range(2): opt_step()
    out['optimizer step + zero_grad, rating model at 25 M shape (ms)'] = min(opt_step() for _ in range(rep)) * 1e3
    out['optimizer'] = type(learn.opt).__name__ + ' with ' + ', '.join(getattr(c, '__name__', str(c)) for c in learn.opt.cbs)
    n = 5_000 if a.quick else 25_000_000
    keys = torch.unique(pair_keys(torch.randint(0, 162_541, (n,), generator=g), torch.randint(0, 62_423, (n,), generator=g), 62_423))
    users = torch.randint(0, 162_541, (4096,), generator=g)
    out['4 negatives for 4,096 rows against 25 M positives (ms)'] = _best(lambda: sample_negatives(users, 62_423, 4, None, keys, generator=g), rep)
    try:
        from fine_tuning_flm.learner import FLMMixedPrecision
        trn = movielens('ml-100k').split('recommenders', ratio=0.75, by='item', seed=42)[0]
        for mp in (False, True):
            lr = flm_learner(trn, None, recipe_for('rank'), item_vectors=torch.randn(trn.n_items, 384, generator=g), user_vectors=None, mixed_precision=mp, seed=0)
            lr.create_opt(); lr.opt.set_hyper('lr', 1e-3); rm = lr.model.train()
            xr, yr = next(iter(lr.dls.train))
            ac = next((cb for cb in lr.cbs if isinstance(cb, FLMMixedPrecision)), None)
            if ac is not None: ac.before_fit()
            def rank_step():
                with (ac.autocast if ac is not None else torch.autocast('cpu', enabled=False)): l = lr.loss_func(rm(xr), yr) + rm.penalty
                l.backward(); lr.opt.step(); lr.opt.zero_grad()
            out[f"ranking recipe step on ml-100k, bs {lr.recipe['bs']}, {'bf16 autocast' if ac is not None else 'fp32'} (ms)"] = _best(rank_step, rep)
    except ImportError: pass                                    # the library before #24 has no CPU autocast
    return out | _threads()

RUN = {'rank100k': measure_rank100k, 'u1': measure_u1, 'scale': measure_scale, 'parts': measure_parts}

# ---------------------------------------------------------------------------------------------------- the driver
def code_of(ref:str, into:Path) -> Path:
    "The `fine_tuning_flm/` package of commit `ref`, extracted under `into` (which goes first on a measuring process's path)."
    data = subprocess.run(['git', 'archive', '--format=tar', ref, 'fine_tuning_flm'], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tf: tf.extractall(into, filter='data')
    return into

def run_measure(name, a, code=None, log=print) -> dict:
    cmd = [sys.executable, '-m', 'benchmarks.profile', '--measure', name, '--threads', str(a.threads), '--repeat', str(a.repeat)] + (['--quick'] if a.quick else [])
    env = {**os.environ, 'OMP_WAIT_POLICY': os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}
    env.pop('FLM_CODE', None)
    if code: env['FLM_CODE'] = str(code)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    last = [l for l in p.stdout.splitlines() if l.startswith('RESULT ')]
    if p.returncode or not last:
        log(f'  {name}: failed with status {p.returncode}: {(p.stderr or p.stdout).strip()[-1500:]}')
        return dict(error=(p.stderr or p.stdout)[-3000:], status=p.returncode)
    return json.loads(last[-1][7:])

def table(res:dict, measure:str, key:str|None=None) -> str:
    "Phases side by side: seconds and share of each tree."
    trees = [t for t in ('before', 'after') if t in res['trees']]
    get = lambda t: (res['trees'][t].get(measure, {}).get(key, {}) if key else res['trees'][t].get(measure, {}))
    rows = [f"{'phase':36}" + ''.join(f'{t:>22}' for t in trees)]
    for ph in (*PHASES, 'outside batches'):
        cells = []
        for t in trees:
            p = get(t).get('phases') or {}
            tot = sum(p.values()) or 1
            cells.append(f"{p.get(ph, 0):9.2f}s {100 * p.get(ph, 0) / tot:5.1f} %    " if p else f"{'-':>22}")
        rows.append(f'{ph:36}' + ''.join(cells))
    return '\n'.join(rows)

def main(argv=None):
    argv = [str(x) for x in (sys.argv[1:] if argv is None else argv)]
    p = argparse.ArgumentParser(prog='python -m benchmarks.profile', description=__doc__.splitlines()[0])
    p.add_argument('--before', default=None, metavar='REF', help="also measure the library of this commit (e.g. the one before a speed-up)")
    p.add_argument('--after', default=None, metavar='REF', help="the library of this commit as 'after' (default: this tree's, with any uncommitted change)")
    p.add_argument('--measures', nargs='+', default=list(MEASURES), choices=MEASURES)
    p.add_argument('--measure', default=None, choices=MEASURES, help=argparse.SUPPRESS)     # one measurement, in this process
    p.add_argument('--quick', action='store_true', help='CI size: a 20 %% sample of ml-100k, 2 epochs, 100 k synthetic ratings')
    p.add_argument('--threads', type=int, default=2, help='torch threads (default 2)')
    p.add_argument('--repeat', type=int, default=30, help='parts: timings of each part, the least is kept (default 30)')
    p.add_argument('--out', default=None, help='write every number here as JSON')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.measure:
        import fine_tuning_flm
        out = RUN[a.measure](a) | dict(library=str(Path(fine_tuning_flm.__file__).parent))
        print('RESULT ' + json.dumps(out, default=float), flush=True)
        return out
    prov = Run(__spec__.name, argv, out=a.out)
    log = lambda *s: print(*s, flush=True)
    log(prov.banner())
    res = dict(trees={}, phases=list(PHASES) + ['outside batches'])
    with tempfile.TemporaryDirectory(prefix='flm-before-') as tmp:
        trees = {}
        if a.before:
            commit = _git('rev-parse', a.before).strip()
            trees['before'] = (code_of(commit, Path(tmp)/'before'), commit)
        if a.after:
            commit = _git('rev-parse', a.after).strip()
            trees['after'] = (code_of(commit, Path(tmp)/'after'), commit)
        else: trees['after'] = (None, prov.start['git_commit'] + (' + uncommitted changes' if prov.start['git_dirty'] else ''))
        for t, (_, commit) in trees.items(): res['trees'][t] = dict(code=commit)
        for m in a.measures:
            for t, (code, _) in trees.items():
                log(f'\n## {m}, {t} ({res["trees"][t]["code"][:10]}), load average {os.getloadavg()[0]:.2f}')
                r = res['trees'][t][m] = run_measure(m, a, code, log)
                if m == 'rank100k' and 'ndcg10' in r:
                    log(f"  cornac BPR fit {r['cornac_bpr_fit_seconds']:.1f}s, FLM fit {r['flm_fit_seconds']:.1f}s ({r['fit_vs_cornac_bpr']:.1f}x), NDCG@10 {r['ndcg10']:.4f}")
                elif m == 'u1' and 'FLM-mse' in r:
                    log('  ' + ', '.join(f"{k}: RMSE {v['rmse']:.4f} NDCG@10 {v['ndcg10']:.4f} fit {v['fit_seconds']:.1f}s" for k, v in r.items() if isinstance(v, dict)))
                elif m == 'scale' and 'rate' in r:
                    log('  ' + ', '.join(f"{k} epoch {r[k]['epoch_seconds']:.1f}s" for k in ('rate', 'rank')))
                elif m == 'parts' and 'error' not in r:
                    log('\n'.join(f'  {k}: {v:.2f}' for k, v in r.items() if isinstance(v, float)))
        for m in [m for m in a.measures if m != 'parts']:
            keys = [None] if m != 'scale' else ['rate', 'rank']
            if m == 'u1': keys = ['FLM-mse', 'FLM-both']
            for k in keys: log(f"\n{m}{' ' + k if k else ''}\n" + table(res, m, k))
    prov.write(res, a.out)
    if a.out: log(f'wrote {a.out}')
    return res

if __name__ == '__main__': main()
