"Ranking objectives: negative sampling, the losses and their logQ correction by hand, config round trips, fold-in for rankers."
import math
import numpy as np, pandas as pd, pytest, torch

from fine_tuning_flm.data import Interactions
from fine_tuning_flm.factorization import FLM, FLMLoss, bpr_loss, bce_loss, softmax_loss, parse_objective
from fine_tuning_flm.learner import InteractionsDL, log_q, pair_keys, sample_negatives, popularity_weights

def _toy(n_users=30, n_items=40, per_user=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(u, i, float(rng.integers(1, 6))) for u in range(n_users) for i in rng.choice(n_items, per_user, replace=False)]
    df = pd.DataFrame(rows, columns=['user_id', 'item_id', 'rating'])
    return Interactions.from_df(df, items=pd.DataFrame({'item_id': range(n_items), 'title': [f'item {i}' for i in range(n_items)]}))

@pytest.mark.parametrize('weights', [None, 'pop'])
def test_sampled_negatives_avoid_positives(weights):
    "Dense positives (half the catalogue per user): a single draw hits a positive half the time; after redraws almost never."
    d = _toy(n_users=50, n_items=20, per_user=10)
    r = d.ratings
    keys = torch.unique(pair_keys(torch.tensor(r.user.to_numpy()), torch.tensor(r.item.to_numpy()), d.n_items))
    w = popularity_weights(d, 0.5) if weights else None
    g = torch.Generator().manual_seed(0)
    users = torch.tensor(r.user.to_numpy()).repeat(20)
    neg = sample_negatives(users, d.n_items, 16, w, keys, tries=10, generator=g)
    k = pair_keys(users[:, None], neg, d.n_items)
    hit = (keys[torch.searchsorted(keys, k).clamp(max=len(keys) - 1)] == k).float().mean().item()
    assert neg.shape == (len(users), 16) and neg.min() >= 0 and neg.max() < d.n_items
    assert hit <= 0.5 ** 10 * 3, hit                       # the stated rate: each of 10 redraws halves the hits
    none = sample_negatives(users, d.n_items, 16, w, None, generator=torch.Generator().manual_seed(0))
    k0 = pair_keys(users[:, None], none, d.n_items)
    assert (keys[torch.searchsorted(keys, k0).clamp(max=len(keys) - 1)] == k0).float().mean() > 0.3   # without rejection they are common

def test_loader_adds_negative_columns_and_is_seeded():
    d = _toy()
    a = InteractionsDL.from_interactions(d, neg=5, bs=64, shuffle=True, seed=3)
    b = InteractionsDL.from_interactions(d, neg=5, bs=64, shuffle=True, seed=3)
    xa, xb = torch.cat([x for x, _ in a]), torch.cat([x for x, _ in b])
    assert xa.shape == (len(d), 7) and torch.equal(xa, xb)
    with pytest.raises(ValueError, match='neg must be'): InteractionsDL(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2), neg=-1, n_items=3)

def test_losses_by_hand():
    lg = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    s = lambda x: 1 / (1 + math.exp(-x))
    assert bpr_loss(lg).item() == pytest.approx(((-math.log(s(1)) - math.log(s(2))) / 2 + (-math.log(s(0)) - math.log(s(-1.5))) / 2) / 2, rel=1e-6)
    assert bce_loss(lg).item() == pytest.approx(((-math.log(s(1)) + (-math.log(1 - s(0)) - math.log(1 - s(-1))) / 2)
                                                 + (-math.log(s(.5)) + (-math.log(1 - s(.5)) - math.log(1 - s(2))) / 2)) / 2, rel=1e-6)
    sm = lambda r: math.log(sum(math.exp(v) for v in r)) - r[0]
    assert softmax_loss(lg).item() == pytest.approx((sm([1, 0, -1]) + sm([.5, .5, 2])) / 2, rel=1e-6)

def test_in_batch_softmax_with_logq_by_hand():
    "Two users, two positives; in-batch negatives; log Q subtracted from every column (the positive's too)."
    m = FLM(2, 3, n_factors=2, objective='softmax', negatives='in-batch', reg=0, reg_bias=0)
    with torch.no_grad():
        m.u_weight.weight.copy_(torch.tensor([[1., 0.], [0., 1.]]))
        m.i_weight.weight.copy_(torch.tensor([[2., 0.], [0., 1.], [1., 1.]]))
        m.i_rbias.weight.copy_(torch.tensor([[0.], [0.5], [0.]]))
    x = torch.tensor([[0, 0], [1, 1]])
    m.train(); out = m(x)
    lq = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    loss = FLMLoss(m, lq)(out, torch.zeros(2)).item()
    # scores s(u, i) = p_u . q_i + c_i: user 0 -> item 0: 2, item 1: 0.5; user 1 -> item 0: 0, item 1: 1.5
    row0 = [2 - math.log(.5), 0.5 - math.log(.25)]     # the positive, then the other in-batch item (item 0 itself is dropped)
    row1 = [1.5 - math.log(.25), 0 - math.log(.5)]
    want = sum(math.log(sum(math.exp(v) for v in r)) - r[0] for r in (row0, row1)) / 2
    assert loss == pytest.approx(want, rel=1e-5)

def test_log_q_follows_the_negatives():
    d = _toy()
    assert log_q(FLM(d.n_users, d.n_items, n_factors=4, objective='softmax'), d) is None                  # full catalogue: no correction
    ib = log_q(FLM(d.n_users, d.n_items, n_factors=4, objective='softmax', negatives='in-batch'), d)
    counts = np.bincount(d.ratings.item, minlength=d.n_items)
    assert np.allclose(ib.exp().numpy(), np.maximum(counts / counts.sum(), 1e-12), atol=1e-7)

