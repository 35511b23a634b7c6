"""The semi-synthetic simulator's ground truth, fitted and frozen before any policy is tuned on it (#27).

    python -m benchmarks.simulator --out benchmarks/results/feedback_truth.json    # ml-100k, about 3 minutes on 2 cores
    python -m benchmarks.simulator --quick                                          # CI-size: 20 % of the users, one ridge

What it writes (`fine_tuning_flm.feedback.ClickTruth`, read back by `ClickTruth.from_json`): a click probability for every
(user, item) of ml-100k, from a model of another family than the FLM (EASE, Steck 2019, on the 0/1 matrix of every rating),
fitted on all the ratings (by `--folds` models, each on all but one fold of them) and calibrated on held-out ones.
- Probabilities: a rated pair's from the fold model that did not see it (out of fold), an unrated pair's the mean over the
  fold models. No probability comes from a model fitted on that pair, and every model has the density its calibration saw.
- Calibration: the isotonic map from an out-of-fold score to the probability that the held-out fold holds a like (a rating
  >= 4) for that pair, over every pair the fold's model did not see (held-out ratings and unrated pairs).
- The ridge `lam` is chosen from `--lams` on one fold's log loss, with the calibration fitted on the other folds; then
  the calibration is fitted on all folds.
- Two checks of the calibration on pairs no model saw, with reliability tables: `held_out` (fitted on folds 1-4, scored on
  fold 5: a rated pair's case) and `transfer` (fitted on the folds of the other 80 %, applied to a model refitted on all of
  that 80 %, scored on the last fold). The second is the recipe the ground truth does *not* use (fit on a split, calibrate,
  refit on all): a model fitted on more ratings scores higher, and the transferred map over-predicts (measured here).
- `checksum`: the sum of the probabilities, which `ClickTruth.probabilities` must rebuild; `truth_stats`: what the world
  looks like (mean probability on likes, on other ratings, on unrated pairs; the oracle's and the popularity list's
  expected clicks over 20 rounds of 5 items).
"""
import argparse, sys
import numpy as np

from fine_tuning_flm.data import Interactions
from fine_tuning_flm.feedback import (ClickTruth, calibration_pairs, calibration_summary, ease_weights, fit_calibration,
                                      fold_of, interaction_matrix, reliability)
from benchmarks.common import movielens
from benchmarks.provenance import Run

def choose_lam(data, lams, folds, seed, like) -> tuple:
    "The ridge with the lowest log loss on the last fold, the calibration fitted on the others; with every ridge's log loss."
    out = {}
    for lam in lams:
        s, t = calibration_pairs(data, lam, folds, seed, like)
        x, y = fit_calibration(s[:-1], t[:-1])
        out[str(lam)] = dict(summary=calibration_summary(np.interp(s[-1], x, y), t[-1]), s=s, t=t)
        print(f"lam {lam}: held-out fold log loss {out[str(lam)]['summary']['log_loss']:.5f}", flush=True)
    best = min(out, key=lambda k: out[k]['summary']['log_loss'])
    return float(best), out

def transfer_check(data, lam, folds, seed, like) -> tuple:
    """A calibration fitted on folds of all but the last fold's ratings, applied to a model refitted on all of them, scored on the last fold:
    the 'fit on a split, calibrate, refit on all' recipe, which the ground truth does not use."""
    last = fold_of(len(data.ratings), folds, seed) == folds - 1
    inner = Interactions(data.ratings[~last].reset_index(drop=True), data.items, data.users, data.scale, 'inner')
    s, t = calibration_pairs(inner, lam, folds - 1, seed + 1, like)
    x, y = fit_calibration(s, t)
    X = interaction_matrix(inner)
    S = X @ ease_weights(X, lam)
    r = data.ratings[last & (data.ratings.rating >= like).to_numpy()]
    L = np.zeros_like(X); L[r.user.to_numpy(), r.item.to_numpy()] = 1.0
    p, lab = np.interp(S[X == 0], x, y), L[X == 0]
    return calibration_summary(p, lab), reliability(p, lab)

