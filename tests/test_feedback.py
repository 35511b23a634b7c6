"""The feedback loop: `update` equals a fresh fold-in and refuses unknown items without changing anything; policies are seeded;
the replay simulator reveals only what it showed; the click simulator shares its coins between policies, teaches the model
every shown item and is never beaten by its oracle; its ground truth is out of fold and rebuilds from its frozen knots; the
scripts' short runs write what the notebook reads."""
import copy, json, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch

from fine_tuning_flm.data import Interactions
from fine_tuning_flm.learner import train_flm
from fine_tuning_flm.recommend import Recommender, POLICIES
import fine_tuning_flm.feedback as fb

GENRES = ['Comedy', 'Drama', 'Horror', 'Sci-Fi']

@pytest.fixture(scope='module', params=['rate', 'both'])
def shop(request):
    "60 users who each like one genre of 24 items; 12 of them are held out (never seen in training)."
    rng = np.random.default_rng(0)
    rows = [(f'u{u}', f'sku{i:02d}', 5.0 if i % 4 == u % 4 else float(rng.integers(1, 3))) for u in range(60) for i in rng.choice(24, 12, replace=False)]
    items = pd.DataFrame({'item_id': [f'sku{i:02d}' for i in range(24)], 'title': [f'{GENRES[i % 4]} film {i}' for i in range(24)]})
    data = Interactions.from_df(pd.DataFrame(rows, columns=['user_id', 'item_id', 'rating']), items=items)
    train, held = data.split('cold_users', pct=0.2, seed=0)
    learn = train_flm(train, None, objective=request.param, text=None, epochs=10, progress=False, positive_rating=4 if request.param == 'both' else None)
    return Recommender.from_learner(learn, train), held

def test_update_equals_a_fresh_fold_in(shop):
    rec, held = shop
    rec = copy.deepcopy(rec)
    u = int(held.ratings.user.iloc[0]); r = held.ratings[held.ratings.user == u].head(5)
    rec.update(pd.DataFrame({'user': rec.users.id[u], 'item': rec.items.id[r.item].tolist(), 'rating': r.rating.tolist()}))
    p, b = rec.model.fold_in(r.item.to_numpy(), r.rating.to_numpy(), cold=True)
    s = rec.model.score_user(p, b, cold=True).clone(); s[torch.tensor(r.item.to_numpy())] = -torch.inf
    assert rec.recommend(rec.users.id[u], k=5).id.tolist() == rec.items.id[s.topk(5).indices.numpy()].tolist()
    assert len(rec.new_ratings) == len(r) and rec.model.seen_users[u]

def test_update_of_an_unknown_item_changes_nothing(shop):
    rec, _ = shop
    rec = copy.deepcopy(rec)
    before, n_users = {k: v.clone() for k, v in rec.model.state_dict().items()}, rec.model.n_users
    with pytest.raises(KeyError, match='nope'):
        rec.update(pd.DataFrame({'user': ['brand-new-user', 'u1'], 'item': ['sku01', 'nope'], 'rating': [5, 4]}))
    assert rec.model.n_users == n_users and len(rec.new_ratings) == 0
    assert all(torch.equal(before[k], v) for k, v in rec.model.state_dict().items())
    with pytest.raises(ValueError, match='outside'):
        rec.update(pd.DataFrame({'user': ['u1'], 'item': ['sku01'], 'rating': [50]}))

def test_new_users_are_created_and_served(shop):
    rec, _ = shop
    rec = copy.deepcopy(rec)
    rec.update(pd.DataFrame({'user': ['v1'] * 3, 'item': ['sku00', 'sku04', 'sku08'], 'rating': [5, 5, 5]}))
    assert rec.users.id.iloc[-1] == 'v1'
    top = rec.recommend('v1', k=3)
    assert not set(top.id) & {'sku00', 'sku04', 'sku08'}

def test_policies_are_seeded(shop):
    rec, held = shop
    u = rec.users.id[int(held.ratings.user.iloc[0])]
    for pol in POLICIES:
        assert rec.recommend(u, k=4, policy=pol, seed=3).id.tolist() == rec.recommend(u, k=4, policy=pol, seed=3).id.tolist(), pol
    with pytest.raises(ValueError, match='unknown policy'): rec.recommend(u, policy='nope')