@pytest.mark.parametrize('objective', ['mse', 'softmax', 'mse+bpr', 'bce'])
def test_config_round_trip(objective):
    d = _toy()
    m = FLM(d.n_users, d.n_items, n_factors=6, item_text=torch.randn(d.n_items, 5), objective=objective, history=True).set_seen(d)
    m2 = FLM.from_config(m.config()); m2.load_state_dict(m.state_dict())
    assert m2.config() == m.config()
    assert torch.allclose(m.score_items([0, 1]), m2.score_items([0, 1]))

def test_parse_objective():
    assert parse_objective('mse+softmax') == ('mse', 'softmax') and parse_objective('bpr') == (None, 'bpr')
    for bad in ('rank', 'mse+mse', 'bpr+softmax', '', None): 
        with pytest.raises(ValueError, match='objective'): parse_objective(bad)

def test_rank_fold_in_finds_the_liked_cluster():
    "Items in three clusters; a new user who liked three items of cluster 0 gets the rest of cluster 0 first."
    d = _toy(n_users=40, n_items=30)
    torch.manual_seed(0)
    m = FLM(d.n_users, d.n_items, n_factors=3, objective='softmax', history=True).set_seen(d)
    cluster = torch.arange(30) % 3
    with torch.no_grad(): m.i_weight.weight.copy_(torch.eye(3)[cluster] * 2 + 0.1 * torch.randn(30, 3))
    likes = torch.tensor([0, 3, 6])
    p, b = m.fold_in(likes)
    s = m.score_user(p, b).clone(); s[likes] = -torch.inf
    assert (cluster[s.topk(7).indices] == 0).all(), s
    before = m.score_user(*m.user_prior(torch.tensor([], dtype=torch.long)))
    assert before.std() < 0.1 * s[torch.isfinite(s)].std()          # before any item: (almost) no preference
    with pytest.raises(ValueError, match='NaN'): m.fold_in(likes, [4, float('nan'), 5])
    with pytest.raises(ValueError, match='rank only'): m.predict([0], [1])

def _reference(loss, logits, cand, target):
    "The loss the old way: each row's positive in column 0, then every other column, a candidate equal to the positive masked out."
    B = len(logits)
    pos = logits[torch.arange(B), target][:, None]
    c = cand if cand is None or cand.ndim == 2 else cand[None].expand(B, -1)
    others = torch.ones_like(logits, dtype=torch.bool); others[torch.arange(B), target] = False
    neg = logits[others].view(B, -1)
    row = torch.cat([pos, neg], 1)
    if c is None: return {'softmax': softmax_loss, 'bpr': bpr_loss, 'bce': bce_loss}[loss](row)
    pc = c[torch.arange(B), target][:, None]
    return {'softmax': softmax_loss, 'bpr': bpr_loss, 'bce': bce_loss}[loss](row, torch.cat([pc, c[others].view(B, -1)], 1))

@pytest.mark.parametrize('loss', ['softmax', 'bpr', 'bce'])
def test_losses_with_a_target_column_equal_the_positive_first_form(loss):
    "The catalogue (no cand), shared columns with repeats (in-batch), and per-row candidates, each with the positive anywhere."
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 9, generator=g)
    target = torch.randint(0, 9, (6,), generator=g)
    f = {'softmax': softmax_loss, 'bpr': bpr_loss, 'bce': bce_loss}[loss]
    shared = torch.tensor([3, 1, 3, 7, 1, 0, 5, 3, 2])                         # columns holding the same item twice or three times
    per_row = torch.randint(0, 5, (6, 9), generator=g)
    for cand in (None, shared, per_row):
        assert f(logits, cand, target).item() == pytest.approx(_reference(loss, logits, cand, target).item(), rel=1e-5), (loss, cand)
    assert f(logits[:, 1:], None, None).item() != pytest.approx(f(logits, None, torch.zeros(6, dtype=torch.long)).item())   # column 0 is the default

def test_full_catalogue_forward_is_one_product():
    "negatives='full': the logits are the catalogue's (no candidate matrix), the positive's column is its item code, and the softmax is cross-entropy."
    d = _toy()
    m = FLM(d.n_users, d.n_items, n_factors=4, objective='softmax', history=True, item_text=torch.randn(d.n_items, 5)).set_seen(d).train()
    x = torch.tensor(d.ratings[['user', 'item']].to_numpy()[:16])
    ratings, logits, cand, target = m(x)
    assert ratings is None and cand is None and logits.shape == (16, d.n_items) and torch.equal(target, x[:, 1])
    assert FLMLoss(m)((ratings, logits, cand, target), torch.ones(16)).item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-6)

@pytest.mark.parametrize('n', [2, 30])
def test_pooled_history_paths_agree_with_embedding_bag(n):
    "A batch of few users (their own bags, transposed per step) or of most users (every user's bags, transposed once): the sums and the gradient of EmbeddingBag's."
    d = _toy()
    m = FLM(d.n_users, d.n_items, n_factors=4, history=True).set_seen(d)
    users = torch.arange(n) % d.n_users
    ui = d.user_items()
    ptr, items = torch.tensor(ui.ptr), torch.tensor(ui.items)
    lens = ptr[users + 1] - ptr[users]
    idx = torch.cat([items[ptr[u]:ptr[u + 1]] for u in users.tolist()])
    w = m.hist.weight
    ref = torch.nn.functional.embedding_bag(idx, w, torch.cumsum(lens, 0) - lens, mode='sum') / lens.clamp(min=1)[:, None] ** m.history_alpha
    g = torch.randn_like(ref)
    got = m.pooled_history(users)
    assert torch.allclose(got, ref, atol=1e-6)
    assert torch.allclose(torch.autograd.grad((got * g).sum(), w)[0], torch.autograd.grad((ref * g).sum(), w)[0], atol=1e-6)
