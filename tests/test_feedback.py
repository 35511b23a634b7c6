"The feedback loop: `update` equals a fresh fold-in and refuses unknown items without changing anything; policies are seeded; the replay simulator reveals only what it showed."
import copy
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
