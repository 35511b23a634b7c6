"""Explore or exploit: our policies against greedy, popularity and MABWiser's LinUCB/LinTS, in two views of ml-100k's new users.

    python -m benchmarks.feedback --view simulator --out benchmarks/results/feedback_simulator.json  # the measurement (#27): 5 seeds, every held-out user
    python -m benchmarks.feedback --users 30 --out benchmarks/results/feedback.json                  # the replay, a second view (biased, below)
    python -m benchmarks.feedback --quick [--view simulator]                                         # CI-size: 2 seeds, 10 users, 5 rounds, 1-point grids

Both views: ml-100k, `split('cold_users', pct=0.2, seed=0)`. The FLM (`train_flm(objective='both')`, trained once on the
training side) never saw the held-out users. Each one arrives with 0-2 of their own ratings (drawn from their real ones and
given to the model through `update`); each round a policy shows k = 5 items it has not shown them before; the model learns
through `Recommender.update`; T = 20 rounds. Reported per policy: cumulative clicks per user at T (mean and std over seeds,
and every seed) and the share of the catalogue shown to anyone.

`--view simulator` (`feedback.simulate_clicks`, semi-synthetic): every (user, item) has a click probability, the frozen
ground truth of `benchmarks/results/feedback_truth.json` (`python -m benchmarks.simulator`: EASE, another family than the FLM,
fitted on all ratings, calibrated on held-out ones; committed before any policy was tuned on it; rebuilt here and checked
against its checksum). A shown item is clicked when the user's coin for it (drawn once per seed and user, the same for every
policy) falls below its probability; the model learns every click (as a rating of 5; a shown item that was not clicked is no
rating, and is left out of later lists: given as a low rating it only makes the fold-in stop early, 13_feedback). Also reported:
expected clicks (the ground truth's probabilities of the shown items), regret against the oracle (the ground truth's own
top k of the items left, round by round; in expected clicks), the breakdown by number of start ratings, and the targets:
LinUCB / Thompson sampling against greedy (`finetune.paired_gain` over the seeds, which share users, start ratings and coins:
met when >= +10 % and the mean difference > 2 std of the differences), and our best policy against MABWiser's best.

`--view replay` (`feedback.simulate`, Li et al. 2011's replay): an item the user rated is revealed (a rating >= 4 is a click,
any other rating no click), an item they never rated counts as no click, and the model learns the revealed ratings only. Its
bias: MovieLens users rated what they chose to watch, so an unrated item is no click even if they would have loved it;
exploration shows exactly those items, and is punished for it.

The peer, MABWiser (`MabwiserPolicy`): LinUCB and LinTS, given what our model is given.
- Arms: every item, one disjoint linear model per arm (MABWiser's design), shared by all users.
- Context of a user: [mean of the FLM's item vectors of the items they rated >= 4, mean of those they rated below, 1]:
  the ratings our model holds for them (`Recommender.user_ratings`: the start ratings the simulation gives it, then every
  revealed rating; in the simulator view every click, as a 5). The item vectors are the trained FLM's effective item
  vectors (ID part + projected text, `FLM.item_parts`), reduced to `--mab-dims` by PCA: the same vectors our linear
  policies score with.
- Warm start on the training side, in time order: the context of each training rating is built from the user's earlier
  ratings only (never from the rated item itself); a rating >= 4 is a reward of 1, any other rating 0, and
  `--mab-negatives` unrated items per rating are rewards of 0 (a shown item the user never rated is no click).
- In the simulation: at a user's first list the bandit learns their start ratings (in the order they come); after each
  list it learns every shown item, clicked (1) or not (0, the shown-but-unclicked negatives, unrated ones included),
  with the context the list was chosen with. Candidates: the items `simulate` lets every policy show (not rated, not shown).
- The one difference we leave: the bandit learns across held-out users as they arrive; our model's item side stays fixed.
- Its alpha and l2 are chosen (`--mab-alphas` x `--mab-l2s`) exactly as ours are:

LinUCB's alpha, Thompson sampling's posterior scale and epsilon-greedy's epsilon (ours), and MABWiser's alpha and l2, are chosen
on a second `cold_users` split of the training side (simulated with the same ground truth), with a model trained on the rest of
it: the test users choose nothing. The simulator view tunes on expected clicks (less noisy than the coins), over all T rounds.
`--jobs N` runs the simulations in N spawned worker processes (1 torch thread each; the same results as `--jobs 1`).

Also timed in the replay view, for the same work (learning 5 new ratings of one held-out user): `update` (re-folds that user
from their ratings; median of `--repeats`) and `refit` (a warm-started 1-epoch retrain on every rating; median of
`--refit-repeats`). They are reported side by side, not as a ratio: they are not the same amount of computation.
"""
import argparse, copy, functools, json, multiprocessing, pickle, statistics, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, torch

