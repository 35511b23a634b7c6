"""One stage of `benchmarks.scale`, in a process of its own, so that its peak memory is its own:

    python -m benchmarks.scale_stage --stage rate --folder /tmp/flm-scale-x/n1000000 --threads 2

prints `RESULT {json}` as its last line. `peak_rss_gb` is this process's `VmHWM` (/proc/self/status) read at the end of
the stage: the largest resident set of this process alone. (`ru_maxrss` would not do: a process started by fork
begins with its parent's peak, which is why every stage of the first scale.json read 4.08 GB, the data generator's.)
The stages are described in `benchmarks.scale`."""
import argparse, json, sys, time
from pathlib import Path
import numpy as np

from benchmarks.common import SEED, binary_matrix, peak_rss_gb

RANK_SETTINGS = dict(objective='rank', negatives='sampled', n_neg=4, bs=4096, history=False)
STAGES = ('load', 'encode', 'rate', 'serve', 'rank', 'als', 'bpr')

def load(folder):
    from fine_tuning_flm.data import load_movielens
    return load_movielens('ml-25m', path=folder)

def stage_load(folder, a):
    t = time.perf_counter(); d = load(folder); s = time.perf_counter() - t
    return dict(seconds=s, rate=len(d) / s, unit='ratings/s')

def stage_encode(folder, a):
    from fine_tuning_flm.embeddings import TextEncoder
    texts = load(folder).items.text.tolist()
    enc = TextEncoder()
    enc.cache_path(texts).unlink(missing_ok=True)                          # measure the encoding, not a read of the cache
    t = time.perf_counter(); v = enc.encode(texts, cache=True, progress=False); s = time.perf_counter() - t
    return dict(seconds=s, rate=len(texts) / s, unit='items/s', n_texts=len(texts), dim=int(v.shape[1]),
                note='fp32 MiniLM on the CPU, batches of 32 sorted by length; cached for the training stages')

def fit_one_epoch(d, objective, **kw):
    "A learner as `train_flm` builds it (the objective's recipe, with `kw` changed), then one epoch of `fit_one_cycle`: (learner, setup seconds, epoch seconds)."
    from fine_tuning_flm.core import set_seed
    from fine_tuning_flm.learner import flm_learner, recipe_for
    r = recipe_for(objective).replace(**kw)
    set_seed(SEED)
    t = time.perf_counter(); learn = flm_learner(d, None, r, seed=SEED); setup = time.perf_counter() - t   # text vectors from the cache, tensors
    t = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, r['lr'])
    return learn, setup, time.perf_counter() - t

def stage_rate(folder, a):
    from fine_tuning_flm.recommend import Recommender
    d = load(folder)
    learn, setup, s = fit_one_epoch(d, 'rate')
    loss = float(learn.recorder.losses[-1]) if learn.recorder.losses else None
    t = time.perf_counter(); Recommender.from_learner(learn, d).save(Path(folder)/'model'); ts = time.perf_counter() - t
    return dict(seconds=s, rate=len(d) / s, unit='ratings/s', setup_seconds=setup, save_seconds=ts, last_batch_loss=loss,
                settings='train_flm objective=rate, its recipe (32 factors, bs 4096, frozen MiniLM item text), 1 epoch, no validation side')

def stage_serve(folder, a):
    from fine_tuning_flm.recommend import Recommender
    t = time.perf_counter(); rec = Recommender.load(Path(folder)/'model'); tl = time.perf_counter() - t
    t = time.perf_counter(); top = rec.recommend_batch(k=10, batch_size=a.serve_batch); s = time.perf_counter() - t
    cells = rec.model.n_users * rec.model.n_items
    return dict(seconds=s, rate=cells / s / 1e3, unit='user-item scores per ms', load_seconds=tl, rows=len(top),
                n_users=rec.model.n_users, n_items=rec.model.n_items, batch_size=a.serve_batch)

def stage_rank(folder, a):
    d = load(folder)
    learn, setup, s = fit_one_epoch(d, **RANK_SETTINGS)
    return dict(seconds=s, rate=len(d) / s, unit='ratings/s', setup_seconds=setup, settings=RANK_SETTINGS)

def stage_als(folder, a):
    try: from implicit.cpu.als import AlternatingLeastSquares
    except ImportError as e: return dict(skipped=f'implicit not installed ({e})')
    X = binary_matrix(load(folder))
    m = AlternatingLeastSquares(factors=64, regularization=0.01, iterations=1, num_threads=a.threads, random_state=SEED)
    t = time.perf_counter(); m.fit(X, show_progress=False); s = time.perf_counter() - t
    return dict(seconds=s, rate=X.nnz / s, unit='ratings/s', settings='factors=64, regularization=0.01, 1 iteration')

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
    return dict(seconds=s, rate=len(r) / s, unit='ratings/s', settings='k=64, learning_rate=0.01, lambda_reg=0.01, 1 epoch')

RUN = {'load': stage_load, 'encode': stage_encode, 'rate': stage_rate, 'serve': stage_serve, 'rank': stage_rank, 'als': stage_als, 'bpr': stage_bpr}

def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m benchmarks.scale_stage', description=__doc__.splitlines()[0])
    p.add_argument('--stage', required=True, choices=STAGES); p.add_argument('--folder', required=True)
    p.add_argument('--threads', type=int, default=2); p.add_argument('--serve-batch', type=int, default=1024)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    import torch
    torch.set_num_threads(a.threads)
    out = RUN[a.stage](Path(a.folder), a)
    if 'seconds' in out: out.update(peak_rss_gb=peak_rss_gb(), peak_rss_of='VmHWM of this stage\'s own process (python -m benchmarks.scale_stage)')
    print('RESULT ' + json.dumps(out), flush=True)
    return out

if __name__ == '__main__': main()
