"""FLM (frozen MiniLM text) against its peers on ml-100k's official folds, all measured in one run.

    python -m benchmarks.flm_ml100k --out benchmarks/results/flm_ml100k.json   # u1-u5, cold items, time to SVD's RMSE
    python -m benchmarks.flm_ml100k --folds u1 --epochs 3 --no-fastai --no-cold  # a short run

Prints one table per part and, with --out, writes every number as JSON (the notebooks show that file).
Peers: Surprise SVD (default parameters, the fastest peer) and fastai's EmbeddingDotBias (collab_learner,
50 factors, 5 epochs of fit_one_cycle at 5e-3 with wd=0.1, as in fastbook). Item text: title, year and genres;
user text: demographics only. The FLM uses `train_flm`'s recipe, a fixed number of epochs, final weights:
the test fold is never used to choose anything.
"""
import argparse, sys, time
import pandas as pd, torch

from fastai.callback.core import Callback
from fine_tuning_flm.core import set_seed
from fine_tuning_flm.evaluation import UserMean
from fine_tuning_flm.learner import FLM_RECIPE, text_vectors, train_flm
from fine_tuning_flm.metrics import rmse
from benchmarks.common import movielens
from benchmarks.provenance import Run

def svd_fold(trn, tst, seed=0):
    from surprise import SVD, Dataset, Reader
    r = trn.ratings
    ds = Dataset.load_from_df(pd.DataFrame({'u': r.user, 'i': r.item, 'r': r.rating}), Reader(rating_scale=trn.scale))
    t = time.perf_counter(); algo = SVD(random_state=seed); algo.fit(ds.build_full_trainset()); fit = time.perf_counter() - t
    pred = [algo.predict(u, i).est for u, i in zip(tst.ratings.user, tst.ratings.item)]
    return rmse(pred, tst.ratings.rating), fit

def fastai_fold(trn, tst, seed=0):
    "fastbook's recipe on the fold's own split (CollabDataLoaders.from_df can only split at random)."
    from fastai.collab import TabularCollab, collab_learner
    from fastai.data.block import TransformBlock
    from fastai.tabular.core import Categorify
    set_seed(seed)
    df = lambda d: pd.DataFrame({'user': d.ratings.user, 'item': d.ratings.item, 'rating': d.ratings.rating})
    both = pd.concat([df(trn), df(tst)], ignore_index=True)
    to = TabularCollab(both, [Categorify], cat_names=['user', 'item'], y_names=['rating'], y_block=TransformBlock(),
                       splits=(list(range(len(trn))), list(range(len(trn), len(both)))))
    learn = collab_learner(to.dataloaders(bs=64), n_factors=50, y_range=(0, 5.5))
    t = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(5, 5e-3, wd=0.1)
    fit = time.perf_counter() - t
    with learn.no_bar(): p, y = learn.get_preds()
    return rmse(p.squeeze(), y.squeeze()), fit

class EpochClock(Callback):
    "Wall time and valid RMSE after every epoch."
    order = 90
    def before_fit(self): self.t0, self.log = time.perf_counter(), []
    def after_epoch(self): self.log.append((time.perf_counter() - self.t0, float(self.recorder.values[-1][2])))

def flm_fold(trn, tst, iv, uv, **kw):
    clock = EpochClock()
    t = time.perf_counter()
    learn = train_flm(trn, tst, item_vectors=iv, user_vectors=uv, progress=False, cbs=[clock], **kw)
    fit = time.perf_counter() - t
    m = learn.model
    # cold=True: the few test items without a training rating in a fold are predicted from their text (SVD uses its biases)
    return rmse(m.predict(tst.ratings.user, tst.ratings.item, cold=True), tst.ratings.rating), fit, clock.log