from fine_tuning_flm.core import evaluating, set_seed
from fine_tuning_flm.feedback import ClickTruth, by_start, simulate, simulate_clicks
from fine_tuning_flm.finetune import paired_gain
from fine_tuning_flm.learner import text_vectors, train_flm
from fine_tuning_flm.recommend import Recommender
from benchmarks.common import mean_std, movielens
from benchmarks.provenance import Run

OURS = ('greedy', 'epsilon', 'popularity', 'linucb', 'thompson')
PEERS = ('MABWiser-LinUCB', 'MABWiser-LinTS')
LIKE = 4.0

def flm_item_vectors(rec, dims:int) -> np.ndarray:
    "The model's effective item vectors (cold items: their text part), centred and reduced to `dims` by PCA."
    m = rec.model
    with torch.no_grad(), evaluating(m): q, _ = m.item_parts(torch.arange(m.n_items), m.seen_items.float())
    q = q.double().numpy()
    q = q - q.mean(0)
    _, _, vt = np.linalg.svd(q, full_matrices=False)
    return q @ vt[:dims].T

def profile(Z, items, ratings, like=LIKE) -> np.ndarray:
    "A user's context from their ratings: [mean vector of the liked items, mean of the others, 1] (zeros where there are none)."
    items, ratings = np.asarray(items, np.int64), np.asarray(ratings, float)
    pos, neg = items[ratings >= like], items[ratings < like]
    mean = lambda ix: Z[ix].mean(0) if len(ix) else np.zeros(Z.shape[1])
    return np.r_[mean(pos), mean(neg), 1.0]

def sequential_contexts(Z, users, items, liked) -> np.ndarray:
    "For rows sorted by user (then time): each row's context from the same user's earlier rows only."
    n = len(users)
    start = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    first = np.repeat(start, np.diff(np.r_[start, n]))                  # each row's group start
    def excl_mean(mask):
        X = Z[items] * mask[:, None]
        cs = np.vstack([np.zeros((1, Z.shape[1])), np.cumsum(X, 0)])   # cs[i] = sum of rows < i
        cn = np.r_[0, np.cumsum(mask)]
        s, c = cs[np.arange(n)] - cs[first], cn[np.arange(n)] - cn[first]
        return s / np.maximum(c, 1)[:, None]
    return np.hstack([excl_mean(liked.astype(float)), excl_mean((~liked).astype(float)), np.ones((n, 1))])

