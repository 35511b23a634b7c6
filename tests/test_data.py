"""`fine_tuning_flm.data` beyond the lesson: the bad-input table for `Interactions.from_df`/`from_csv`, duplicates,
codes and scales, and the real MovieLens files (from FLM_DATA: the needs_data marker of conftest.py)."""
import os, re, warnings
from pathlib import Path
import numpy as np, pandas as pd
import pytest
from fine_tuning_flm.data import *
from fine_tuning_flm.data import clean_title

# --- the bad-input table ----------------------------------------------------------------------------------------------

def good_ratings(n=15):
    "A valid table: 5 users x 3 items, ratings 1..5, distinct timestamps."
    return pd.DataFrame({'user_id': [1 + k//3 for k in range(n)], 'item_id': [10*(1 + k%3) for k in range(n)],
                         'rating': [1 + k%5 for k in range(n)], 'timestamp': [1000 + k for k in range(n)]})

def good_items(): return pd.DataFrame({'item_id': [10, 20, 30], 'title': ['Toy Story (1995)', 'Heat (1995)', 'Fargo (1996)']})

def with_values(df, col, rows, vals):
    "`df` with `col` set to `vals` at `rows` (the column becomes object dtype if needed)."
    df = df.copy(); c = df[col].astype(object)
    for r, v in zip(rows, vals): c.iloc[r] = v
    df[col] = c
    return df

# name: (ratings, items, from_df kwargs, error type, regexes the message must match; {src} is the ratings source name)
CASES = {
    'missing column':        (good_ratings().drop(columns='rating'), None, {}, ValueError,
                              [r"^{src}: missing column 'rating'", r"columns are \['user_id', 'item_id', 'timestamp'\]"]),
    'NaN user id':           (with_values(good_ratings(), 'user_id', [3, 7], [np.nan, np.nan]), None, {}, ValueError,
                              [r"^{src}: column 'user_id' has 2 missing value\(s\), e\.g\. at row 3$"]),
    'NaN item id':           (with_values(good_ratings(), 'item_id', [5], [np.nan]), None, {}, ValueError,
                              [r"^{src}: column 'item_id' has 1 missing value\(s\), e\.g\. at row 5$"]),
    'NaN rating':            (with_values(good_ratings(), 'rating', [2, 9, 11], [np.nan]*3), None, {}, ValueError,
                              [r"^{src}: column 'rating' has 3 missing value\(s\), e\.g\. at row 2$"]),
    'non-numeric rating':    (with_values(good_ratings(), 'rating', [4, 10], ['five', '4 stars']), None, {}, ValueError,
                              [r"^{src}: column 'rating' has 2 non-numeric value\(s\), e\.g\. 'five' at row 4$"]),
    'infinite rating':       (with_values(good_ratings(), 'rating', [5, 6], [np.inf, -np.inf]), None, {}, ValueError,
                              [r"^{src}: column 'rating' has 2 infinite value\(s\), e\.g\. inf at row 5$"]),
    'rating off the scale':  (with_values(good_ratings(), 'rating', [12, 13, 14], [7, 0, 9]), None, dict(scale=(1, 5)), ValueError,
                              [r"^{src}: column 'rating' has 3 value\(s\) outside \[1\.0, 5\.0\], e\.g\. 7 at row 12$"]),
    'non-numeric timestamp': (with_values(good_ratings(), 'timestamp', [6, 8], ['yesterday', 'soon']), None, {}, ValueError,
                              [r"^{src}: column 'timestamp' has 2 missing or non-numeric timestamps, e\.g\. 'yesterday' at row 6$"]),
    'header only':           (good_ratings().iloc[:0], None, {}, ValueError, [r"^{src}: no ratings", 'only a header']),
    'item table without id': (good_ratings(), good_items().rename(columns={'item_id': 'movie'}), {}, ValueError,
                              [r"^{src}: the item table has no column 'item_id'", r"columns are \['movie', 'title'\]"]),
    'duplicate item ids':    (good_ratings(), pd.concat([good_items(), good_items().iloc[[1, 0]]], ignore_index=True), {}, ValueError,
                              [r"^{src}: the item table repeats 2 ids, e\.g\. 20$"]),
    'unknown items':         (with_values(good_ratings(), 'item_id', [3, 4, 8], [99, 98, 99]), good_items(), {}, ValueError,
                              [r"^{src}: 2 item ids in the ratings are not in the item table, e\.g\. 99$"]),
}

def run(via, ratings, items, kw, tmp_path):
    "Build an `Interactions` from DataFrames directly or through CSV files; returns the source name errors use."
    if via == 'df': return 'ratings', lambda: Interactions.from_df(ratings, items, **kw)
    rf = tmp_path/'ratings.csv'; ratings.to_csv(rf, index=False)
    itf = None
    if items is not None: itf = tmp_path/'items.csv'; items.to_csv(itf, index=False)
    return 'ratings.csv', lambda: Interactions.from_csv(rf, itf, **kw)

@pytest.mark.parametrize('via', ['df', 'csv'])
@pytest.mark.parametrize('case', list(CASES))
def test_bad_input(case, via, tmp_path):
    ratings, items, kw, err, patterns = CASES[case]
    src, f = run(via, ratings, items, kw, tmp_path)
    with pytest.raises(err) as e: f()
    for p in patterns: assert re.search(p.format(src=re.escape(src)), str(e.value)), f"{str(e.value)!r} does not match {p!r}"

def test_good_table_passes(tmp_path):
    "The control for the table above: every bad case is one edit away from this table, which loads both ways."
    for via in ('df', 'csv'):
        _, f = run(via, good_ratings(), good_items(), dict(scale=(1, 5)), tmp_path)
        d = f()
        assert (len(d), d.n_users, d.n_items, d.scale) == (15, 5, 3, (1.0, 5.0))

def test_empty_file(tmp_path):
    (tmp_path/'ratings.csv').write_bytes(b'')
    with pytest.raises(ValueError, match=r'^ratings\.csv: the file is empty'): Interactions.from_csv(tmp_path/'ratings.csv')
    good_ratings().to_csv(tmp_path/'r2.csv', index=False); (tmp_path/'items.csv').write_bytes(b'')
    with pytest.raises(ValueError, match=r'^items\.csv: the file is empty'): Interactions.from_csv(tmp_path/'r2.csv', tmp_path/'items.csv')

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.csv'): Interactions.from_csv(tmp_path/'nope.csv')

@pytest.mark.parametrize('bad', [good_ratings().to_dict('records'), good_ratings().to_numpy(), 'ratings.csv', None])
def test_ratings_not_a_dataframe(bad):
    with pytest.raises(TypeError, match=rf'^ratings: ratings must be a pandas DataFrame, got {type(bad).__name__}$'):
        Interactions.from_df(bad)

def test_from_csv_names_errors_after_the_file(tmp_path):
    fn = tmp_path/'my ratings.tsv'
    with_values(good_ratings(), 'rating', [1], ['x']).to_csv(fn, sep='\t', index=False)
    with pytest.raises(ValueError, match=r"^my ratings\.tsv: column 'rating' has 1 non-numeric value\(s\), e\.g\. 'x' at row 1$"):
        Interactions.from_csv(fn, sep='\t')

def test_constant_ratings_need_a_scale():
    r = good_ratings().assign(rating=4)
    with pytest.raises(ValueError, match=r"^ratings: every value in column 'rating' is 4, .*pass scale=\(low, high\)$"): Interactions.from_df(r)
    assert Interactions.from_df(r, scale=(1, 5)).scale == (1.0, 5.0)

def test_bad_explicit_scale():
    with pytest.raises(ValueError, match=r'low < high'): Interactions.from_df(good_ratings(), scale=(5, 1))

# --- duplicates, ids, codes, scale ------------------------------------------------------------------------------------

def test_duplicates_keep_latest_by_timestamp():
    r = pd.DataFrame({'user_id': ['a', 'a', 'b', 'a', 'b', 'c', 'a'], 'item_id': ['x', 'y', 'x', 'x', 'x', 'x', 'x'],
                      'rating':  [1,   2,   3,   4,   5,   1,   3],   'timestamp': [50, 1, 9, 10, 2, 3, 20]})
    # (a, x) rated at t=50, 10, 20: keep t=50 (rating 1, the first row); (b, x) at t=9, 2: keep t=9 (rating 3, row 2)
    with pytest.warns(UserWarning, match=r"^ratings: dropped 3 duplicate \(user_id, item_id\) pairs, kept the latest by 'timestamp'$"):
        d = Interactions.from_df(r)
    got = {(d.users.id[u], d.items.id[i]): (v, t) for u, i, v, t in d.ratings.itertuples(index=False)}
    assert got == {('a', 'x'): (1, 50), ('a', 'y'): (2, 1), ('b', 'x'): (3, 9), ('c', 'x'): (1, 3)}

def test_duplicates_without_time_keep_last_row():
    r = pd.DataFrame({'user_id': [1, 1, 2, 1], 'item_id': [5, 6, 5, 5], 'rating': [1, 2, 3, 4]})
    with pytest.warns(UserWarning, match=r'dropped 1 duplicate .* kept the latest row'): d = Interactions.from_df(r)
    assert sorted(zip(d.users.id[d.ratings.user], d.items.id[d.ratings.item], d.ratings.rating)) == [(1, 5, 4), (1, 6, 2), (2, 5, 3)]
    assert d.ratings.timestamp.tolist() == list(range(3))     # row order stands in for time

def test_no_warning_without_duplicates():
    with warnings.catch_warnings(): warnings.simplefilter('error'); Interactions.from_df(good_ratings())

def test_string_ids_codes_contiguous_and_map_back():
    rng = np.random.default_rng(0)
    users, items = [f'user-{k}' for k in rng.permutation(40)], [f'tt{k:05d}' for k in rng.permutation(60)]
    pairs = {(u, i) for u, i in zip(rng.choice(users, 500), rng.choice(items, 500))}
    r = pd.DataFrame(sorted(pairs), columns=['who', 'what']).assign(stars=lambda df: rng.integers(1, 11, len(df)) / 2)
    d = Interactions.from_df(r, user_col='who', item_col='what', rating_col='stars', time_col=None)
    assert len(d) == len(pairs)
    assert d.ratings.user.dtype == np.int64 and d.ratings.item.dtype == np.int64 and d.ratings.rating.dtype == np.float32
    assert sorted(d.ratings.user.unique()) == list(range(d.n_users)) == list(range(r.who.nunique()))
    assert sorted(d.ratings.item.unique()) == list(range(d.n_items)) == list(range(r.what.nunique()))
    back = set(zip(d.users.id[d.ratings.user], d.items.id[d.ratings.item], d.ratings.rating.astype(float)))
    assert back == set(zip(r.who, r.what, r.stars))
    assert d.user_code(d.users.id.tolist()).tolist() == list(range(d.n_users))
    assert d.item_code(d.items.id[7]) == 7 and isinstance(d.item_code(d.items.id[7]), int)
    assert d.user_code([r.who[0], r.who[1]]).tolist() == [d.users.id.tolist().index(r.who[0]), d.users.id.tolist().index(r.who[1])]
    with pytest.raises(KeyError, match="'zed'"): d.user_code('zed')
    with pytest.raises(KeyError, match=r"2 item id\(s\).*'nope'"): d.item_code([d.items.id[0], 'nope', 'nix'])

def test_unknown_numeric_id_named_plainly():
    d = Interactions.from_df(good_ratings())
    with pytest.raises(KeyError) as e: d.item_code([10, 99])
    assert e.value.args[0] == 'ratings: 1 item id(s) not in the vocabulary, e.g. 99'
    with pytest.raises(KeyError) as e: d.user_code(np.int64(6))
    assert e.value.args[0].endswith('e.g. 6')

def test_item_table_defines_vocabulary():
    it = pd.DataFrame({'item_id': [30, 99, 10, 20], 'title': ['Fargo (1996)', 'Unrated (2000)', 'Toy Story (1995)', 'Heat (1995)']})
    d = Interactions.from_df(good_ratings(), it)
    assert d.items.id.tolist() == [10, 20, 30, 99] and d.n_items == 4
    assert d.items.text.tolist() == ['Toy Story (1995).', 'Heat (1995).', 'Fargo (1996).', 'Unrated (2000).']
    assert set(d.ratings.item) == {0, 1, 2}

def test_scale_inferred_vs_explicit():
    r = good_ratings().assign(rating=lambda df: (df.rating - 0.5).where(df.index != 3, 4.5))
    assert Interactions.from_df(r).scale == (r.rating.min(), r.rating.max()) == (0.5, 4.5)
    assert Interactions.from_df(r, scale=(0.5, 5)).scale == (0.5, 5.0)
    with pytest.raises(ValueError, match=r'outside \[1\.0, 5\.0\], e\.g\. 0\.5 at row 0'): Interactions.from_df(r, scale=(1, 5))

# --- the real MovieLens files -----------------------------------------------------------------------------------------

FLM_DATA = os.environ.get('FLM_DATA')
def _have(name, f): return bool(FLM_DATA) and (Path(FLM_DATA)/name/f).exists()
needs_100k = pytest.mark.needs_data('ml-100k')           # fails without FLM_DATA (see conftest.py)
needs_small = pytest.mark.needs_data('ml-latest-small')

@pytest.fixture(scope='module')
def no_writes(tmp_path_factory):
    "A throwaway FLM_CACHE, so loading from FLM_DATA never touches a real cache."
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('FLM_CACHE', str(tmp_path_factory.mktemp('cache'))); yield

@pytest.fixture(scope='module')
def ml100k(no_writes): return load_movielens('ml-100k')

@pytest.fixture(scope='module')
def mls(no_writes): return load_movielens('ml-latest-small')

@needs_100k
def test_ml100k(ml100k):
    assert (len(ml100k), ml100k.n_users, ml100k.n_items, ml100k.scale) == (100_000, 943, 1682, (1.0, 5.0))
    assert ml100k.path == Path(FLM_DATA)/'ml-100k'
    assert list(ml100k.users.columns) == ['id', 'age', 'gender', 'occupation']
    raw = pd.read_csv(Path(FLM_DATA)/'ml-100k'/'u.user', sep='|', names=['id', 'age', 'gender', 'occupation', 'zip'])
    pd.testing.assert_frame_equal(ml100k.users, raw.drop(columns='zip'))
    assert user_texts(ml100k, n_titles=0)[:2] == ['24-year-old male technician', '53-year-old woman']   # 'other' is no job
    assert ml100k.items.text[ml100k.item_code(1)] == "Toy Story (1995). Genres: Animation, Children's, Comedy."

@needs_small
def test_ml_latest_small(mls):
    assert (len(mls), mls.n_users, mls.n_items, mls.scale) == (100_836, 610, 9742, (0.5, 5.0))
    tags = pd.read_csv(Path(FLM_DATA)/'ml-latest-small'/'tags.csv')
    tagged = mls.items.text.str.contains('Tags: ', regex=False)
    assert set(mls.items.id[tagged]) == set(tags.movieId)
    assert 'Tags: pixar' in mls.items.text[mls.item_code(1)]

@needs_100k
@pytest.mark.parametrize('fold', OFFICIAL_FOLDS)
def test_official_folds_reproduce_files(ml100k, fold):
    trn, tst = ml100k.split('official', fold=fold)
    names = ['user_id', 'item_id', 'rating', 'timestamp']
    def rows(d): return sorted(zip(d.users.id[d.ratings.user], d.items.id[d.ratings.item], d.ratings.rating.astype(int), d.ratings.timestamp))
    for d, part in ((trn, 'base'), (tst, 'test')):
        f = pd.read_csv(Path(FLM_DATA)/'ml-100k'/f'{fold}.{part}', sep='\t', names=names)
        assert rows(d) == sorted(zip(f.user_id, f.item_id, f.rating, f.timestamp))
        assert d.items.equals(ml100k.items) and d.users.equals(ml100k.users)
    assert (len(trn), len(tst)) == ((80_000, 20_000) if fold.startswith('u') and fold[1].isdigit() else (100_000 - 9430, 9430))

@needs_100k
def test_official_refuses_bad_fold(ml100k, request):
    with pytest.raises(ValueError, match="'u6'"): ml100k.split('official', fold='u6')
    if _have('ml-latest-small', 'tags.csv'):   # (never download it: only ask for the fixture when FLM_DATA has it)
        with pytest.raises(ValueError, match='only for ml-100k'): request.getfixturevalue('mls').split('official')

@needs_100k
def test_user_texts_do_not_leak_u1_test_items(ml100k):
    trn, tst = ml100k.split('official', fold='u1')
    fav = favourite_items(trn)
    test_pairs = set(zip(tst.ratings.user, tst.ratings.item))
    train_pairs = set(zip(trn.ratings.user, trn.ratings.item))
    assert sum(map(len, fav)) > 4000                     # most users have five favourites: the check is not vacuous
    assert all((u, i) not in test_pairs for u, f in enumerate(fav) for i in f)
    assert all((u, i) in train_pairs for u, f in enumerate(fav) for i in f)
    texts = user_texts(trn)
    titles = trn.items.title.map(clean_title)
    for u in range(0, trn.n_users, 37):
        if fav[u]: assert texts[u].endswith(' who loved ' + ', '.join(titles[fav[u]]))
    # and the favourites are the best-rated training items of each user
    r = trn.ratings
    for u in range(0, trn.n_users, 37):
        mine = r[r.user == u]
        if fav[u]: assert r.set_index(['user', 'item']).rating.loc[[(u, i) for i in fav[u]]].min() >= mine.rating.nlargest(len(fav[u])).min()


@needs_small
@pytest.mark.parametrize('kind,kw', [('random', {}), ('temporal', dict(n=5)), ('stratified', {}), ('recommenders', {}),
                                     ('cold_items', {}), ('cold_users', {})])
def test_no_held_out_tag_reaches_the_item_text(kind, kw):
    "Issue #21: every tag in a split's item texts was written by a training pair of that item (before the fix, held-out raters' tags were there)."
    mls = load_movielens('ml-latest-small')
    trn, tst = mls.split(kind, **kw)
    pairs = set(zip(trn.ratings.user, trn.ratings.item))
    allowed = {(i, t) for u, i, t in zip(mls.tags.user, mls.tags.item, mls.tags.tag) if (u, i) in pairs}
    for side in (trn, tst):
        shown = {(i, t) for i, ts in enumerate(side.items.tags) for t in set(ts.split('|')) - {''}}
        assert shown <= allowed, sorted(shown - allowed)[:5]
        assert side.items.text.tolist() == item_texts(side.items.drop(columns='text'), mls.template)    # the texts say exactly these tags
    held = {(u, i) for u, i in zip(tst.ratings.user, tst.ratings.item)}
    only_held = {(i, t) for u, i, t in zip(mls.tags.user, mls.tags.item, mls.tags.tag) if (u, i) in held} - allowed
    assert only_held and not only_held & {(i, t) for i, ts in enumerate(trn.items.tags) for t in ts.split('|')}   # the test can fail: such tags exist