def test_the_simulator_reveals_only_what_it_showed(shop, monkeypatch):
    rec, held = shop
    shown, revealed = {}, []
    real_recommend, real_update = Recommender.recommend, Recommender.update
    def spy_recommend(self, user, *a, **kw):
        out = real_recommend(self, user, *a, **kw); shown.setdefault(user, set()).update(out.id); return out
    def spy_update(self, ratings, *a, **kw):
        revealed.extend(zip(ratings.user, ratings.item)); return real_update(self, ratings, *a, **kw)
    monkeypatch.setattr(Recommender, 'recommend', spy_recommend); monkeypatch.setattr(Recommender, 'update', spy_update)
    runs = fb.simulate(rec, held, 'thompson', rounds=3, k=2, start=(0, 0), seed=0)
    assert len(revealed) and all(i in shown.get(u, set()) for u, i in revealed)    # started with nothing known: every revealed item was shown first
    assert (runs.revealed <= runs.shown).all() and len(rec.new_ratings) == 0        # the Recommender given is not changed

def truth_for(rec, seed=0):
    "A made-up ground truth for the shop: a click probability per (user, item) in [0, 0.6]."
    return (np.random.default_rng(seed).random((rec.model.n_users, rec.model.n_items)) * 0.6).astype(np.float32)

def test_the_click_simulator_shares_coins_and_never_beats_its_oracle(shop):
    rec, held = shop
    P = truth_for(rec)
    a = fb.simulate_clicks(rec, held, P, 'greedy', rounds=3, k=2, seed=1)
    b = fb.simulate_clicks(rec, held, P, 'thompson', rounds=3, k=2, seed=1)
    for c in ('user', 'round', 'n_start', 'oracle'): assert a[c].tolist() == b[c].tolist(), c      # same users, start ratings, oracle
    assert all(x != y or ca == cb for x, y, ca, cb in zip(a['items'], b['items'], a.clicks, b.clicks))   # same list, same clicks
    for d in (a, b):
        cum = d.groupby('user')[['oracle', 'expected']].cumsum()
        assert (cum.oracle >= cum.expected - 1e-5).all() and (d.clicks <= d.shown).all()
        assert np.allclose(d.regret, d.oracle - d.expected)
        assert d.groupby('user')['items'].apply(lambda l: len({i for x in l for i in x}) == sum(map(len, l))).all()   # nothing shown twice
    assert len(rec.new_ratings) == 0                                                                   # the Recommender given is not changed

def test_the_click_simulator_teaches_every_click(shop, monkeypatch):
    rec, held = shop
    P = truth_for(rec, 1)
    told = []
    real_update = Recommender.update
    def spy(self, ratings, *a, **kw): told.append(ratings.copy()); return real_update(self, ratings, *a, **kw)
    monkeypatch.setattr(Recommender, 'update', spy)
    runs = fb.simulate_clicks(rec, held, P, 'greedy', rounds=2, k=3, start=(0, 0), seed=0)
    clicked = runs[runs.clicks > 0]
    assert len(told) == len(clicked) > 0                                                           # no start ratings: one update per round with a click
    for (_, row), t in zip(clicked.iterrows(), told):
        assert set(t.item) <= set(rec.items.id[row['items']]) and len(t) == row.clicks              # the clicked items of that list...
        assert (t.rating == rec.scale[1]).all()                                                     # ...each as the top of the scale
    with pytest.raises(ValueError, match='truth is'): fb.simulate_clicks(rec, held, P[:3], 'greedy')

