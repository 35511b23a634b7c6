"""Serving the next-item model (#23 item 7): `NextItemRecommender` saves and loads whole (a fine-tuned language model
included), refuses an unknown id by name, scores a new item from its text exactly like a trained one, explains by
leave-one-out, and `flm train --recbole` / `flm recommend --history` / `flm explain --history` serve it from a shell. A
synthetic shop in RecBole's atomic files, trained for an epoch or two."""
import json, re
from pathlib import Path

import numpy as np, pandas as pd, pytest, torch

from fine_tuning_flm.cli import main
from fine_tuning_flm.recommend import NextItemRecommender, Recommender, load_model
from fine_tuning_flm.sequential import load_recbole, next_item_learner, fit_next_item

DEPTS = ['Tools', 'Lab glassware', 'Safety', '3D printing']

def write_recbole(folder:Path, seqs:list, texts:list, name:str='gadgets') -> Path:
    "RecBole's atomic sequence files, as UniSRec writes them: every training prefix -> next item, then one valid and one test row per user."
    folder.mkdir(parents=True, exist_ok=True); ids = [f'i{j:02d}' for j in range(len(texts))]
    (folder/f'{name}.item2index').write_text(''.join(f'{x}\t{j}\n' for j, x in enumerate(ids)))
    (folder/f'{name}.user2index').write_text(''.join(f'u{u}\t{u}\n' for u in range(len(seqs))))
    (folder/f'{name}.text').write_text('item_id:token\ttext:token_seq\n' + ''.join(f'{x}\t{t}\n' for x, t in zip(ids, texts)))
    head, row = 'user_id:token\titem_id_list:token_seq\titem_id:token\n', lambda u, h, t: f"{u}\t{' '.join(map(str, h))}\t{t}\n"
    (folder/f'{name}.train.inter').write_text(head + ''.join(row(u, s[:k], s[k]) for u, s in enumerate(seqs) for k in range(1, len(s) - 2)))
    (folder/f'{name}.valid.inter').write_text(head + ''.join(row(u, s[:-2], s[-2]) for u, s in enumerate(seqs)))
    (folder/f'{name}.test.inter').write_text(head + ''.join(row(u, s[:-1], s[-1]) for u, s in enumerate(seqs)))
    return folder

@pytest.fixture(scope='module')
def shop(tmp_path_factory) -> Path:
    "24 gadgets in 4 departments; 80 customers, each staying in one department."
    texts = [f"{DEPTS[j % 4]} gadget number {j}. Industrial & Scientific {DEPTS[j % 4]}. {'Acme' if j < 12 else 'Apex'}." for j in range(24)]
    gen = np.random.default_rng(1)
    seqs = [[int(x) for x in gen.choice(np.arange(u % 4, 24, 4), int(gen.integers(6, 10)))] for u in range(80)]
    return write_recbole(tmp_path_factory.mktemp('recbole')/'gadgets', seqs, texts)

def served(shop, items='text', text='frozen', epochs=1, **kw) -> NextItemRecommender:
    trn, val, _ = load_recbole(shop)
    learn = next_item_learner(trn, val, text=text, items=items, seed=0, dim=16, **kw)
    return NextItemRecommender.from_learner(fit_next_item(learn, epochs=epochs, joint=text != 'frozen', progress=False), trn)

@pytest.fixture(scope='module')
def rec(shop): return served(shop)

HIST = ['i01', 'i05', 'i09']

def test_a_history_nobody_had_is_scored_as_the_model_scores(rec, shop):
    trn, _, tst = load_recbole(shop)
    u = 3; h = trn.items.id[tst.sequences[u]].tolist()
    torch.testing.assert_close(rec.scores(h), rec.model.score_histories(tst.sequences, [u])[0])
    top = rec.recommend(HIST, k=5)
    assert len(top) == 5 and list(top.columns) == ['id', 'text', 'score'] and top.score.is_monotonic_decreasing
    assert not set(rec.recommend(HIST, k=24, exclude_history=True).id) & set(HIST)
    assert set(rec.recommend(HIST, k=24).id) >= set(HIST)             # RecBole's rule: the history stays in the ranking

