"""Property tests of `Interactions.split` on random small ratings tables (hypothesis)."""
import numpy as np, pandas as pd
import pytest
from hypothesis import Phase, given, note, settings, strategies as st
from fine_tuning_flm.data import Interactions

@st.composite
def tables(draw, min_rows=1, min_users=1, max_users=8, min_items=1, max_items=8):
    "A ratings table: a few users and items (ints or strings), unique (user, item) pairs, ratings 1..5 in halves, tied timestamps."
    n_users, n_items = draw(st.integers(min_users, max_users)), draw(st.integers(min_items, max_items))
    pairs = draw(st.lists(st.tuples(st.integers(0, n_users-1), st.integers(0, n_items-1)),
                          min_size=min_rows, max_size=n_users*n_items, unique=True))
    n = len(pairs)
    ratings = draw(st.lists(st.sampled_from([1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5]), min_size=n, max_size=n))
    times = draw(st.lists(st.integers(0, 12), min_size=n, max_size=n))       # few values: many ties
    string_ids = draw(st.booleans())
    uid = (lambda u: f'u{u}') if string_ids else (lambda u: 100 + 7*u)
    return pd.DataFrame({'user_id': [uid(u) for u, _ in pairs], 'item_id': [f'i{i}' if string_ids else 3*i for _, i in pairs],
                         'rating': ratings, 'timestamp': times})

def load(df): return Interactions.from_df(df, scale=(1, 5))

def rows(d):
    "The ratings of `d` as a sorted list of (user, item, rating, timestamp): a multiset of rows."
    return sorted(map(tuple, d.ratings[['user', 'item', 'rating', 'timestamp']].itertuples(index=False)))

SEEDED = [('random', dict(valid_pct=0.2)), ('random', dict(valid_pct=0.5)),
          ('stratified', dict(by='user')), ('stratified', dict(by='item', valid_pct=0.4)),
          ('cold_items', dict(pct=0.2)), ('cold_items', dict(pct=0.5)),
          ('cold_users', dict(pct=0.2)), ('cold_users', dict(pct=0.5))]
KINDS = SEEDED + [('temporal', dict(n=1)), ('temporal', dict(n=2)), ('temporal', dict(n=5))]
ids = [f"{k}-{'-'.join(f'{a}={b}' for a, b in kw.items())}" for k, kw in KINDS]

def check_split(d, kind, kw, seed):
    "No pair on both sides, the union is the input, both sides share the vocabulary, and the kind's own guarantee."
    if kind != 'temporal': kw = dict(kw, seed=seed)
    trn, tst = d.split(kind, **kw)
    # a partition of the rows
    assert sorted(rows(trn) + rows(tst)) == rows(d)
    assert not set(zip(trn.ratings.user, trn.ratings.item)) & set(zip(tst.ratings.user, tst.ratings.item))
    # one vocabulary
    for s in (trn, tst):
        assert s.items.equals(d.items) and s.users.equals(d.users)
        assert s.scale == d.scale and list(s.ratings.index) == list(range(len(s)))
    tu, ti = set(tst.ratings.user), set(tst.ratings.item)
    ru, ri = set(trn.ratings.user), set(trn.ratings.item)
    if kind == 'cold_items': assert not ti & ri
    if kind == 'cold_users': assert not tu & ru
    if kind in ('random', 'temporal') or (kind == 'stratified' and kw['by'] == 'user'): assert tu <= ru
    if kind == 'stratified' and kw['by'] == 'item': assert ti <= ri
    if kind == 'temporal':
        r, t, tr = d.ratings, tst.ratings, trn.ratings
        for u, g in r.groupby('user'):
            mine = t.timestamp[t.user == u]
            assert len(mine) == min(kw['n'], len(g) - 1)          # the last n, always one left to train on
            if len(mine): assert mine.min() >= tr.timestamp[tr.user == u].max()

@settings(max_examples=80, deadline=None)
@given(df=tables(), seed=st.integers(0, 2**32 - 1))
def test_split_partitions(df, seed):
    "Every kind of split, on the same random table."
    d = load(df)
    for (kind, kw), name in zip(KINDS, ids):
        note(f'split {name}')
        check_split(d, kind, kw, seed)

@settings(max_examples=50, deadline=None)
@given(df=tables(), seed=st.integers(0, 2**32 - 1))
def test_same_seed_same_split(df, seed):
    d = load(df)
    for (kind, kw), name in zip(SEEDED, ids):
        note(f'split {name}')
        a, b = d.split(kind, seed=seed, **kw), d.split(kind, seed=seed, **kw)
        for x, y in zip(a, b): pd.testing.assert_frame_equal(x.ratings, y.ratings)

@settings(max_examples=15, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])   # shrinking big tables takes minutes
@given(df=tables(min_rows=30, min_users=6, max_users=10, min_items=6, max_items=10))
def test_different_seed_usually_different_split(df):
    "On tables of 30+ ratings over several users and items, eight seeds give several different test sets."
    d = load(df)
    for (kind, kw), name in zip(SEEDED, ids):
        tests = {tuple(rows(d.split(kind, seed=s, **kw)[1])) for s in range(8)}
        assert len(tests) >= 3, f'split {name}: only {len(tests)} different test sets from 8 seeds'

@pytest.mark.parametrize('kind,kw', KINDS, ids=ids)
def test_split_sizes_on_a_fixed_table(kind, kw):
    "Sizes match what each kind promises, on a table big enough for the fractions to be exact."
    rng = np.random.default_rng(1)
    pairs = {(u, i) for u, i in zip(rng.integers(0, 50, 3000), rng.integers(0, 80, 3000))}
    df = pd.DataFrame(sorted(pairs), columns=['user_id', 'item_id']).assign(rating=lambda x: rng.integers(1, 6, len(x)),
                                                                          timestamp=lambda x: rng.integers(0, 10**6, len(x)))
    d = load(df)
    trn, tst = d.split(kind, **kw)
    size = d.ratings.groupby('user').size()
    if kind == 'temporal': assert len(tst) == np.minimum(kw['n'], size - 1).sum()
    if kind == 'random': assert abs(len(tst) - kw['valid_pct']*len(d)) <= d.n_users
    if kind.startswith('cold'):
        col = 'item' if kind == 'cold_items' else 'user'
        assert tst.ratings[col].nunique() == round(kw['pct'] * d.ratings[col].nunique())
    if kind == 'stratified':
        pct = kw.get('valid_pct', 0.25)
        for _, g in d.ratings.groupby(kw['by']):
            held = tst.ratings[kw['by']].eq(g[kw['by']].iloc[0]).sum()
            assert held == len(g) - max(1, round((1 - pct)*len(g)))

def test_bad_split_arguments():
    d = load(pd.DataFrame({'user_id': [1, 1, 2], 'item_id': [1, 2, 1], 'rating': [1, 2, 3], 'timestamp': [1, 2, 3]}))
    with pytest.raises(ValueError, match="'kfold'.*'random'"): d.split('kfold')
    with pytest.raises(ValueError, match="'genre'"): d.split('stratified', by='genre')
    with pytest.raises(ValueError, match='n must be >= 1, got 0'): d.split('temporal', n=0)
