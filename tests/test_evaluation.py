"""Tests of `fine_tuning_flm.evaluation` beyond the lesson: hand-worked metric cases, reference implementations
(scikit-learn, Surprise, per-user loops), properties on random rankings (hypothesis), and the protocol's refusals."""
import numpy as np, pandas as pd, torch
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.metrics import ndcg_score, roc_auc_score
from fine_tuning_flm.data import Interactions, load_movielens
from fine_tuning_flm.metrics import *
from fine_tuning_flm.evaluation import *

needs_100k = pytest.mark.needs_data('ml-100k')           # fails without FLM_DATA (see conftest.py)

def close(a, b, eps=1e-9): np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), atol=eps, rtol=0)

# ---------------------------------------------------------------- hand-worked metric cases

def test_rmse_mae_by_hand():
    close(rmse([3, 4, 5], [4, 4, 3]), np.sqrt(5/3))          # errors 1, 0, 2
    close(mae([3, 4, 5], [4, 4, 3]), 1.0)
    close(rmse([2.5], [4]), 1.5); close(mae(torch.tensor([1., 5.]), np.array([2., 2.])), 2.0)

@pytest.mark.parametrize('bad, msg', [(([1, 2], [1]), '2 values but target has 1'), (([], []), 'empty'),
                                      (([np.nan], [1]), 'NaN')])
def test_rating_metrics_bad_input(bad, msg):
    with pytest.raises(ValueError, match=msg): rmse(*bad)

HITS = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
N_REL = [4, 1, 2]

def test_precision_by_hand(): close(precision_at_k(HITS, 3), [2/3, 1/3, 0])
def test_recall_by_hand(): close(recall_at_k(HITS, N_REL, 3), [2/4, 1, 0])
def test_ndcg_by_hand():
    # A: (1 + 1/log2 4) / (1 + 1/log2 3 + 1/log2 4); B: (1/log2 3) / 1; C: no hit
    close(ndcg_at_k(HITS, N_REL, 3), [1.5/(1 + 1/np.log2(3) + 0.5), 1/np.log2(3), 0])
    close(ndcg_at_k(HITS[:1], [4], 2), [1/(1 + 1/np.log2(3))])   # cut at k=2: only the first hit, ideal has two
def test_map_by_hand(): close(map_at_k(HITS, N_REL, 3), [(1 + 2/3)/3, 0.5, 0])
def test_hit_rate_by_hand(): close(hit_rate_at_k(HITS, 3), [1, 1, 0]); close(hit_rate_at_k(HITS, 1), [1, 0, 0])
def test_mrr_by_hand(): close(mrr(HITS), [1, 0.5, 0]); close(mrr(HITS, k=1), [1, 0, 0])

def test_auc_by_hand():
    s = torch.tensor([[0.9, 0.5, 0.5, 0.1]]); r = torch.tensor([[True, False, True, False]])
    close(auc(s, r), [3.5/4])                                                   # won, won, tied, won
    close(auc(s, r, candidates=torch.tensor([True, True, True, False])), [0.75])
    close(auc(-s, r), [0.5/4])                                                  # reversed: only the tie
    close(auc(torch.ones(1, 4), r), [0.5])
    assert auc(s, torch.ones(1, 4, dtype=torch.bool)).isnan().all()             # no negative

def test_coverage_diversity_novelty_by_hand():
    top = torch.tensor([[0, 1], [1, 2], [2, -1]])
    close(catalog_coverage(top, 5), 3/5)
    vecs = torch.tensor([[1., 0], [3, 0], [0, 2], [1, 1], [1, 1]])             # cos(0,1) = 1, cos(1,2) = 0
    d = intra_list_diversity(top, vecs)
    close(d[:2], [0, 1]); assert d[2].isnan()                                   # one item: no pair
    info = torch.tensor([0., 1., 2., 5., 5.])
    close(novelty(top, info), [0.5, 1.5, 2.0])

def test_self_information():
    toy = Interactions(pd.DataFrame({'user': [0, 1, 2, 3, 0, 1, 0], 'item': [0, 0, 0, 0, 1, 1, 2], 'rating': 4., 'timestamp': 0}),
                       pd.DataFrame({'id': range(4)}), pd.DataFrame({'id': range(4)}), (1, 5))
    close(self_information(toy), [0, 1, 2, 2])