class MabwiserPolicy:
    "MABWiser's LinUCB or LinTS as a policy of `simulate`, with our model's inputs (see the module's docstring)."
    def __init__(self, rec, train, kind='LinUCB', alpha=1.0, l2=1.0, dims=16, negatives=4, seed=0):
        from mabwiser.mab import MAB, LearningPolicy
        self.Z, self.kind, self.settings = flm_item_vectors(rec, dims), kind, dict(alpha=alpha, l2_lambda=l2, dims=dims, negatives=negatives)
        r = train.ratings.sort_values(['user', 'timestamp'], kind='stable')
        u, it, liked = r.user.to_numpy(), r.item.to_numpy(), r.rating.to_numpy() >= LIKE
        ctx = sequential_contexts(self.Z, u, it, liked)
        rng = np.random.default_rng(seed)
        rated = set((u * rec.model.n_items + it).tolist())
        nu, ni = np.repeat(u, negatives), rng.integers(0, rec.model.n_items, len(u) * negatives)
        keep = np.array([k not in rated for k in (nu * rec.model.n_items + ni).tolist()], bool)   # unrated items only
        decisions = np.r_[it, ni[keep]]
        rewards = np.r_[liked.astype(float), np.zeros(keep.sum())]
        contexts = np.vstack([ctx, np.repeat(ctx, negatives, 0)[keep]])
        self.mab = MAB(arms=list(range(rec.model.n_items)), learning_policy=getattr(LearningPolicy, kind)(alpha=alpha, l2_lambda=l2), seed=seed)
        t = time.perf_counter()
        self.mab.fit(decisions=decisions, rewards=rewards, contexts=contexts)
        self.warm_start = dict(rows=len(decisions), ratings=len(it), unrated_negatives=int(keep.sum()), seconds=time.perf_counter() - t)
        self.started, self.shown_ctx = set(), {}

    def fresh(self, seed):
        "A copy with the warm-started bandit and no simulated user yet (one per simulation seed)."
        from mabwiser.utils import create_rng
        c = copy.copy(self); c.mab = copy.deepcopy(self.mab)
        rng = create_rng(seed)                 # LinTS draws from it: each simulation seed its own draws (MABWiser keeps it in three places)
        c.mab._rng = c.mab._imp.rng = rng
        for m in c.mab._imp.arm_to_model.values(): m.rng = rng
        c.started, c.shown_ctx = set(), {}
        return c

    def _start(self, rec, u):
        "The user's start ratings, as `simulate` gave them to our model: learned in order, each with the context of the ones before."
        self.started.add(u)
        items, ratings = rec.user_ratings(u)
        if len(items) == 0: return
        ctx = np.stack([profile(self.Z, items[:j], ratings[:j]) for j in range(len(items))])
        self._partial_fit(items, (ratings >= LIKE).astype(float), ctx)

    def __call__(self, rec, u, scores, k, rng, **kw):
        if u not in self.started: self._start(rec, u)
        x = profile(self.Z, *rec.user_ratings(u))[None]                   # what our model knows of the user now
        self.shown_ctx[u] = x
        exp = self.mab.predict_expectations(x)
        e = torch.tensor([exp[a] for a in range(rec.model.n_items)], dtype=torch.float64)
        e = e.masked_fill(~torch.isfinite(scores), -torch.inf)             # the candidates of every policy
        return torch.topk(e, min(k, int(torch.isfinite(e).sum()))).indices.numpy()

    def learn(self, u, codes, clicks):
        "After a list: every shown item, clicked (1) or not (0), with the context the list was chosen with."
        self._partial_fit(codes, clicks, np.repeat(self.shown_ctx[u], len(codes), 0))

    def _partial_fit(self, decisions, rewards, contexts):
        """`MAB.partial_fit` for a linear policy, run on the arms that got data only. MABWiser's own call copies all 1,682 arm
        models to update five (0.18 s a list, measured); its per-arm update `_fit_arm` on those arms gives the same parameters (checked
        to 0.0 difference in beta and A_inv) in 1 ms."""
        imp = self.mab._imp
        d, r, X = np.asarray(decisions, np.int64), np.asarray(rewards, float), np.asarray(contexts, float)
        for arm in np.unique(d): imp._fit_arm(int(arm), d, r, X)
        imp._set_arms_as_trained(decisions=d, is_partial=True)

def clicks_per_user(d) -> float: return d.clicks.sum() / d.user.nunique()
def tuning_score(d) -> float:
    "What tuning maximises: expected clicks per user where the simulator gives them (no coin noise), else clicks per user."
    return (d.expected.sum() if 'expected' in d.columns else d.clicks.sum()) / d.user.nunique()

_STATE = {}

def _init_worker(blob, threads):
    "A worker of `run_jobs`: the shared state (models, users, simulator, warm-started peers) once, unpickled."
    _STATE.update(pickle.loads(blob)); torch.set_num_threads(threads)

def _run_job(job):
    "One simulation: job = (model key, users key, policy name, peer key or None, seed, keyword arguments); (its rows, seconds)."
    rec, users, pol, peer, seed, kw = job
    policy = pol
    if peer is not None: policy = _STATE['peers'][peer].fresh(seed); policy.name = pol
    t = time.perf_counter()
    d = _STATE['sim'](_STATE[rec], _STATE[users], policy=policy, seed=seed, **kw)
    return d, time.perf_counter() - t

