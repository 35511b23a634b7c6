"""What several benchmark scripts share: MovieLens with no held-out user's tags in an item text, a validation split carved
out of the training side, the evaluation model protocol around a matrix of scores, the warm and cold metrics, timing,
and each process's own peak memory."""
import time
import numpy as np, torch

from fine_tuning_flm.evaluation import evaluate, seen_codes

SEED = 42

def timed(f, *a, **kw):
    "`(f(*a, **kw), seconds)`."
    t = time.perf_counter(); out = f(*a, **kw); return out, time.perf_counter() - t

def peak_rss_bytes() -> int:
    "This process's own peak resident memory: `VmHWM` of /proc/self/status. (`ru_maxrss` is not: a child forked from a large parent starts from the parent's peak.)"
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'): return int(line.split()[1]) * 1024
    raise RuntimeError('no VmHWM line in /proc/self/status (not Linux?)')

def peak_rss_gb() -> float: return peak_rss_bytes() / 2**30
def peak_rss_mib() -> float: return peak_rss_bytes() / 2**20

# ---------------------------------------------------------------------------------------------------- data
def movielens(name:str, **kw):
    """`load_movielens(name)`: its user tags (ml-latest-small, ml-25m) stay in `Interactions.tags`, and `split` builds each
    side's item texts from the tags of that side's training pairs only (#21), so no held-out user's words reach a text."""
    from fine_tuning_flm.data import load_movielens
    d = load_movielens(name, **kw)
    if not hasattr(d, 'tags'): raise RuntimeError('benchmarks need the split-aware tags of #21 (Interactions.tags): update fine_tuning_flm')
    return d

def tag_policy(d) -> str:
    "How the item texts of `d` (from `movielens`) use tags, in words for the results file."
    if getattr(d, 'tags', None) is not None and len(d.tags):
        return "user tags in the item text, rebuilt by split() from the training side's (user, item) pairs only (Interactions.tags, #21)"
    return 'no tags in the item text'

def restrict(test, train):
    "`test` without the ratings of users or items that `train` never saw (a validation split can leave some)."
    su, si = seen_codes(train)
    r = test.ratings
    return test._like(r[su[r.user.to_numpy()] & si[r.item.to_numpy()]], test.name)

VALIDATION = "train.split('recommenders', ratio=0.75, by='item', seed={seed}), validation rows of unseen users/items dropped"

def validation_split(train, seed:int=0, ratio:float=0.75):
    "(fit, valid) carved out of the training side only, as the test side was carved out of the data: nothing here reads the test rows."
    fit, valid = train.split('recommenders', ratio=ratio, by='item', seed=seed)
    return fit, restrict(valid, fit)

# ---------------------------------------------------------------------------------------------------- the model protocol
class Scores:
    "The model protocol of `evaluate` around a function users -> (len(users), n_items) scores; vocabulary from `train`."
    def __init__(self, train, fn):
        self.n_users, self.n_items = train.n_users, train.n_items
        self.seen_users, self.seen_items = seen_codes(train)
        self.fn = fn
    def score_items(self, users, cold=False):
        return torch.as_tensor(np.asarray(self.fn(np.asarray(users, np.int64))), dtype=torch.float32)

def factor_scores(train, U, V, item_bias=None):
    "Dot-product scores from user rows `U` and item rows `V`, both indexed by our codes."
    U, V = np.asarray(U, np.float32), np.asarray(V, np.float32)
    b = np.zeros(V.shape[0], np.float32) if item_bias is None else np.asarray(item_bias, np.float32)
    return Scores(train, lambda u: U[u] @ V.T + b[None])

def binary_matrix(d, min_rating=None):
    "The (n_users, n_items) CSR matrix with a 1 for every rating of `d` (at least `min_rating`)."
    import scipy.sparse as sp
    r = d.ratings if min_rating is None else d.ratings[d.ratings.rating >= min_rating]
    return sp.csr_matrix((np.ones(len(r), np.float32), (r.user.to_numpy(), r.item.to_numpy())), shape=(d.n_users, d.n_items))

def blas_one_thread():
    "A context in which BLAS runs one thread (implicit warns, and slows, when BLAS runs threads of its own)."
    import scipy.linalg                        # noqa: F401 -- loads scipy's own OpenBLAS now, so that the limit reaches it too
    from threadpoolctl import threadpool_limits
    return threadpool_limits(1, 'blas')

# ---------------------------------------------------------------------------------------------------- metrics
def ndcg10(model, test, train) -> float:
    "NDCG@10 over the whole catalogue, each user's training items removed, every test rating relevant (Recommenders' protocol)."
    return float(evaluate(model, test, train, metrics=['ndcg'], k=10).value.iloc[0])

def cold_metrics(model, test, train) -> dict:
    "Cold items (LightFM paper): candidates are the items without training ratings, relevant = test ratings >= 4; per-user AUC and NDCG@10."
    cand = ~seen_codes(train)[1] & np.isin(np.arange(train.n_items), test.ratings.item.unique())
    e = evaluate(model, test, train, metrics=['auc', 'ndcg'], k=10, cold=True, threshold=4, candidates=cand)
    return dict(zip(e.metric, e.value.astype(float))) | {'n_users': int(e.n.iloc[0]), 'n_cold_items': int(cand.sum())}

def mean_std(values) -> tuple:
    "(mean, sample std) of a list; std 0 for one value."
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