@pytest.mark.parametrize('f', [lambda: precision_at_k(torch.ones(3)), lambda: ndcg_at_k(HITS, [1, 1]),
                               lambda: recall_at_k(HITS, N_REL, k=0), lambda: ndcg_at_k(HITS, [0, 0, 0], 3)])
def test_hits_bad_input(f):
    with pytest.raises(ValueError): f()

# ---------------------------------------------------------------- against reference implementations

@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12), st.integers(2, 30))
def test_ndcg_matches_sklearn(seed, k, n_items):
    g = np.random.default_rng(seed)
    scores = g.permutation(n_items)[None].astype(float)                         # distinct scores
    rel = g.random((1, n_items)) < 0.3; rel[0, g.integers(n_items)] = True
    order = torch.from_numpy(np.argsort(-scores, axis=1))
    ours = ndcg_at_k(torch.from_numpy(rel).gather(1, order), rel.sum(1), k)
    close(ours, [ndcg_score(rel.astype(int), scores, k=k)])

@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 40), st.integers(1, 4))
def test_auc_matches_sklearn_with_ties(seed, n_items, levels):
    g = np.random.default_rng(seed)
    scores = g.integers(0, levels + 1, (3, n_items)).astype(float)             # few levels: many ties
    rel = g.random((3, n_items)) < 0.4; rel[:, 0] = True; rel[:, 1] = False
    close(auc(scores, rel), [roc_auc_score(rel[u], scores[u]) for u in range(3)])

# ---------------------------------------------------------------- properties of rankings

rankings = st.tuples(st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 25), st.integers(1, 12))

@settings(max_examples=60, deadline=None)
@given(rankings)
def test_ranking_metrics_lie_in_unit_interval(args):
    seed, n_users, n_items, k = args
    g = np.random.default_rng(seed)
    rel = g.random((n_users, n_items)) < 0.3; rel[:, g.integers(n_items)] = True
    scores = torch.from_numpy(g.normal(size=(n_users, n_items)).round(1))      # rounded: some ties
    order = torch.from_numpy(np.argsort(-scores.numpy(), axis=1, kind='stable'))
    hits, n_rel = torch.from_numpy(rel).gather(1, order), rel.sum(1)
    for v in (precision_at_k(hits, k), recall_at_k(hits, n_rel, k), ndcg_at_k(hits, n_rel, k), map_at_k(hits, n_rel, k),
              hit_rate_at_k(hits, k), mrr(hits), mrr(hits, k)):
        assert ((v >= 0) & (v <= 1 + 1e-12)).all()
    a = auc(scores, rel); a = a[~a.isnan()]
    assert ((a >= 0) & (a <= 1)).all()

@settings(max_examples=60, deadline=None)
@given(rankings)
def test_perfect_rankings_score_one(args):
    seed, n_users, n_items, k = args
    g = np.random.default_rng(seed)
    rel = g.random((n_users, n_items)) < 0.4; rel[:, g.integers(n_items)] = True
    scores = torch.from_numpy(rel + g.random((n_users, n_items)) * 0.5)       # every relevant item above every other
    order = torch.from_numpy(np.argsort(-scores.numpy(), axis=1))
    hits, n_rel = torch.from_numpy(rel).gather(1, order), torch.from_numpy(rel.sum(1))
    for v in (ndcg_at_k(hits, n_rel, k), map_at_k(hits, n_rel, k), hit_rate_at_k(hits, k), mrr(hits)): close(v, np.ones(n_users))
    n = rel.sum(1)
    close(precision_at_k(hits, k), np.minimum(n, k) / k)                        # 1 when there are at least k relevant
    close(recall_at_k(hits, n_rel, k), np.minimum(n, k) / n)                    # 1 when there are at most k
    a = auc(scores, rel); close(a[~a.isnan()], np.ones(int((~a.isnan()).sum())))

# ---------------------------------------------------------------- the protocol on a toy dataset