def run_jobs(jobs, state:dict, n:int=1) -> list:
    "Run simulations in this process (n = 1) or in `n` fresh worker processes (spawned: no forked OpenMP state), each given `state` once."
    if n <= 1:
        _STATE.clear(); _STATE.update(state)
        return [_run_job(j) for j in jobs]
    ctx = multiprocessing.get_context('spawn')
    with ctx.Pool(n, initializer=_init_worker, initargs=(pickle.dumps(state), 1)) as pool: return pool.map(_run_job, jobs, chunksize=1)

def tune(what, jobs_of, grid, state, n_jobs, seeds=2):
    "The grid point with the most (expected) clicks per user, mean over `seeds` simulations of the training side's own held-out users."
    keys = list(grid)
    out = run_jobs([j for k in keys for s in range(seeds) for j in [jobs_of(k, s)]], state, n_jobs)
    score = {k: float(np.mean([tuning_score(out[i * seeds + s][0]) for s in range(seeds)])) for i, k in enumerate(keys)}
    best = max(score, key=score.get)
    print(f"tuning {what} on the training side: {score} -> {best}", flush=True)
    return best, dict(grid=score, chosen=best)

def timing(rec, held, a):
    "update and refit for the same work: 5 new ratings of one held-out user, each timed on its own copy; medians."
    u = int(held.ratings.user.iloc[0]); r5 = held.ratings[held.ratings.user == u].head(5)
    new = pd.DataFrame({'user': [rec.users.id[u]] * len(r5), 'item': rec.items.id[r5.item].tolist(), 'rating': r5.rating.tolist()})
    ups, refits = [], []
    for _ in range(a.repeats):
        r = copy.deepcopy(rec)
        t = time.perf_counter(); r.update(new); ups.append(time.perf_counter() - t)
    for _ in range(a.refit_repeats):
        r = copy.deepcopy(rec); r.update(new); n = len(r.all_ratings())
        t = time.perf_counter(); r.refit(epochs=1); refits.append(time.perf_counter() - t)
    out = dict(update_one_user_5_ratings_ms=statistics.median(ups) * 1e3, update_repeats_ms=[x * 1e3 for x in ups],
               refit_all_users_1_epoch_s=statistics.median(refits), refit_repeats_s=refits, n_ratings_refit=n,
               what=("update: Recommender.update(5 ratings of one new user), which re-folds that user from their ratings; refit: "
                     "Recommender.refit(epochs=1), a warm-started epoch over every rating (training side + the 5). Both learn the same 5 "
                     "ratings; refit also retrains every other user and item, so the two are not the same amount of computation"))
    print(f"update (1 user, 5 ratings): median {out['update_one_user_5_ratings_ms']:.1f} ms over {a.repeats}; "
          f"refit (all users, 1 epoch): median {out['refit_all_users_1_epoch_s']:.1f} s over {a.refit_repeats}", flush=True)
    return out

def ground_truth(data, path) -> tuple:
    "The frozen click probabilities of `path` rebuilt on `data`, checked against the checksum the file recorded; and what the results file says of them."
    spec = json.loads(Path(path).read_text())
    P = ClickTruth.from_json(path).probabilities(data)
    total, want = float(P.sum(dtype=np.float64)), spec['checksum']['sum']
    if abs(total - want) > 1e-4 * want: raise RuntimeError(f"{path}: the rebuilt ground truth sums to {total:.4f}, the file recorded {want:.4f}")
    commit = subprocess.run(['git', 'log', '-1', '--format=%H', '--', str(path)], capture_output=True, text=True).stdout.strip()
    return P, dict(file=str(path), results_commit=commit or None, lam=spec['truth']['lam'], checksum=dict(recorded=want, rebuilt=total),
                   calibration=spec['calibration']['held_out']['summary'], stats=spec['truth_stats'])

