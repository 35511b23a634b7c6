"""Tune `RANK_RECIPE` on a validation split carved out of the training side only: the test side is never read.

    python -m benchmarks.tune_rank --out benchmarks/results/tune_rank.json                     # quality: coordinate descent
    python -m benchmarks.tune_rank --speed --out benchmarks/results/tune_rank_speed.json       # speed: the cheapest recipe as good (#24)
    python -m benchmarks.tune_rank --quick           # a CI-size smoke run (a 20 % sample, 2 epochs); with --speed too

Data: ml-100k, Microsoft Recommenders' split (`split('recommenders', ratio=0.75, by='item', seed=42)`); its training
side is split again the same way (ratio 0.8, seed 1) into fit and validation parts. Coordinate descent: starting
from `RANK_RECIPE`, each setting in turn takes the grid value with the best validation NDCG@10 (full catalogue,
the user's fit items left out), the others held. Every run, its settings and its score are written to `--out`.

`--speed` (#24) starts from the descent's choice (`--start`, the committed tune_rank.json: its batch size, learning rate and
epochs, in fp32) and makes it cheaper, one setting at a time, in the order of `SPEED`:
bf16 autocast (`mixed_precision`, where the CPU has bf16 instructions), larger batches with the learning rate scaled
(linearly and by the square root of the batch growth), fewer epochs. Each candidate is scored by its validation NDCG@10,
the mean over `--seeds` training seeds; a setting takes the cheapest value whose score is within `--tol` (0.002) of
the starting recipe's (cheaper: bf16 before fp32, larger batches, fewer epochs), so the drift of the whole descent is
bounded by `--tol`, not by `--tol` per step. Fit seconds are recorded for each run (they vary with the load; the
order above, not the seconds, decides what is cheaper).
"""
import argparse, json, os, sys, time
from pathlib import Path
import torch

from fine_tuning_flm.core import set_seed
from fine_tuning_flm.learner import RANK_RECIPE, text_vectors, train_flm
from benchmarks.common import movielens
from benchmarks.provenance import ROOT, Run

SPEED = ('mixed_precision', 'bs', 'epochs')

GRID = {'bs': [1024, 4096], 'reg': [0.01, 0.03, 0.1], 'n_factors': [32, 64, 128], 'epochs': [6, 8, 12], 'history': [False, True],
        'lr': [5e-3, 1e-2, 2e-2, 4e-2], 'id_dropout': [0.0, 0.1, 0.3], 'temperature': [0.5, 1.0, 2.0], 'text': ['frozen', None]}

def run(fit, val, iv, uv, settings, progress=False):
    t = time.perf_counter()
    learn = train_flm(fit, val, objective=settings.get('objective', RANK_RECIPE['objective']), item_vectors=iv, user_vectors=uv,
                      progress=progress, **{k: v for k, v in settings.items() if k != 'objective'})
    names = learn.recorder.metric_names[1:-1]
    score = float(learn.recorder.values[-1][names.index('ndcg@10')])
    return score, time.perf_counter() - t

def speed_candidates(name, best, quick=False) -> list:
    "Values of setting `name` to try, cheapest first, each a dict of the settings it changes (a larger batch scales the learning rate too)."
    if name == 'mixed_precision': return [dict(mixed_precision=True), dict(mixed_precision=False)]
    if name == 'epochs': return [dict(epochs=e) for e in ([1, 2] if quick else [4, 6, 8, 12]) if e <= best['epochs']]
    bs0, lr0 = best['bs'], best['lr']
    out = []
    for bs in ([4096, 1024] if quick else [8192, 4096, 2048, 1024]):
        if bs < bs0: continue
        lrs = [lr0] if bs == bs0 else [lr0 * bs / bs0, lr0 * (bs / bs0) ** 0.5]
        out += [dict(bs=bs, lr=float(f'{lr:.3g}')) for lr in lrs]
    return out

