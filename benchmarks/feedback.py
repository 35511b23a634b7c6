#!/usr/bin/env python
"""Explore or exploit: our policies against greedy, popularity and MABWiser's LinUCB/LinTS in one replay simulation.

    python benchmarks/feedback.py --out benchmarks/results/feedback.json          # 5 seeds, T = 20 rounds (about half an hour on 2 cores)
    python benchmarks/feedback.py --quick                                         # CI-size: 2 seeds, 10 users, 5 rounds, no MABWiser

Protocol (`feedback.simulate`, Li et al. 2011's replay): ml-100k, `split('cold_users', pct=0.2, seed=0)`. The FLM
(`train_flm(objective='both')`, trained once on the training side) never saw the held-out users. Each one arrives
with 0-2 of their own ratings; each round a policy shows k = 5 items it has not shown them before; an item the user
rated is revealed (a rating >= 4 is a click, any other rating no click), an item they never rated counts as no click;
the model learns the revealed ratings through `Recommender.update`; T = 20 rounds. Reported per policy: cumulative
clicks per user at T (mean and std over seeds) and the share of the catalogue shown to anyone.

The peer, MABWiser (`pip install mabwiser`): LinUCB and LinTS (alpha 1, l2 1), one bandit over every item (the arms),
shared by all users and learned online from their feedback in the same simulation, warm-started on the training side
(a training rating >= 4 is a reward of 1). The context of a user is the mean MiniLM text vector of the items they
clicked so far (zeros before the first click), reduced to 16 dimensions by a PCA of the item vectors, plus a constant:
the same item text our FLM reads, without our trained factors.

LinUCB's alpha and Thompson sampling's posterior scale are chosen (a small grid, 2 seeds, up to 10 rounds) on a second
`cold_users` split of the training side, with a model trained on the rest of it: the test users choose nothing.

Also timed in the same run: `update` for one user with 5 new ratings against `refit` (a warm-started 2-epoch retrain).
"""
import argparse, copy, datetime, json, os, platform, sys, time
import numpy as np, pandas as pd, torch

from fine_tuning_flm.core import atomic_write, set_seed
from fine_tuning_flm.data import load_movielens
from fine_tuning_flm.learner import text_vectors, train_flm
from fine_tuning_flm.recommend import Recommender
from fine_tuning_flm.feedback import simulate