def parse(argv):
    p = argparse.ArgumentParser(prog='python -m benchmarks.feedback', description=__doc__.splitlines()[0])
    p.add_argument('--view', choices=['replay', 'simulator'], default='replay', help='replay: the logged ratings (biased); simulator: the frozen ground truth')
    p.add_argument('--truth', default='benchmarks/results/feedback_truth.json', help='the frozen ground truth of the simulator view')
    p.add_argument('--seeds', type=int, default=5); p.add_argument('--rounds', type=int, default=20); p.add_argument('-k', type=int, default=5)
    p.add_argument('--users', type=int, default=None, help='simulate this many held-out users per seed (default: all)')
    p.add_argument('--tune-users', type=int, default=60, help='training-side held-out users per tuning run (2 seeds per grid point)')
    p.add_argument('--policies', nargs='+', default=[*OURS, *PEERS])
    p.add_argument('--alphas', nargs='+', type=float, default=[0.03, 0.1, 0.3, 1.0], help="our LinUCB's alpha grid, chosen on a split of the training side")
    p.add_argument('--scales', nargs='+', type=float, default=[0.1, 0.2, 0.3, 0.5, 1.0], help="our Thompson sampling's posterior scale grid, chosen likewise")
    p.add_argument('--epsilons', nargs='+', type=float, default=[0.05, 0.1, 0.2], help="epsilon-greedy's epsilon grid, chosen likewise")
    p.add_argument('--mab-alphas', nargs='+', type=float, default=[0.1, 0.3, 1.0], help="MABWiser's alpha grid (LinUCB: the bonus; LinTS: the posterior scale)")
    p.add_argument('--mab-l2s', nargs='+', type=float, default=[1.0, 10.0], help="MABWiser's l2_lambda grid")
    p.add_argument('--mab-dims', type=int, default=16, help='PCA dimensions of the FLM item vectors in its contexts')
    p.add_argument('--mab-negatives', type=int, default=4, help='unrated items per training rating in its warm start (rewards 0)')
    p.add_argument('--repeats', type=int, default=7, help='update timings (median)'); p.add_argument('--refit-repeats', type=int, default=3)
    p.add_argument('--jobs', type=int, default=1, help='simulations run side by side in worker processes (1 thread each)')
    p.add_argument('--quick', action='store_true'); p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.rounds, a.users, a.tune_users = 2, 5, 10, 10
        a.alphas, a.scales, a.epsilons, a.mab_alphas, a.mab_l2s = [1.0], [1.0], [0.1], [1.0], [1.0]
        a.repeats, a.refit_repeats = 3, 1
    return a

def train_models(train, a) -> tuple:
    "The FLM on the training side, and for tuning a second one on part of it: (rec, inner, the inner model's training data, its held-out users)."
    iv, uv = text_vectors(train)
    fit_kw = dict(item_vectors=iv, user_vectors=uv, progress=False, **(dict(epochs=2) if a.quick else {}))
    set_seed(42)
    rec = Recommender.from_learner(train_flm(train, None, objective='both', **fit_kw), train)
    fit_, val_ = train.split('cold_users', pct=0.2, seed=1)          # every choice on held-out users of the *training* side
    set_seed(42)
    inner = Recommender.from_learner(train_flm(fit_, None, objective='both', **fit_kw), fit_)
    return rec, inner, fit_, val_

def tune_all(sim, inner, fit_, val_, a, res) -> tuple:
    "Every setting chosen on the training side's held-out users: ours (`chosen`) and MABWiser's (`peer_settings`, built on the full training side later)."
    tune_kw = dict(rounds=a.rounds if a.view == 'simulator' else min(a.rounds, 10), k=a.k, n_users=a.tune_users)
    state = dict(sim=sim, inner=inner, val=val_, peers={})
    chosen, peer_settings = {}, {}
    for pol, key, grid in (('linucb', 'alpha', a.alphas), ('thompson', 'scale', a.scales), ('epsilon', 'epsilon', a.epsilons)):
        if pol not in a.policies: continue
        g = {str(v): v for v in grid}
        best, res['tuning'][pol] = tune(f'{pol} {key}', lambda k, s: ('inner', 'val', pol, None, s, dict(tune_kw, **{key: g[k]})), g, state, a.jobs)
        chosen[pol] = {key: float(best)}
    for pol in [p for p in a.policies if p in PEERS]:
        kind = pol.split('-')[1]
        grid = {f'alpha={al} l2={l2}': (al, l2) for al in a.mab_alphas for l2 in a.mab_l2s}
        state['peers'] = {k: MabwiserPolicy(inner, fit_, kind, *v, dims=a.mab_dims, negatives=a.mab_negatives) for k, v in grid.items()}
        best, res['tuning'][pol] = tune(pol, lambda k, s: ('inner', 'val', pol, k, s, tune_kw), grid, state, a.jobs)
        peer_settings[pol] = (kind, *grid[best])
    return chosen, peer_settings