@pytest.mark.parametrize('call', ['recommend', 'scores', 'explain-history', 'explain-item'])
def test_an_unknown_id_is_refused_by_name(rec, call):
    f = {'recommend': lambda: rec.recommend(['i01', 'B00NOPE']), 'scores': lambda: rec.scores(['B00NOPE']),
         'explain-history': lambda: rec.explain(['B00NOPE'], 'i01'), 'explain-item': lambda: rec.explain(HIST, 'B00NOPE')}[call]
    with pytest.raises(KeyError, match=re.escape("item 'B00NOPE' is not in this model's catalogue of 24 items")): f()

def test_bad_histories_are_refused(rec):
    with pytest.raises(TypeError, match='must be a list of item ids'): rec.recommend('i01')
    with pytest.raises(ValueError, match='at least one'): rec.recommend([])
    with pytest.raises(ValueError, match='k must be a positive int'): rec.recommend(HIST, k=0)

def test_a_new_item_from_text_scores_like_a_trained_item(rec, tmp_path):
    grown = rec.add_items(pd.DataFrame({'id': ['new-1', 'new-2'], 'text': [rec.items.text[5], 'A Safety gadget nobody has seen. Industrial & Scientific Safety. Apex.']}))
    s = grown.scores(HIST)
    assert grown.model.n_items == 26 and len(s) == 26
    torch.testing.assert_close(s[24], s[5], atol=1e-4, rtol=0)          # the words of item 5: item 5's score
    torch.testing.assert_close(s[:24], rec.scores(HIST))                # the catalogue's scores do not move
    back = NextItemRecommender.load(grown.save(tmp_path/'m'))
    torch.testing.assert_close(back.scores(HIST), s)
    assert back.items.id.tolist()[-2:] == ['new-1', 'new-2']
    with pytest.raises(ValueError, match='already in the catalogue'): rec.add_items(pd.DataFrame({'id': ['i03'], 'text': ['x']}))
    with pytest.raises(ValueError, match="'id' and 'text' columns"): rec.add_items(pd.DataFrame({'id': ['x']}))

def test_an_id_model_has_no_new_items(shop):
    r = served(shop, items='id')
    assert r.model.items.text is None
    with pytest.raises(ValueError, match="reads no item text"): r.add_items(pd.DataFrame({'id': ['x'], 'text': ['y']}))

def test_text_and_id_new_items_have_no_id_part(shop):
    r = served(shop, items='text+id')
    grown = r.add_items(pd.DataFrame({'id': ['twin'], 'text': [r.items.text[5]]}))
    s, side = grown.scores(HIST), grown.model.items
    assert not side.seen[-1] and side.seen[5]
    torch.testing.assert_close(grown._vectors()[-1], grown._text_vectors(side.text.vectors[[5]])[0])   # item 5's text part alone

def test_save_and_load_round_trip(rec, tmp_path):
    path = rec.save(tmp_path/'m')
    assert sorted(p.name for p in path.iterdir()) == ['config.json', 'items.csv', 'manifest.json', 'model.safetensors']
    m = json.loads((path/'manifest.json').read_text())
    assert m['format'] == 'fine_tuning_flm.NextItemRecommender' and m['n_items'] == 24
    back = NextItemRecommender.load(path)
    torch.testing.assert_close(back.scores(HIST), rec.scores(HIST))
    assert back.config == rec.config and back.items.equals(rec.items)
    pd.testing.assert_frame_equal(back.explain(HIST, 'i13'), rec.explain(HIST, 'i13'))
    assert isinstance(load_model(path), NextItemRecommender)
    assert not list(tmp_path.glob('.m*'))                              # no lock file, no temporary folder left beside it

def test_a_changed_folder_is_refused(rec, tmp_path):
    path = rec.save(tmp_path/'m')
    raw = bytearray((path/'model.safetensors').read_bytes()); raw[-1] ^= 1; (path/'model.safetensors').write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"model\.safetensors: its contents differ from the manifest's SHA-256"): NextItemRecommender.load(path)
    path = rec.save(tmp_path/'m2')
    with pytest.raises(ValueError, match='not the manifest of a saved Recommender'): Recommender.load(path)
    (path/'manifest.json').write_text('{"format": "fine_tuning_flm.NextItemRecommender", "version": 9}')
    with pytest.raises(ValueError, match='format version 9'): NextItemRecommender.load(path)