class MabwiserPolicy:
    "MABWiser's LinUCB or LinTS as a policy of `simulate`: a shared bandit over every item, with the user's clicked-text profile as context."
    def __init__(self, rec, train, kind='LinUCB', dims=16, seed=0):
        from mabwiser.mab import MAB, LearningPolicy
        v = rec.model.i_text.vectors.numpy().astype(np.float64)
        self.mean = v.mean(0); u, s, vt = np.linalg.svd(v - self.mean, full_matrices=False)
        self.proj = vt[:dims].T
        self.item_ctx = (v - self.mean) @ self.proj                                           # (n_items, dims)
        lp = getattr(LearningPolicy, kind)(alpha=1.0, l2_lambda=1.0)
        self.mab = MAB(arms=list(range(rec.model.n_items)), learning_policy=lp, seed=seed)
        r = train.ratings
        ctx = self._profiles(train)
        self.mab.fit(decisions=r.item.to_numpy(), rewards=(r.rating.to_numpy() >= 4).astype(float), contexts=ctx[r.user.to_numpy()])
        self.clicked = {}
    def _profiles(self, train):
        liked = train.ratings[train.ratings.rating >= 4]
        prof = np.zeros((train.n_users, self.item_ctx.shape[1]))
        n = np.bincount(liked.user, minlength=train.n_users)
        np.add.at(prof, liked.user.to_numpy(), self.item_ctx[liked.item.to_numpy()])
        return np.hstack([prof / np.maximum(n, 1)[:, None], np.ones((train.n_users, 1))])
    def context(self, u):
        c = self.clicked.get(u, [])
        return np.r_[self.item_ctx[c].mean(0) if c else np.zeros(self.item_ctx.shape[1]), 1.0][None]
    def __call__(self, rec, u, scores, k, rng, **kw):
        exp = self.mab.predict_expectations(self.context(u))
        e = torch.tensor([exp[a] for a in range(rec.model.n_items)], dtype=torch.float64)
        e = e.masked_fill(~torch.isfinite(scores), -torch.inf)
        return torch.topk(e, min(k, int(torch.isfinite(e).sum()))).indices.numpy()
    def learn(self, u, codes, clicks):
        "After a round: the shown items and their clicks (1/0) teach the bandit; the user's clicked items move their context."
        ctx = np.repeat(self.context(u), len(codes), 0)
        self.mab.partial_fit(decisions=list(codes), rewards=list(clicks), contexts=ctx)
        self.clicked.setdefault(u, []).extend(int(c) for c, y in zip(codes, clicks) if y)

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seeds', type=int, default=5); p.add_argument('--rounds', type=int, default=20); p.add_argument('-k', type=int, default=5)
    p.add_argument('--users', type=int, default=None, help='simulate this many held-out users per seed (default: all)')
    p.add_argument('--policies', nargs='+', default=['greedy', 'epsilon', 'popularity', 'linucb', 'thompson', 'MABWiser-LinUCB', 'MABWiser-LinTS'])
    p.add_argument('--alphas', nargs='+', type=float, default=[0.1, 0.3, 1.0], help="LinUCB's alpha grid, chosen on a split of the training side")
    p.add_argument('--scales', nargs='+', type=float, default=[0.1, 0.3, 1.0], help="Thompson sampling's posterior scale grid, chosen likewise")
    p.add_argument('--quick', action='store_true'); p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    if a.quick: a.seeds, a.rounds, a.users, a.policies, a.alphas, a.scales = 2, 5, 10, [x for x in a.policies if not x.startswith('MABWiser')], [1.0], [1.0]
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    run = dict(command='python benchmarks/feedback.py ' + ' '.join(argv), date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
               load_average_start=os.getloadavg(), settings=dict(seeds=a.seeds, rounds=a.rounds, k=a.k, users=a.users, like=4.0, start=[0, 2]))
    print(run['command'], run['date'], 'load average', run['load_average_start'], flush=True)
    data = load_movielens('ml-100k')
    train, held = data.split('cold_users', pct=0.2, seed=0)
    iv, uv = text_vectors(train)
    set_seed(42)
    learn = train_flm(train, None, objective='both', item_vectors=iv, user_vectors=uv, progress=False, **(dict(epochs=2) if a.quick else {}))
    rec = Recommender.from_learner(learn, train)
    res = dict(run=run, policies={}, timing={}, tuning={})
    # LinUCB's alpha and Thompson's scale, chosen on held-out users of the *training* side (a second cold_users split): the test users choose nothing
    fit_, val_ = train.split('cold_users', pct=0.2, seed=1)
    set_seed(42)
    inner = Recommender.from_learner(train_flm(fit_, None, objective='both', item_vectors=iv, user_vectors=uv, progress=False,
                                               **(dict(epochs=2) if a.quick else {})), fit_)
    tune_kw = dict(rounds=min(a.rounds, 10), k=a.k, n_users=a.users or 60)
    chosen = {}
    for pol, key, grid in (('linucb', 'alpha', a.alphas), ('thompson', 'scale', a.scales)):
        score = {v: float(np.mean([simulate(inner, val_, pol, seed=s, **tune_kw, **{key: v}).clicks.sum() for s in range(2)])) for v in grid}
        chosen[pol] = {key: max(score, key=score.get)}
        res['tuning'][pol] = dict(grid={str(k): v for k, v in score.items()}, chosen=chosen[pol])
        print(f"tuning {pol} {key} on the training side: {score} -> {chosen[pol]}", flush=True)
    # update vs refit, one user, 5 new ratings
    u = int(held.ratings.user.iloc[0]); r5 = held.ratings[held.ratings.user == u].head(5)
    new = pd.DataFrame({'user': [rec.users.id[u]] * len(r5), 'item': rec.items.id[r5.item].tolist(), 'rating': r5.rating.tolist()})
    r_up = copy.deepcopy(rec)
    t = time.perf_counter(); r_up.update(new); up = time.perf_counter() - t
    t = time.perf_counter(); r_up.refit(epochs=1 if a.quick else 2); rf = time.perf_counter() - t
    res['timing'] = dict(update_seconds=up, refit_seconds=rf, ratio=rf / up)
    print(f"update (1 user, 5 ratings) {up*1000:.1f} ms; refit {rf:.1f} s: refit / update = {rf/up:.0f}x", flush=True)
    runs = []
    for pol in a.policies:
        for seed in range(a.seeds):
            if pol.startswith('MABWiser'):
                peer = MabwiserPolicy(rec, train, pol.split('-')[1], seed=seed); peer.name = pol
            t = time.perf_counter()
            d = simulate(rec, held, policy=peer if pol.startswith('MABWiser') else pol, rounds=a.rounds, k=a.k, n_users=a.users, seed=seed, **chosen.get(pol, {}))
            runs.append(d)
            print(f"  {pol} seed {seed}: {d.clicks.sum() / d.user.nunique():.3f} clicks per user ({time.perf_counter()-t:.0f}s)", flush=True)
    all_runs = pd.concat(runs, ignore_index=True)
    for pol, d in all_runs.groupby('policy'):
        per_seed = d.groupby('seed').apply(lambda x: x.clicks.sum() / x.user.nunique(), include_groups=False)
        cov = d.groupby('seed').apply(lambda x: len({i for l in x['items'] for i in l}) / data.n_items, include_groups=False)
        curve = (d.groupby(['seed', 'round']).clicks.sum() / d.groupby('seed').user.nunique()).groupby('seed').cumsum().unstack('round')
        res['policies'][pol] = dict(clicks_per_user=per_seed.tolist(), mean=float(per_seed.mean()), std=float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0,
                                    coverage=cov.tolist(), curve_mean=curve.mean().tolist(), curve_std=curve.std().fillna(0).tolist())
    g = res['policies'].get('greedy')
    for pol, v in res['policies'].items():
        if g: v['vs_greedy'] = v['mean'] / g['mean'] - 1
        print(f"{pol:18s} clicks/user {v['mean']:.3f} ± {v['std']:.3f}  coverage {np.mean(v['coverage']):.3f}" + (f"  vs greedy {v['vs_greedy']:+.1%}" if g else ''))
    run['wall_seconds'], run['load_average_end'] = time.perf_counter() - t0, os.getloadavg()
    if a.out:
        with atomic_write(a.out, 'w') as f: json.dump(res, f, indent=1, default=float)
        print('wrote', a.out)
    return res

if __name__ == '__main__': main()