def summarise(d, n_items) -> dict:
    "One policy's runs: per seed clicks per user, coverage and cumulative curves; in the simulator view also expected clicks, regret and the start-rating breakdown."
    per_seed = d.groupby('seed').apply(clicks_per_user, include_groups=False)
    cov = d.groupby('seed').apply(lambda x: len({i for l in x['items'] for i in l}) / n_items, include_groups=False)
    def curve(col):
        c = (d.groupby(['seed', 'round'])[col].sum() / d.groupby('seed').user.nunique()).groupby('seed').cumsum().unstack('round')
        return c.mean().tolist(), c.std().fillna(0).tolist()
    mean, std = mean_std(per_seed)
    out = dict(clicks_per_user=per_seed.tolist(), mean=mean, std=std, coverage=cov.tolist(), coverage_mean=float(cov.mean()))
    out['curve_mean'], out['curve_std'] = curve('clicks')
    if 'expected' not in d.columns: return out
    for col in ('expected', 'regret', 'oracle'):
        ps = d.groupby('seed')[col].sum() / d.groupby('seed').user.nunique()
        out[col] = dict(per_seed=ps.tolist(), mean=float(ps.mean()), std=float(ps.std()))
    out['regret_curve_mean'], out['regret_curve_std'] = curve('regret')
    bs = by_start(d)
    out['by_start'] = {str(int(n)): dict(mean=float(r[('clicks per user', 'mean')]), std=float(r[('clicks per user', 'std')]),
                                         users_per_seed=float(r[('users', 'mean')])) for (_, n), r in bs.iterrows()}
    out['by_start_per_seed'] = {str(int(n)): (g.groupby('seed').clicks.sum() / g.groupby('seed').user.nunique()).tolist() for n, g in d.groupby('n_start')}
    return out

def targets(P) -> dict:
    "The targets of #27 on the simulator: LinUCB and Thompson against greedy (>= +10 %, mean difference > 2 std of the per-seed differences), overall and by start ratings; our best against MABWiser's best."
    out, g = {}, P.get('greedy')
    for pol in [p for p in ('linucb', 'thompson', 'epsilon', 'popularity') if p in P and g]:
        t = paired_gain(P[pol]['clicks_per_user'], g['clicks_per_user'])
        out[f'{pol}_vs_greedy'] = t | dict(met=t['rel_gain'] >= 0.10 and t['mean_diff'] > 0 and t['exceeds_noise'],
                                           expected=paired_gain(P[pol]['expected']['per_seed'], g['expected']['per_seed']),
                                           by_start={n: paired_gain(P[pol]['by_start_per_seed'][n], v) for n, v in g['by_start_per_seed'].items()
                                                     if len(v) >= 2 and len(v) == len(P[pol]['by_start_per_seed'].get(n, []))})
    ex = [out[k] for k in ('linucb_vs_greedy', 'thompson_vs_greedy') if k in out]
    if ex: out['explore_target_met'] = any(t['met'] for t in ex)
    ours = [p for p in ('greedy', 'epsilon', 'linucb', 'thompson') if p in P]
    peers = [p for p in PEERS if p in P]
    if ours and peers:
        best, peer = max(ours, key=lambda p: P[p]['mean']), max(peers, key=lambda p: P[p]['mean'])
        out['ours_vs_mabwiser'] = dict(ours=best, mabwiser=peer, **paired_gain(P[best]['clicks_per_user'], P[peer]['clicks_per_user']),
                                       met=P[best]['mean'] >= P[peer]['mean'])
    return out