def toy():
    "4 users × 6 items; user 3 and item 5 have no training ratings."
    tr = pd.DataFrame({'user': [0, 0, 1, 1, 2, 2, 0], 'item': [0, 1, 1, 2, 3, 4, 4], 'rating': [5., 4, 3, 5, 2, 4, 1], 'timestamp': 0})
    te = pd.DataFrame({'user': [0, 0, 1, 2, 3, 1], 'item': [2, 3, 0, 1, 1, 5], 'rating': [4., 2, 5, 3, 4, 5], 'timestamp': 1})
    items, users = pd.DataFrame({'id': [f'i{j}' for j in range(6)]}), pd.DataFrame({'id': [f'u{j}' for j in range(4)]})
    return Interactions(tr, items, users, (1, 5), 'toy train'), Interactions(te, items, users, (1, 5), 'toy test')

class Fixed:
    "A model with fixed scores: item j scores 10 - j for everyone; predicts 3 everywhere."
    def __init__(self, train): self.n_users, self.n_items = train.n_users, train.n_items; self.seen_users, self.seen_items = seen_codes(train)
    def predict(self, users, items, cold=False): return np.full(len(users), 3.0)
    def score_items(self, users, cold=False): return np.tile(10. - np.arange(self.n_items), (len(users), 1))

def test_evaluate_by_hand():
    trn, tst = toy()
    res = evaluate(Fixed(trn), tst, trn, k=2, cold=True, metrics=['rmse', 'precision', 'ndcg', 'mrr']).set_index('metric').value
    close(res['RMSE'], np.sqrt(np.mean((np.array([4, 2, 5, 3, 4, 5]) - 3.) ** 2)))
    # lists without training items, k=2: u0 [2, 3] (test 2, 3: two hits); u1 [0, 3] (test 0, 5: hit at 1);
    # u2 [0, 1] (test 1: hit at 2); u3 [0, 1] (test 1: hit at 2)
    close(res['P@2'], np.mean([1, 0.5, 0.5, 0.5]))
    d = 1/np.log2(3)
    close(res['NDCG@2'], np.mean([1, 1/(1 + d), d, d]))
    close(res['MRR'], np.mean([1, 1, 0.5, 0.5]))

def test_evaluate_refuses_cold_without_flag():
    trn, tst = toy()
    with pytest.raises(ValueError) as e: evaluate(Fixed(trn), tst, trn)
    msg = str(e.value)
    assert 'toy test' in msg and 'of 6 ratings' in msg and 'cold=True' in msg
    assert "1 are on 1 users the model never saw in training (e.g. user id 'u3')" in msg
    assert "1 are on 1 items the model never saw in training (e.g. item id 'i5')" in msg

def test_evaluate_threshold_and_candidates():
    trn, tst = toy()
    res = evaluate(Fixed(trn), tst, trn, k=2, cold=True, threshold=4, metrics=['precision'])
    # relevant >= 4: u0 {2}, u1 {0, 5}, u3 {1}; u2 has none and is left out
    close(res.value[0], np.mean([0.5, 0.5, 0.5])); assert res.n[0] == 3
    only = np.array([False, False, False, True, True, True])                   # rank items 3-5 only
    res = evaluate(Fixed(trn), tst, trn, k=2, cold=True, candidates=only, metrics=['precision', 'coverage'])
    # u0 [3, 5] (4 is a training item; 3 is a hit), u1 [3, 4] (its test item 5 ranks third); u2 and u3 have no test item among 3-5
    close(res.value, [0.25, 1.0]); assert res.n.tolist() == [2, 2]

def test_evaluate_slices():
    trn, tst = toy()
    res = evaluate(Fixed(trn), tst, trn, k=2, cold=True, by='items', metrics=['rmse', 'hit_rate'])
    assert list(dict.fromkeys(res.slice)) == ['all', 'warm items', 'cold items']
    assert res.set_index(['slice', 'metric']).n[('cold items', 'RMSE')] == 1
    res = evaluate(Fixed(trn), tst, trn, k=2, cold=True, by='users', metrics=['rmse'])
    assert res.set_index('slice').n.to_dict() == {'all': 6, 'warm users': 5, 'cold users': 1}
    res = evaluate(Fixed(trn), tst, trn, k=2, cold=True, by=('popularity', (1, 2)), metrics=['rmse'])
    assert set(res.slice) == {'all', '0', '1-1', '2+'}