def speed(a, fit, val, iv, uv, log=print) -> dict:
    "Cheaper settings of `RANK_RECIPE`, one at a time, within `a.tol` of its own validation NDCG@10 (the mean over `a.seeds` seeds)."
    done = json.loads(Path(a.start).read_text())['chosen']['settings'] if a.start else {}   # the descent's choice: where the speed stage starts
    start = {k: done.get(k, RANK_RECIPE[k]) for k in ('bs', 'lr', 'epochs')} | dict(mixed_precision=None)
    if a.quick: start['epochs'] = 2
    runs, cache = [], {}
    def score(s):
        key = json.dumps(s, sort_keys=True)
        if key not in cache:
            per = []
            for seed in range(a.seeds):
                set_seed(seed); per.append(run(fit, val, iv, uv, dict(s, seed=seed)))
            cache[key] = (sum(v for v, _ in per) / len(per), sum(t for _, t in per))
            runs.append(dict(settings=s, ndcg10=round(cache[key][0], 5), per_seed=[round(v, 5) for v, _ in per], seconds=round(cache[key][1], 1)))
            log(f"  {s} -> valid NDCG@10 {cache[key][0]:.4f} ({cache[key][1]:.0f}s for {a.seeds} seeds)")
        return cache[key][0]
    ref = score(dict(start)); best = dict(start); steps = []
    for name in SPEED:
        cands = speed_candidates(name, best, a.quick)
        scores = [(c, score({**best, **c})) for c in cands]
        ok = [(c, v) for c, v in scores if v >= ref - a.tol]
        cheapest = [(c, v) for c, v in ok if ok and c.get(name) == ok[0][0].get(name)]      # the cheapest value; its best learning rate
        choice = max(cheapest, key=lambda cv: cv[1])[0] if cheapest else {k: best[k] for k in cands[0]}
        steps.append(dict(setting=name, tried=[dict(c, ndcg10=round(v, 5)) for c, v in scores], chose=choice))
        log(f"{name}: -> {choice}")
        best.update(choice)
    final = score(dict(best))
    log(f"chosen: {best}  valid NDCG@10 {final:.4f} (start {ref:.4f}, tolerance {a.tol})")
    return dict(start=dict(settings=start, ndcg10=ref), chosen=dict(settings=best, ndcg10=final), tolerance=a.tol, seeds=list(range(a.seeds)),
                steps=steps, runs=runs, order='cheaper: bf16 before fp32, larger batches, fewer epochs')

def main(argv=None):
    argv = [str(x) for x in (sys.argv[1:] if argv is None else argv)]
    p = argparse.ArgumentParser(prog='python -m benchmarks.tune_rank', description=__doc__.splitlines()[0])
    p.add_argument('--out', default=None); p.add_argument('--quick', action='store_true')
    p.add_argument('--params', nargs='*', default=list(GRID), help='settings to tune, in order')
    p.add_argument('--speed', action='store_true', help='the speed stage instead of the descent: cheaper settings within --tol')
    p.add_argument('--tol', type=float, default=0.002, help='--speed: the validation NDCG@10 a cheaper recipe may lose (default 0.002)')
    p.add_argument('--seeds', type=int, default=2, help='--speed: training seeds per candidate (default 2)')
    p.add_argument('--start', default=str(ROOT/'benchmarks'/'results'/'tune_rank.json'), help="--speed: start from the 'chosen' settings of this descent (batch size, "
                   "learning rate, epochs; fp32); '' : from RANK_RECIPE's")
    a = p.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    prov = Run(__spec__.name, argv, out=a.out)
    print(prov.banner(), flush=True)
    data = movielens('ml-100k')
    if a.quick: data = data.sample(0.2, seed=0)
    trn, _ = data.split('recommenders', ratio=0.75, by='item', seed=42)
    fit, val = trn.split('recommenders', ratio=0.8, by='item', seed=1)
    iv, uv = text_vectors(fit)
    split = "ml-100k .split('recommenders', ratio=0.75, by='item', seed=42), its training side .split('recommenders', ratio=0.8, by='item', seed=1)"
    if a.speed:
        res = dict(command=prov.start['command'], date=prov.start['date'], fit_ratings=len(fit), valid_ratings=len(val), split=split, **speed(a, fit, val, iv, uv))
        prov.write(res, a.out)
        if a.out: print(f"wrote {a.out}")
        return res
    best = {k: RANK_RECIPE[k] if k in RANK_RECIPE else 'frozen' for k in GRID if k in RANK_RECIPE or k == 'text'}
    if a.quick: best['epochs'] = 2
    runs, cache = [], {}
    def score(s):
        key = json.dumps(s, sort_keys=True)
        if key not in cache:
            set_seed(0); cache[key] = run(fit, val, iv, uv, s)
            runs.append(dict(settings=s, ndcg10=round(cache[key][0], 5), seconds=round(cache[key][1], 1)))
            print(f"  {s} -> valid NDCG@10 {cache[key][0]:.4f} ({cache[key][1]:.0f}s)", flush=True)
        return cache[key][0]
    base = score(dict(best))
    for k in a.params:
        grid = GRID[k][:2] if a.quick else GRID[k]
        if a.quick and k == 'epochs': grid = [1, 2]
        scores = {json.dumps(v): score({**best, k: v}) for v in grid}
        choice = json.loads(max(scores, key=scores.get))
        print(f"{k}: {scores} -> {choice}", flush=True)
        best[k] = choice
    final = score(dict(best))
    print(f"chosen: {best}  valid NDCG@10 {final:.4f} (start {base:.4f})")
    res = dict(command=prov.start['command'], date=prov.start['date'], fit_ratings=len(fit), valid_ratings=len(val),
               split="ml-100k .split('recommenders', ratio=0.75, by='item', seed=42), its training side .split('recommenders', ratio=0.8, by='item', seed=1)",
               start=dict(settings=runs[0]['settings'], ndcg10=base), chosen=dict(settings=best, ndcg10=final), runs=runs)
    prov.write(res, a.out)
    if a.out: print(f"wrote {a.out}")
    return res

if __name__ == '__main__': main()