def main(argv=None):
    argv = [str(x) for x in (sys.argv[1:] if argv is None else argv)]
    a = parse(argv)
    torch.set_num_threads(2)
    prov = Run(__spec__.name, argv, out=a.out)
    print(prov.banner(), flush=True)
    run = dict(command=prov.start['command'], date=prov.start['date'], load_average_start=prov.start['load_average_start'],
               settings=dict(view=a.view, jobs=a.jobs, seeds=a.seeds, rounds=a.rounds, k=a.k, users=a.users, tune_users=a.tune_users, like=LIKE, start=[0, 2]))
    data = movielens('ml-100k')
    train, held = data.split('cold_users', pct=0.2, seed=0)
    res = dict(run=run, view=a.view, policies={}, timing={}, tuning={}, peer=dict(design=MabwiserPolicy.__doc__, settings={}))
    if a.view == 'simulator':
        truth, res['truth'] = ground_truth(data, a.truth)
        sim = functools.partial(simulate_clicks, truth=truth)
        res['view_note'] = 'semi-synthetic: clicks drawn from the frozen ground truth (EASE, calibrated), the same coins for every policy'
    else:
        sim = simulate
        res['view_note'] = ('replay (biased): an item the user never rated counts as no click, so showing the unfamiliar items that '
                            'exploration is for is punished; it favours popular, familiar lists')
    rec, inner, fit_, val_ = train_models(train, a)
    chosen, peer_settings = tune_all(sim, inner, fit_, val_, a, res)
    peers = {}
    for pol, (kind, al, l2) in peer_settings.items():
        peers[pol] = MabwiserPolicy(rec, train, kind, al, l2, dims=a.mab_dims, negatives=a.mab_negatives)
        res['peer']['settings'][pol] = dict(peers[pol].settings, warm_start=peers[pol].warm_start)
    res['chosen'] = chosen
    if a.view == 'replay': res['timing'] = timing(rec, held, a)
    jobs = [('rec', 'held', pol, pol if pol in peers else None, seed, dict(rounds=a.rounds, k=a.k, n_users=a.users, **chosen.get(pol, {})))
            for pol in a.policies for seed in range(a.seeds)]
    runs = []
    for (_, _, pol, _, seed, _), (d, sec) in zip(jobs, run_jobs(jobs, dict(sim=sim, rec=rec, held=held, peers=peers), a.jobs)):
        runs.append(d)
        print(f"  {pol} seed {seed}: {clicks_per_user(d):.3f} clicks per user ({sec:.0f}s)", flush=True)
    all_runs = pd.concat(runs, ignore_index=True)
    for pol, d in all_runs.groupby('policy', sort=False): res['policies'][pol] = summarise(d, data.n_items)
    P = res['policies']
    g = P.get('greedy')
    for pol, v in P.items():
        if g: v['vs_greedy'] = v['mean'] / g['mean'] - 1
        print(f"{pol:18s} clicks/user {v['mean']:.3f} ± {v['std']:.3f}  coverage {v['coverage_mean']:.3f}" + (f"  vs greedy {v['vs_greedy']:+.1%}" if g else '')
              + (f"  regret {v['regret']['mean']:.3f}" if 'regret' in v else ''))
    ours = {p: P[p] for p in OURS if p in P and p != 'popularity'}
    if ours:
        best = max(ours, key=lambda p: ours[p]['mean'])
        for pol in [p for p in PEERS if p in P]:
            same = [x - y for x, y in zip(P[best]['clicks_per_user'], P[pol]['clicks_per_user'])]     # the same seeds: the same users
            res['peer'][pol] = dict(clicks_per_user=P[pol]['mean'], our_best=best, our_best_clicks_per_user=P[best]['mean'],
                                    diff=P[best]['mean'] - P[pol]['mean'], diff_per_seed=same, rel=P[pol]['mean'] / P[best]['mean'] - 1,
                                    popularity_clicks_per_user=P.get('popularity', {}).get('mean'))
            print(f"{pol}: {P[pol]['mean']:.3f} clicks/user, {res['peer'][pol]['rel']:+.1%} against our best ({best}, {P[best]['mean']:.3f})", flush=True)
    if a.view == 'simulator':
        res['targets'] = targets(P)
        print('targets:', json.dumps({k: (v.get('met'), round(v.get('rel_gain', 0), 4)) if isinstance(v, dict) else v for k, v in res['targets'].items()}), flush=True)
    p = prov.record()
    run.update(wall_seconds=p['wall_seconds'], load_average_end=p['load_average_end'])
    prov.write(res, a.out, p)
    if a.out: print('wrote', a.out)
    return res

if __name__ == '__main__': main()
