"""Tune `RANK_RECIPE` on a validation split carved out of the training side only: the test side is never read.

    python -m benchmarks.tune_rank --out benchmarks/results/tune_rank.json
    python -m benchmarks.tune_rank --quick           # a CI-size smoke run (a 20 % sample, 2 epochs)

Data: ml-100k, Microsoft Recommenders' split (`split('recommenders', ratio=0.75, by='item', seed=42)`); its training
side is split again the same way (ratio 0.8, seed 1) into fit and validation parts. Coordinate descent: starting
from `RANK_RECIPE`, each setting in turn takes the grid value with the best validation NDCG@10 (full catalogue,
the user's fit items left out), the others held. Every run, its settings and its score are written to `--out`.
"""
import argparse, json, os, sys, time
import torch

from fine_tuning_flm.core import set_seed
from fine_tuning_flm.learner import RANK_RECIPE, text_vectors, train_flm
from benchmarks.common import movielens
from benchmarks.provenance import Run

GRID = {'bs': [1024, 4096], 'reg': [0.01, 0.03, 0.1], 'n_factors': [32, 64, 128], 'epochs': [6, 8, 12], 'history': [False, True],
        'lr': [5e-3, 1e-2, 2e-2, 4e-2], 'id_dropout': [0.0, 0.1, 0.3], 'temperature': [0.5, 1.0, 2.0], 'text': ['frozen', None]}

def run(fit, val, iv, uv, settings, progress=False):
    t = time.perf_counter()
    learn = train_flm(fit, val, objective=settings.get('objective', RANK_RECIPE['objective']), item_vectors=iv, user_vectors=uv,
                      progress=progress, **{k: v for k, v in settings.items() if k != 'objective'})
    names = learn.recorder.metric_names[1:-1]
    score = float(learn.recorder.values[-1][names.index('ndcg@10')])
    return score, time.perf_counter() - t

def main(argv=None):
    argv = [str(x) for x in (sys.argv[1:] if argv is None else argv)]
    p = argparse.ArgumentParser(prog='python -m benchmarks.tune_rank', description=__doc__.splitlines()[0])
    p.add_argument('--out', default=None); p.add_argument('--quick', action='store_true')
    p.add_argument('--params', nargs='*', default=list(GRID), help='settings to tune, in order')
    a = p.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    prov = Run(__spec__.name, argv, out=a.out)
    print(prov.banner(), flush=True)
    data = movielens('ml-100k')
    if a.quick: data = data.sample(0.2, seed=0)
    trn, _ = data.split('recommenders', ratio=0.75, by='item', seed=42)
    fit, val = trn.split('recommenders', ratio=0.8, by='item', seed=1)
    iv, uv = text_vectors(fit)
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
