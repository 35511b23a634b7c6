"""`Recommender.explain` (#26) beyond the lesson: the exact split of a pooled-history model adds up to the score and to the
item's lead, a history item's lead is what deleting it takes from that lead (exactly, with no renormalisation), leave-one-out
fold-ins where the vector is no sum, new users and brand-new items, text fields re-encoded without each field, refusals by
name, the 'because' column, and `flm explain` / `flm recommend --explain`. Small models by hand (`tiny` of test_save)."""
import re
import numpy as np, pandas as pd, pytest, torch

from fine_tuning_flm.cli import main
from fine_tuning_flm.data import item_texts
from fine_tuning_flm.factorization import FLM
from fine_tuning_flm.recommend import Recommender, LEAD_OVER, text_fields
from test_save import StubEncoder

USERS = ('ann', 'bob', 'cy', 'dee', 'ed')

def small(item_ids=tuple(range(1, 31)), text_dim:int=8, seed:int=0, **flm_kw) -> Recommender:
    "A random FLM with item text over a few dozen items, served; each user rated every other item, the last item is new."
    torch.manual_seed(seed)
    n_u, n_i = len(USERS), len(item_ids)
    m = FLM(n_u, n_i, n_factors=4, y_range=(0.5, 5.5), item_text=torch.randn(n_i, text_dim), **flm_kw)
    with torch.no_grad():
        for p in m.parameters(): p.normal_()
    m.seen_items[-1] = False
    items = pd.DataFrame({'id': list(item_ids), 'title': [f'Film {i} (19{i:02d})' for i in range(n_i)], 'genres': ['Comedy|Drama', 'Horror', 'Sci-Fi'] * (n_i // 3)})
    items['text'] = item_texts(items)
    seen = torch.tensor([[u, i] for u in range(n_u) for i in range(n_i - 1) if (u + i) % 2 == 0])
    if m.history:
        m.hist_ptr = torch.tensor([0] + np.cumsum(np.bincount(seen[:, 0].numpy(), minlength=n_u)).tolist()); m.hist_items = seen[:, 1].clone()
    r = pd.DataFrame({'user': seen[:, 0].numpy(), 'item': seen[:, 1].numpy(), 'rating': np.random.default_rng(seed).integers(1, 6, len(seen)).astype('float32')})
    return Recommender(m, items, pd.DataFrame({'id': list(USERS)}), r, scale=(1, 5))

def ranker(**kw) -> Recommender:
    "A ranking FLM with pooled history, its encoder a stub of the text's width."
    rec = small(objective='softmax', history=True, **kw); rec._encoder = StubEncoder()
    return rec

def score_row(rec, u:int) -> torch.Tensor: return rec._scores_for(u)

def test_the_exact_split_adds_up_to_the_score_and_the_lead():
    rec = ranker()
    s = score_row(rec, 0)
    i = int(torch.topk(s, 3).indices[-1])                              # ann's third item
    ex = rec.explain('ann', rec.items.id[i], k=2)
    assert ex.attrs['method'] == 'exact'
    user = ex[ex.side == 'user']
    assert user.part.tolist() == ['history', 'history', 'other history', 'user ID', 'popularity']
    np.testing.assert_allclose(ex.attrs['score'], float(s[i]), atol=1e-5)
    np.testing.assert_allclose(user.effect.sum(), float(s[i]), atol=1e-3)
    below = rec._vocab.item_code(ex.attrs['below'])
    assert len(below) == LEAD_OVER and (s[below] < s[i]).all()
    np.testing.assert_allclose(ex.attrs['lead'], float(s[i] - s[below].mean()), atol=1e-4)
    np.testing.assert_allclose(user.lead.sum(), ex.attrs['lead'], atol=1e-3)
    assert user.lead.iloc[0] >= user.lead.iloc[1]

def test_a_history_item_lead_is_what_deleting_it_takes_away():
    "With history_alpha=0 the pool is a plain sum, so deleting an item moves the item's lead by exactly that item's lead."
    rec = ranker(history_alpha=0.0)
    m, u = rec.model, 1
    s = score_row(rec, u); i = int(torch.topk(s, 2).indices[-1])
    ex = rec.explain(rec.users.id[u], rec.items.id[i], k=1, fields=False)
    j, below = rec._vocab.item_code(ex.id.iloc[0]), rec._vocab.item_code(ex.attrs['below'])
    t = rec._user_terms(u); codes, y = t['history']
    p = sum(v[0] for k, v in t.items() if k != 'history') + y[codes != j].sum(0)
    q, b = m._item_table(cold=True); s2 = q @ p + b[:, -1]
    lead = lambda sc: float(sc[i] - sc[below].mean())
    np.testing.assert_allclose(lead(s) - lead(s2), ex.lead.iloc[0], atol=1e-3)

def test_leave_one_out_where_the_vector_is_no_sum():
    rec = small(); rec._encoder = StubEncoder()                          # a rating model: no pooled history
    ex = rec.explain('bob', 1, k=3)
    assert ex.attrs['method'] == 'leave-one-out' and ex.attrs['scale'] == 'logit of the rating'
    assert ex.part.iloc[0] == 'history (leave-one-out)'
    it, r = rec.user_ratings(1)
    j = int(np.flatnonzero(rec.items.id.to_numpy()[it] == ex.id.iloc[0])[0])
    q, b = rec.model._item_table(cold=True)
    full, without = rec.model.fold_in(it, r, cold=True), rec.model.fold_in(np.delete(it, j), np.delete(r, j), cold=True)
    raw = lambda pb: float(rec._raw(*pb, q[[0]], b[[0]])[0].detach())
    np.testing.assert_allclose(ex.effect.iloc[0], raw(full) - raw(without), atol=1e-3)
    np.testing.assert_allclose(ex[(ex.side == 'user') & ~ex.part.str.contains('leave')].effect.sum(), ex.attrs['raw'], atol=1e-3)
    np.testing.assert_allclose(ex.attrs['score'], rec.predict('bob', 1), atol=1e-3)

def test_text_fields_are_re_encoded_without_each_field():
    rec = ranker()
    i = int(torch.topk(score_row(rec, 0), 1).indices[0])
    ex = rec.explain('ann', rec.items.id[i])
    item = ex[ex.side == 'item']
    fields = text_fields(rec.items, rec.items.iloc[i].to_dict())
    assert item.part.tolist() == ['item ID'] + ['text field'] * len(fields) and item.id.tolist()[1:] == list(fields)
    m, f = rec.model, rec.model.n_factors
    p, bu = m.user_side(torch.tensor([0]))
    t = m.i_proj(torch.cat([m.i_text.vectors[[i]], StubEncoder().encode(list(fields.values()))]))   # the stored vector, then each text without a field
    sc = (m.i_weight.weight[i] + t[:, :f]) @ p[0] + m.i_rbias.weight[i, 0] + t[:, -1]
    np.testing.assert_allclose(item.effect.iloc[1:].to_numpy(), (sc[0] - sc[1:]).detach().numpy(), atol=1e-3)
    assert (item.effect == item.lead).all()

def test_a_new_user_and_a_brand_new_item():
    rec = ranker()
    ex = rec.explain({1: 5, 4: 4, 7: 1}, 10, k=2)
    assert ex.part.tolist()[:2] == ['history (leave-one-out)'] * 2 and 'user (fold-in)' in ex.part.tolist()
    new = rec.explain('ann', {'title': 'A New Film (2024)', 'genres': 'Sci-Fi'})
    assert 'item ID' not in new.part.tolist() and new[new.side == 'item'].id.tolist() == ['title', 'genres']
    assert new[new.side == 'item'].title.tolist() == ['A New Film (2024).', 'Sci-Fi.']      # each field as the text writes it
    bare = rec.explain('ann', {'text': 'One sentence. Another one.'})
    assert bare[bare.side == 'item'].id.tolist() == ['sentence 1', 'sentence 2']       # a bare text: its sentences

@pytest.mark.parametrize('user, item, err, match', [
    ('nobody', 2, KeyError, "'nobody'"), ('ann', 999, KeyError, '999'), ('ann', 1, ValueError, "user 'ann' already rated item 1; explain an item they have not rated"),
    ({1: 5}, 1, ValueError, 'the new user already rated item 1'), ({1: 9}, 2, ValueError, 'the rating of item 1 is 9'), ('ann', 2, ValueError, 'k must be a positive int')])
def test_refusals_name_the_value(user, item, err, match):
    rec = ranker()
    with pytest.raises(err, match=re.escape(match)): rec.explain(user, item, **({'k': 0} if 'k must' in match else {}))

def test_because_names_liked_items_that_raise_the_score():
    rec = ranker()
    top = rec.recommend('cy', k=5, explain=True)
    it, r = rec.user_ratings(2)
    liked = set(rec._label(it[r >= 3]))
    for iid, because in zip(top.id, top.because):
        names = [x for x in because.split(', ') if x]
        assert len(names) <= 2 and set(names) <= liked
        if names:
            ex = rec.explain('cy', iid, k=len(it), fields=False)
            rows = ex[ex.part == 'history'].set_index('title')
            assert (rows.loc[names].effect > 0).all() and (rows.loc[names].lead > 0).all()
    assert 'because' in rec.recommend_for({1: 5, 4: 5}, k=3, explain=True).columns
    assert 'because' not in rec.recommend('cy', k=3).columns

# --- flm explain, flm recommend --explain ----------------------------------------------------------------------------

def flm(capsys, *args):
    try: main([str(a) for a in args]); code = 0
    except SystemExit as e: code = e.code
    c = capsys.readouterr()
    return code, c.out, c.err

@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    "A ranking model with pooled history whose item text has MiniLM's width: `flm` reads new texts with the bundled model."
    rec = small(tuple(f'i{j}' for j in range(21)), objective='softmax', history=True, text_dim=384)
    return rec.save(tmp_path_factory.mktemp('m')/'model')

def test_flm_explain_and_recommend_explain(capsys, saved):
    code, out, err = flm(capsys, 'recommend', saved, '--user', 'ann', '-k', 3, '--explain')
    assert code == 0 and 'because' in out.splitlines()[0], err
    top = Recommender.load(saved).recommend('ann', k=1).id[0]
    code, out, err = flm(capsys, 'explain', saved, '--user', 'ann', '--item', top, '-k', 2)
    assert code == 0, err
    assert re.match(rf"item {top} scores -?\d+\.\d{{3}} for user ann \(ranking score\); exact: the user's rows add up to the score", out)
    assert 'popularity' in out and 'text field' in out
    code, out, err = flm(capsys, 'explain', saved, '--rated', 'i0:5,i2:4', '--item', 'i5')
    assert code == 0 and 'for a new user who rated 2 item(s)' in out and 'leave-one-out' in out, err

@pytest.mark.parametrize('args, match', [
    (('--user', 'nobody', '--item', 'i1'), r"user 'nobody' is not among this model's 5 users"),
    (('--user', 'ann', '--item', 'i99'), r"item 'i99' is not among this model's 21 items"),
    (('--user', 'ann', '--item', 'i0'), r"user 'ann' already rated item 'i0'"),
    (('--history', 'i1,i2', '--item', 'i3'), r'--history serves a next-item model'),
    (('--user', 'ann'), r'the following arguments are required: --item')])
def test_flm_explain_refuses_on_one_line(capsys, saved, args, match):
    code, out, err = flm(capsys, 'explain', saved, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith('flm: error: ') and re.search(match, lines[0]), err