def test_a_fine_tuned_language_model_is_saved_with_it(shop, tmp_path):
    "LoRA through the next-item loss: the adapters travel in encoder.safetensors, and a new item is read by the fine-tuned encoder."
    r = served(shop, text='lora', joint_epochs=1, joint_bs=64)
    assert r.trained_encoder is not None
    path = r.save(tmp_path/'m')
    assert 'encoder.safetensors' in {p.name for p in path.iterdir()}
    back = NextItemRecommender.load(path)
    torch.testing.assert_close(back.scores(HIST), r.scores(HIST))
    new = pd.DataFrame({'id': ['twin'], 'text': [r.items.text[7]]})
    torch.testing.assert_close(back.add_items(new).scores(HIST)[-1], r.add_items(new).scores(HIST)[-1], atol=1e-4, rtol=0)

def test_explain_by_leave_one_out(rec):
    ex = rec.explain(HIST, 'i13', k=2)
    assert ex.part.tolist() == ['history (leave-one-out)'] * 2 + ['text field'] * 3
    assert ex.attrs['method'] == 'leave-one-out' and len(ex.attrs['below']) == 10
    j = HIST.index(ex.id.iloc[0])
    s, s2 = rec.scores(HIST), rec.scores(HIST[:j] + HIST[j + 1:])
    np.testing.assert_allclose(ex.effect.iloc[0], float(s[13] - s2[13]), atol=1e-3)
    below = rec.codes(ex.attrs['below'])
    np.testing.assert_allclose(ex.lead.iloc[0], float((s[13] - s[below].mean()) - (s2[13] - s2[below].mean())), atol=1e-3)
    new = rec.explain(HIST, {'text': 'A Lab glassware gadget. Industrial & Scientific Lab glassware. Acme.'}, k=1)
    assert new[new.side == 'item'].id.tolist() == ['sentence 1', 'sentence 2', 'sentence 3']
    assert 'because' in rec.recommend(HIST, k=3, explain=True).columns

# --- the command line ------------------------------------------------------------------------------------------------

def flm(capsys, *args):
    try: main([str(a) for a in args]); code = 0
    except SystemExit as e: code = e.code
    c = capsys.readouterr()
    return code, c.out, c.err

def test_flm_trains_saves_and_serves_a_next_item_model(capsys, shop, tmp_path):
    code, out, err = flm(capsys, 'train', '--recbole', shop, '--out', tmp_path/'m', '--epochs', 1, '--quiet')
    assert code == 0, err
    for line in ('saved    ', 'valid    R@10 ', 'test     R@10 '): assert line in out, out
    assert re.search(r'test     R@10 \d\.\d{4}  N@10 \d\.\d{4}  \(80 users; nothing masked', out)
    code, out, err = flm(capsys, 'recommend', tmp_path/'m', '--history', 'i01, i05', '-k', 3, '--explain')
    assert code == 0 and out.splitlines()[0].split()[:2] == ['id', 'text'] and 'because' in out.splitlines()[0] and len(out.splitlines()) == 4, err
    code, out, err = flm(capsys, 'explain', tmp_path/'m', '--history', 'i01,i05', '--item', 'i09', '-k', 1)
    assert code == 0 and out.startswith('item i09 scores') and 'leave-one-out' in out, err

@pytest.mark.parametrize('args, match', [
    (('recommend', '{m}', '--history', 'i01,B00NOPE'), r"history: item 'B00NOPE' is not in this model's catalogue of 24 items"),
    (('recommend', '{m}', '--user', 'u1'), r'is a next-item model \(flm train --recbole\): it serves a history'),
    (('predict', '{m}', '--user', 'u1', '--item', 'i01'), r'flm predict serves an FLM'),
    (('explain', '{m}', '--history', 'i01', '--item', 'nope'), r"explain: item 'nope' is not in this model's catalogue"),
    (('recommend', '{m}', '--history', 'i01,,i02'), r'expected item ids separated by commas'),
    (('train', '--recbole', '{shop}', '--out', '{tmp}/x', '--split', 'random'), r'--split does not apply to --recbole'),
    (('train', '--recbole', '{shop}', '--out', '{tmp}/x', '--items', 'words'), r"--items says what an item is: one of id, text, text\+id, got 'words'"),
    (('train', '--recbole', '{tmp}/nowhere', '--out', '{tmp}/x'), r'nowhere: expected one \*\.train\.inter file')])
def test_flm_refuses_on_one_line(capsys, shop, rec, tmp_path, args, match):
    m = rec.save(tmp_path/'m')
    code, out, err = flm(capsys, *(a.format(m=m, shop=shop, tmp=tmp_path) for a in args))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith('flm: error: ') and re.search(match, lines[0]), err