def main(argv=None):
    argv = [str(x) for x in (sys.argv[1:] if argv is None else argv)]
    p = argparse.ArgumentParser(prog='python -m benchmarks.flm_ml100k', description=__doc__.splitlines()[0])
    p.add_argument('--folds', nargs='+', default=['u1', 'u2', 'u3', 'u4', 'u5'])
    p.add_argument('--no-fastai', action='store_true', help='skip the fastai EmbeddingDotBias peer (~25 s/fold here)')
    p.add_argument('--no-cold', action='store_true', help='skip the cold-item part')
    p.add_argument('--epochs', type=int, default=None, help=f"FLM epochs (default: the recipe's {FLM_RECIPE['epochs']}); fewer for a smoke test")
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch default)')
    p.add_argument('--out', default=None, help='write all numbers here as JSON')
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    prov = Run(__spec__.name, argv, out=a.out)
    print(prov.banner(), flush=True)
    data = movielens('ml-100k')
    res = dict(recipe=FLM_RECIPE.asdict(), folds={}, command=prov.start['command'], date=prov.start['date'])
    t = time.perf_counter()
    trn0, _ = data.split('official', fold=a.folds[0])
    iv, uv = text_vectors(trn0)                  # user texts are demographics only: the same for every fold
    res['encode_seconds'] = time.perf_counter() - t
    rows = []
    for f in a.folds:
        trn, tst = data.split('official', fold=f)
        r = dict(fold=f)
        r['svd_rmse'], r['svd_fit_s'] = svd_fold(trn, tst)
        if not a.no_fastai: r['fastai_rmse'], r['fastai_fit_s'] = fastai_fold(trn, tst)
        r['flm_rmse'], r['flm_fit_s'], log = flm_fold(trn, tst, iv, uv, epochs=a.epochs)
        r['flm_epochs_to_svd'] = next((i + 1 for i, (_, v) in enumerate(log) if v <= r['svd_rmse']), None)
        r['flm_s_to_svd'] = next((s for s, v in log if v <= r['svd_rmse']), None)
        res['folds'][f] = dict(r, curve=log); rows.append(r)
        print(f"{f}: FLM {r['flm_rmse']:.4f} ({r['flm_fit_s']:.1f}s)  SVD {r['svd_rmse']:.4f} ({r['svd_fit_s']:.2f}s)" +
              (f"  fastai {r['fastai_rmse']:.4f} ({r['fastai_fit_s']:.1f}s)" if 'fastai_rmse' in r else ''), flush=True)
    df = pd.DataFrame(rows).set_index('fold')
    df.loc['mean'] = df.mean(numeric_only=True)
    res['table'] = df.round(4).reset_index().to_dict('records')
    u1 = res['folds'].get('u1')
    if u1 and u1['flm_s_to_svd'] is not None:
        res['time_to_svd'] = dict(svd_fit_s=u1['svd_fit_s'], flm_s_to_svd=u1['flm_s_to_svd'], epochs=u1['flm_epochs_to_svd'],
                                  ratio=u1['flm_s_to_svd']/u1['svd_fit_s'], ratio_incl_encoding=(u1['flm_s_to_svd'] + res['encode_seconds'])/u1['svd_fit_s'])
    print('\n' + df.round(4).to_string())
    if 'time_to_svd' in res:
        tt = res['time_to_svd']
        print(f"\nu1: FLM reaches SVD's RMSE after {tt['epochs']} epochs, {tt['flm_s_to_svd']:.2f}s vs SVD's fit {tt['svd_fit_s']:.2f}s: "
              f"{tt['ratio']:.1f}x ({tt['ratio_incl_encoding']:.1f}x counting the one-off text encoding of {res['encode_seconds']:.1f}s)")
    if not a.no_cold:
        ctrn, ctst = data.split('cold_items', pct=0.2, seed=0)
        civ, cuv = text_vectors(ctrn)
        learn = train_flm(ctrn, ctst, item_vectors=civ, user_vectors=cuv, epochs=a.epochs, progress=False)
        cold = rmse(learn.model.predict(ctst.ratings.user, ctst.ratings.item, cold=True), ctst.ratings.rating)
        um = UserMean().fit(ctrn).predict(ctst.ratings.user, ctst.ratings.item, cold=True)
        res['cold_items'] = dict(flm_text_path_rmse=cold, user_mean_rmse=rmse(um, ctst.ratings.rating), n_test=len(ctst))
        print(f"\ncold items (20% of items held out, seed 0): FLM text path RMSE {cold:.4f}, user-mean baseline {res['cold_items']['user_mean_rmse']:.4f}")
    p = prov.record()
    res['wall_seconds'] = p['wall_seconds']
    print(f"\nwall time {res['wall_seconds']:.0f}s")
    return prov.write(res, a.out, p)

if __name__ == '__main__': main()