def test_evaluate_bad_input():
    trn, tst = toy(); m = Fixed(trn)
    with pytest.raises(ValueError, match='need train='): evaluate(m, tst, metrics=['ndcg'], cold=True)
    with pytest.raises(ValueError, match="unknown metric 'NDCG'"): evaluate(m, tst, trn, metrics=['NDCG'], cold=True)
    with pytest.raises(ValueError, match='item_vectors'): evaluate(m, tst, trn, metrics=['diversity'], cold=True)
    with pytest.raises(ValueError, match='k must be a positive int'): evaluate(m, tst, trn, k=0, cold=True)
    with pytest.raises(ValueError, match="by must be"): evaluate(m, tst, trn, by='genre', cold=True)
    m.n_items = 7
    with pytest.raises(ValueError, match='vocabulary of 4 users × 6 items'): evaluate(m, tst, trn, cold=True)

def test_evaluate_checks_model_output():
    trn, tst = toy()
    class NaNScores(Fixed):
        def score_items(self, users, cold=False): s = super().score_items(users); s[0, 1] = np.nan; return s
    with pytest.raises(ValueError, match='NaN scores'): evaluate(NaNScores(trn), tst, trn, cold=True, metrics=['ndcg'])
    class WrongShape(Fixed):
        def score_items(self, users, cold=False): return np.zeros((len(users), 3))
    with pytest.raises(ValueError, match=r'shape \(\d+, 3\), expected'): evaluate(WrongShape(trn), tst, trn, cold=True, metrics=['ndcg'])

def test_torch_model_attributes():
    "seen masks as tensors and predictions as tensors work like numpy ones."
    trn, tst = toy()
    class TorchFixed(Fixed):
        def __init__(self, train):
            super().__init__(train); self.seen_users, self.seen_items = torch.from_numpy(self.seen_users), torch.from_numpy(self.seen_items)
        def predict(self, users, items, cold=False): return torch.full((len(users),), 3.0)
        def score_items(self, users, cold=False): return torch.from_numpy(super().score_items(users))
    a = evaluate(TorchFixed(trn), tst, trn, k=2, cold=True, by='items')
    b = evaluate(Fixed(trn), tst, trn, k=2, cold=True, by='items')
    pd.testing.assert_frame_equal(a.drop(columns='model'), b.drop(columns='model'))
    with pytest.raises(ValueError, match='pass cold=True'): evaluate(TorchFixed(trn), tst, trn)

def test_missing_methods_give_nan():
    trn, tst = toy()
    res = evaluate(MostPopular().fit(trn), tst, trn, cold=True, metrics=['rmse', 'ndcg'])
    assert np.isnan(res.value[0]) and res.n[0] == 0 and res.value[1] > 0
    res = evaluate(GlobalMean().fit(trn), tst, trn, cold=True, metrics=['rmse', 'ndcg'])
    assert np.isfinite(res.value[0]) and np.isnan(res.value[1])

def test_ties_broken_by_seed_not_code():
    trn, tst = toy()
    class Flat(Fixed):
        def score_items(self, users, cold=False): return np.zeros((len(users), self.n_items))
    by_code = top_items(Flat(trn), [3], k=6, cold=True, seed=None)[0]
    assert by_code.tolist() == [0, 1, 2, 3, 4, 5]
    a, b = (top_items(Flat(trn), [3], k=6, cold=True, seed=s)[0] for s in (0, 0))
    assert a.tolist() == b.tolist() and sorted(a) == list(range(6))
    assert any(top_items(Flat(trn), [3], k=6, cold=True, seed=s)[0].tolist() != by_code.tolist() for s in range(5))
    close(evaluate(Flat(trn), tst, trn, cold=True, metrics=['auc']).value, [0.5])

def test_top_items():
    trn, tst = toy(); m = Fixed(trn)
    test_top = top_items(m, [0, 1], trn, k=3)                                  # cold=False: item 5 is not a candidate
    assert test_top.tolist() == [[2, 3, -1], [0, 3, 4]]                        # user 0 rated 0, 1, 4 in training
    assert top_items(m, [0], trn, k=3, cold=True)[0].tolist() == [2, 3, 5]
    with pytest.raises(ValueError, match="pass cold=True"): top_items(m, [3], trn)

def test_check_vocabulary_codes():
    trn, _ = toy(); m = Fixed(trn)
    with pytest.raises(ValueError, match='outside the model.s vocabulary of 6 items, e.g. 9'): check_vocabulary(m, [0], [9])
    with pytest.raises(ValueError, match='e.g. item code 5'): check_vocabulary(m, [0], [5])
    check_vocabulary(m, [3], [5], cold=True)