def world(P, data, like, rounds=20, k=5) -> dict:
    "What the ground truth looks like: mean probability by kind of pair, and expected clicks per user of the oracle, the popularity list and chance."
    X = interaction_matrix(data)
    L = np.zeros_like(X); r = data.ratings[data.ratings.rating >= like]; L[r.user.to_numpy(), r.item.to_numpy()] = 1
    n = rounds * k
    top = -np.sort(-P, 1)[:, :n].sum(1)
    pop = np.argsort(-X.sum(0), kind='stable')[:n]
    return dict(mean=float(P.mean()), on_likes=float(P[L == 1].mean()), on_rated_below_like=float(P[(X == 1) & (L == 0)].mean()),
                on_unrated=float(P[X == 0].mean()), max=float(P.max()), shown_per_user=n,
                oracle_top100_per_user=float(top.mean()), oracle_top100_quantiles=dict(zip(('10%', '50%', '90%'), np.quantile(top, [.1, .5, .9]).tolist())),
                popular100_per_user=float(P[:, pop].sum(1).mean()), random100_per_user=float(P.mean() * n))

def parse(argv):
    p = argparse.ArgumentParser(prog='python -m benchmarks.simulator', description=__doc__.splitlines()[0])
    p.add_argument('--lams', nargs='+', type=float, default=[100.0, 250.0, 500.0, 1000.0], help="EASE ridges to choose from")
    p.add_argument('--folds', type=int, default=5); p.add_argument('--seed', type=int, default=0)
    p.add_argument('--like', type=float, default=4.0, help='a held-out rating this high is a click, in calibration')
    p.add_argument('--sample', type=float, default=None, help='keep this fraction of the users (a smaller world, for tests)')
    p.add_argument('--quick', action='store_true', help='CI-size: 20 %% of the users, one ridge')
    p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    if a.quick: a.lams, a.sample = [250.0], a.sample or 0.2
    return a

def main(argv=None):
    argv = [str(x) for x in (sys.argv[1:] if argv is None else argv)]
    a = parse(argv)
    prov = Run(__spec__.name, argv, out=a.out)
    print(prov.banner(), flush=True)
    data = movielens('ml-100k')
    if a.sample: data = data.sample(a.sample, seed=a.seed)
    lam, grid = choose_lam(data, a.lams, a.folds, a.seed, a.like)
    s, t = grid[str(lam)]['s'], grid[str(lam)]['t']
    x_, y_ = fit_calibration(s[:-1], t[:-1])
    held = dict(summary=grid[str(lam)]['summary'], table=reliability(np.interp(s[-1], x_, y_), t[-1]).to_dict('list'))
    x, y = fit_calibration(s, t)                                   # the map of the ground truth: all folds
    tr_sum, tr_tab = transfer_check(data, lam, a.folds, a.seed, a.like)
    truth = ClickTruth(lam=lam, folds=a.folds, seed=a.seed, like=a.like, x=x, y=y)
    P = truth.probabilities(data)
    stats = world(P, data, a.like)
    res = dict(dataset=data.name, n_users=data.n_users, n_items=data.n_items, n_ratings=len(data.ratings),
               model=("EASE (Steck 2019) on the 0/1 matrix of every rating, one model per fold (each fitted on the other folds); a rated pair's "
                      "probability from its out-of-fold model, an unrated pair's the mean over the fold models"),
               truth=dict(lam=lam, folds=a.folds, seed=a.seed, like=a.like, x=x, y=y),
               choice=dict(held_out_log_loss={k: v['summary']['log_loss'] for k, v in grid.items()}, chosen=lam,
                           how='the lowest log loss on the last fold, calibration fitted on the other folds'),
               calibration=dict(held_out=held, transfer=dict(summary=tr_sum, table=tr_tab.to_dict('list'))),
               checksum=dict(sum=float(P.sum(dtype=np.float64)), shape=list(P.shape)), truth_stats=stats)
    print(f"lam {lam}; held-out fold: log loss {held['summary']['log_loss']:.5f} (base rate {held['summary']['log_loss_base_rate']:.5f}), "
          f"ECE {held['summary']['ece']:.5f}; transfer: log loss {tr_sum['log_loss']:.5f}, ECE {tr_sum['ece']:.5f}", flush=True)
    print({k: round(v, 4) for k, v in stats.items() if isinstance(v, float)}, flush=True)
    prov.write(res, a.out)
    if a.out: print('wrote', a.out)
    return res

if __name__ == '__main__': main()