def test_click_truth_is_out_of_fold_and_rebuilds_from_its_knots(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(u, i, float(rng.integers(1, 6))) for u in range(40) for i in rng.choice(30, 12, replace=False)]
    data = Interactions.from_df(pd.DataFrame(rows, columns=['user_id', 'item_id', 'rating']),
                                items=pd.DataFrame({'item_id': range(30), 'title': [f'film {i}' for i in range(30)]}))
    s, t = fb.calibration_pairs(data, 5.0, folds=4)
    assert sum(len(x) for x in s) == 4 * 40 * 30 - 3 * len(data.ratings)      # each fold: every pair its model did not see
    x, y = fb.fit_calibration(s, t)
    truth = fb.ClickTruth(lam=5.0, folds=4, x=x, y=y)
    P = truth.probabilities(data)
    assert P.shape == (40, 30) and P.min() >= 0 and P.max() <= 1
    f = tmp_path/'truth.json'; f.write_text(json.dumps({'truth': truth.__dict__}))
    assert np.array_equal(fb.ClickTruth.from_json(f).probabilities(data), P)
    X = fb.interaction_matrix(data)                                            # a rated pair is scored without itself
    rows_, S, Xf = next(fb.fold_scores(data, 5.0, folds=4))
    u, i = data.ratings.user[rows_].to_numpy(), data.ratings.item[rows_].to_numpy()
    assert Xf[u, i].sum() == 0 and np.allclose(P[u, i], np.interp(S[u, i], x, y)) and X[u, i].all()

ROOT = Path(__file__).resolve().parents[1]

def script(name, *args, timeout=900):
    r = subprocess.run([sys.executable, '-m', f'benchmarks.{name}', *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout

@pytest.mark.needs_data('ml-100k')
def test_simulator_script_short_run(tmp_path):
    "A fifth of ml-100k's users, one ridge: the truth it writes calibrates better than the base rate and rebuilds from its knots."
    script('simulator', '--quick', '--out', tmp_path/'t.json')
    r = json.loads((tmp_path/'t.json').read_text())
    assert r['provenance']['command'].startswith('python -m benchmarks.simulator --quick')
    held = r['calibration']['held_out']['summary']
    assert held['log_loss'] < held['log_loss_base_rate'] and held['ece'] < 0.01
    assert set(r['truth']) == {'lam', 'folds', 'seed', 'like', 'x', 'y'} and r['truth_stats']['oracle_top100_per_user'] > r['truth_stats']['random100_per_user']

@pytest.mark.needs_data('ml-100k')
def test_committed_truth_rebuilds():
    "The frozen ground truth the simulator view and 13_feedback read: its probabilities rebuild to the sum it recorded."
    from fine_tuning_flm.data import load_movielens
    f = ROOT/'benchmarks'/'results'/'feedback_truth.json'
    r = json.loads(f.read_text())
    P = fb.ClickTruth.from_json(f).probabilities(load_movielens('ml-100k'))
    assert abs(P.sum(dtype=np.float64) - r['checksum']['sum']) < 1e-4 * r['checksum']['sum']

@pytest.mark.needs_data('ml-100k')
def test_feedback_simulator_view_short_run(tmp_path):
    """The simulator view, CI-size (2 seeds, 10 users, 5 rounds): the ground truth rebuilt and checked, regret and the start-rating
    breakdown per policy, the targets read off paired seeds, MABWiser tuned on the training side."""
    pytest.importorskip('mabwiser')
    args = ('--quick', '--view', 'simulator', '--policies', 'greedy', 'thompson', 'MABWiser-LinUCB', '--out', tmp_path/'s.json')
    script('feedback', *args)
    r = json.loads((tmp_path/'s.json').read_text())
    assert r['view'] == 'simulator' and r['truth']['checksum']['recorded'] == pytest.approx(r['truth']['checksum']['rebuilt'], rel=1e-4)
    for pol, v in r['policies'].items():
        assert len(v['clicks_per_user']) == 2 and v['regret']['mean'] >= -1e-6 and set(v['by_start']) <= {'0', '1', '2'}, pol
        assert v['expected']['mean'] + v['regret']['mean'] == pytest.approx(v['oracle']['mean'], rel=1e-6)
    t = r['targets']
    assert set(t['thompson_vs_greedy']) >= {'rel_gain', 'mean_diff', 'std_diff', 'exceeds_noise', 'met', 'by_start'}
    assert t['ours_vs_mabwiser']['mabwiser'] == 'MABWiser-LinUCB' and set(r['tuning']) == {'thompson', 'MABWiser-LinUCB'}