# ---------------------------------------------------------------- baselines

def test_baselines_not_fitted_and_bad_input():
    with pytest.raises(RuntimeError, match='not fitted'): Biases().predict([0], [0])
    with pytest.raises(TypeError, match='expects Interactions'): GlobalMean().fit(pd.DataFrame())
    trn, _ = toy()
    with pytest.raises(ValueError, match=r'item_vectors has shape \(3, 2\)'): ContentKNN(torch.ones(3, 2)).fit(trn)

def test_global_user_mean_and_popularity():
    trn, _ = toy()
    close(GlobalMean().fit(trn).predict([3], [5], cold=True), [24/7])
    close(UserMean().fit(trn).predict([0, 3], [0, 0], cold=True), [10/3, 24/7])
    s = MostPopular().fit(trn).score_items([0, 3], cold=True)
    close(s, np.tile([1, 2, 1, 1, 2, 0], (2, 1)))

def test_biases_cold_fallback():
    trn, _ = toy(); b = Biases().fit(trn)
    assert b.b_item[5] == 0 and b.b_user[3] == 0
    close(b.predict([0], [5], cold=True), [b.mu + b.b_user[0]])
    with pytest.raises(ValueError, match='pass cold=True'): b.predict([0], [5])

def test_content_knn_by_hand():
    trn, _ = toy()
    v = torch.eye(6)[[0, 0, 1, 1, 2, 2]]                                        # items 0,1 / 2,3 / 4,5 share a text
    ck = ContentKNN(v, k=1).fit(trn)
    # user 0 liked items 0 (5), 1 (4); user 1 liked 2 (5); user 2 liked 4 (4); user 3: no ratings -> popularity
    s = ck.score_items([0, 1, 2, 3], cold=True)
    close(s[0], [1, 1, 0, 0, 0, 0]); close(s[1], [0, 0, 1, 1, 0, 0]); close(s[2], [0, 0, 0, 0, 1, 1])
    close(s[3], np.array([1, 2, 1, 1, 2, 0]) / 2)
    # predict: biases plus the residual of the most similar rated item (self excluded)
    b = ck.biases; p = ck.predict([1], [3], cold=True)
    res2 = 5 - b.baseline(np.array([1]), np.array([2]))                          # user 1's residual on item 2, the twin of 3
    close(p, np.clip(b.baseline(np.array([1]), np.array([3])) + res2, 1, 5))

@needs_100k
def test_ml100k_reference_checks():
    ml = load_movielens('ml-100k'); trn, tst = ml.split('official', fold='u1')
    from surprise import BaselineOnly, Dataset, Reader
    ts = Dataset.load_from_df(trn.ratings[['user', 'item', 'rating']], Reader(rating_scale=(1, 5))).build_full_trainset()
    bo = BaselineOnly(bsl_options=dict(method='als', reg_i=10, reg_u=15, n_epochs=10), verbose=False).fit(ts)
    b = Biases().fit(trn)
    close(bo.bi, b.b_item[[ts.to_raw_iid(j) for j in range(ts.n_items)]])
    close(bo.bu, b.b_user[[ts.to_raw_uid(j) for j in range(ts.n_users)]])
    # the popularity anchor of the peers (NDCG@10 0.250, 75/25 split stratified per item)
    s_trn, s_tst = ml.split('stratified', valid_pct=0.25, by='item', seed=0)
    ndcg = evaluate(MostPopular().fit(s_trn), s_tst, s_trn, metrics=['ndcg']).value[0]
    assert abs(ndcg - 0.250) < 0.005
    # batched ContentKNN scores equal a plain per-user computation
    v = torch.randn(ml.n_items, 16, generator=torch.Generator().manual_seed(0))
    ck = ContentKNN(v, k=5, budget=2**18).fit(trn)
    users = np.array([0, 1, 42, 500, 942]); s = ck.score_items(users)
    vn = torch.nn.functional.normalize(v, dim=1); r = trn.ratings
    for row, u in enumerate(users):
        liked = r[(r.user == u) & (r.rating >= 4)].item.to_numpy().copy()
        ref = (vn @ vn[liked].T).topk(min(5, len(liked)), dim=1).values.mean(1)
        close(s[row], ref, 1e-5)
