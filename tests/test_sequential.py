"Next-item recommendation (`10_sequential`): RecBole atomic files read or refused with file and line, the joint stage that trains the language model, new items, blends."
import numpy as np, pandas as pd, pytest, torch
from pathlib import Path

from fine_tuning_flm.sequential import *

WORDS = ['multimeter', 'test leads', 'solder', 'flux', 'caliper', 'gloves', 'goggles', 'tape', 'resistor', 'capacitor', 'wire', 'clamp']

def write_folder(d:Path, seqs:list, name='Toy', n_items=None, texts=None, max_len=50, drop=None):
    "RecBole atomic files of these users' whole sequences, cut leave-one-out as UniSRec's preprocessing cuts them."
    n_items = n_items or 1 + max(i for s in seqs for i in s)
    texts = texts or [f"{WORDS[i % len(WORDS)]} {i}. Industrial & Scientific. Brand {i % 3}." for i in range(n_items)]
    (d/f'{name}.item2index').write_text(''.join(f'A{i}\t{i}\n' for i in range(n_items)))
    (d/f'{name}.user2index').write_text(''.join(f'U{u}\t{u}\n' for u in range(len(seqs))))
    (d/f'{name}.text').write_text('item_id:token\ttext:token_seq\n' + ''.join(f'A{i}\t{t}\n' for i, t in enumerate(texts) if i != drop))
    head = 'user_id:token\titem_id_list:token_seq\titem_id:token\n'
    rows = {'train': [], 'valid': [], 'test': []}
    for u, s in enumerate(seqs):
        for k in range(len(s) - 3, 0, -1): rows['train'].append(f"{u}\t{' '.join(map(str, s[:k][-max_len:]))}\t{s[k]}\n")
        rows['valid'].append(f"{u}\t{' '.join(map(str, s[:-2][-max_len:]))}\t{s[-2]}\n")
        rows['test'].append(f"{u}\t{' '.join(map(str, s[:-1][-max_len:]))}\t{s[-1]}\n")
    for k, v in rows.items(): (d/f'{name}.{k}.inter').write_text(head + ''.join(v))
    return d

def toy_seqs(n_users=60, n_items=12, seed=0):
    "Users walk a ring of items: the next item is the one after the last, mostly."
    rng = np.random.default_rng(seed); out = []
    for _ in range(n_users):
        s = [int(rng.integers(n_items))]
        for _ in range(int(rng.integers(4, 9))): s.append(int((s[-1] + 1) % n_items) if rng.random() < 0.8 else int(rng.integers(n_items)))
        out.append(s)
    return out

def test_reads_what_it_wrote(tmp_path):
    seqs = toy_seqs()
    trn, val, tst = load_recbole(write_folder(tmp_path, seqs))
    assert (trn.n_users, trn.n_items) == (60, 12)
    for u, s in enumerate(seqs):
        assert trn.sequences[u].tolist() == s[:-2] and tst.sequences[u].tolist() == s[:-1]
    assert val.ratings.set_index('user').item.to_dict() == {u: s[-2] for u, s in enumerate(seqs)}
    assert trn.items.text[4].startswith('caliper 4.')

@pytest.mark.parametrize('edit,msg', [
    (lambda d: (d/'Toy.text').write_text('item_id:token\ttext:token_seq\nA0\tx\n'), 'have no text, e.g. index 1 (A1)'),
    (lambda d: (d/'Toy.valid.inter').write_text(''), 'Toy.valid.inter: the file is empty'),
    (lambda d: (d/'Toy.test.inter').unlink(), 'Toy.test.inter: no such file'),
    (lambda d: (d/'Toy.train.inter').write_text('user_id:token\titem_id:token\n0\t1\n'), "no column 'item_id_list:token_seq'"),
    (lambda d: (d/'Toy.train.inter').write_text((d/'Toy.train.inter').read_text() + '0\t1 2\t99\n'), 'item index 99 is not in the item index'),
    (lambda d: (d/'Toy.train.inter').write_text((d/'Toy.train.inter').read_text() + '0\t5 5 5\t5\n'), 'does not continue'),
    (lambda d: (d/'Toy.test.inter').write_text((d/'Toy.test.inter').read_text() + '0\t1\t2\n'), 'a second row for user 0'),
    (lambda d: (d/'Toy.train.inter').write_text((d/'Toy.train.inter').read_text() + '0\tx\t1\n'), 'Toy.train.inter:'),
])
def test_bad_files_are_named_with_their_line(tmp_path, edit, msg):
    write_folder(tmp_path, toy_seqs()); edit(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=msg.replace('(', r'\(').replace(')', r'\)')): load_recbole(tmp_path)

def test_a_history_longer_than_max_len(tmp_path):
    write_folder(tmp_path, [list(range(12)) * 2] + toy_seqs(5), n_items=12, max_len=60)
    with pytest.raises(ValueError, match='longer than max_len=10'): load_recbole(tmp_path, max_len=10)

@pytest.fixture(scope='module')
def toy(tmp_path_factory): return load_recbole(write_folder(tmp_path_factory.mktemp('toy'), toy_seqs(80)))

def test_order_learns_the_ring(toy):
    trn, val, tst = toy
    learn = next_item_learner(trn, val, SEQ_RECIPE.replace(items='id', dim=16, epochs=40, early_stop=None, lr=1e-2, bs=32), seed=0)
    fit_next_item(learn, progress=False)
    assert evaluate_next_item(learn.model, tst, ks=(1,))['R@1'] > 0.4                 # chance is 1/12

def test_a_seed_makes_a_run_repeat(toy):
    "`seed` fixes the initial weights, dropout and shuffle: the same seed trains to the same weights, another seed does not start from them."
    trn, val, tst = toy
    r = SEQ_RECIPE.replace(items='id', dim=8, epochs=2, early_stop=None, bs=32)
    def run(seed, before):
        torch.manual_seed(before); np.random.seed(before)       # the generators' state before the call must not matter
        learn = next_item_learner(trn, val, r, seed=seed); init = {k: v.clone() for k, v in learn.model.state_dict().items()}
        fit_next_item(learn, progress=False); return init, learn.model.state_dict()
    (i0, w0), (i0b, w0b), (i1, _) = run(0, 1), run(0, 2), run(1, 1)
    assert all(torch.equal(i0[k], i0b[k]) and torch.equal(w0[k], w0b[k]) for k in w0)
    assert not all(torch.equal(i0[k], i1[k]) for k in i0)

@pytest.mark.parametrize('mode', ['top_k', 'lora'])
def test_the_joint_stage_trains_the_language_model_and_keeps_only_what_pays(toy, mode):
    trn, val, tst = toy
    r = SEQ_RECIPE.replace(items='text', dim=16, epochs=2, early_stop=None, joint_epochs=1, joint_bs=64, max_items=8)
    base = next_item_learner(trn, val, r, seed=0); fit_next_item(base, progress=False)
    learn = warm_start(next_item_learner(trn, val, r, text=mode, seed=0), base)
    before = {k: v.clone() for k, v in learn.model.state_dict().items() if 'items.text' in k}
    best = [c for c in learn.cbs if type(c).__name__ == 'KeepBest'][0]; start = best.best
    learn.cbs.filter(lambda c: type(c).__name__ == 'KeepBest')[0].patience = None
    fit_joint(learn, progress=False)
    changed = [k for k, v in learn.model.state_dict().items() if 'items.text' in k and not torch.equal(v, before[k])]
    if best.best > start: assert changed                                                 # kept a joint epoch: the LM moved
    else: assert not changed                                                             # kept stage 1: the LM is as it was
    assert evaluate_next_item(learn.model, val)['N@10'] == pytest.approx(best.best, abs=1e-6)   # what is kept is what was scored

def test_new_items_and_blend(toy):
    trn, val, tst = toy
    htrn, hval, htst, held = hold_out_items(trn, val, tst, pct=0.25, seed=0)
    assert not np.isin(htrn.sequences.items, held).any() and np.isin(htst.ratings.item, held).all()
    learn = next_item_learner(htrn, hval, SEQ_RECIPE.replace(items='text', dim=16, epochs=2, early_stop=None), seed=0); fit_next_item(learn, progress=False)
    assert not learn.model.items.seen[torch.as_tensor(held)].any()
    assert torch.isinf(learn.model.train()(torch.tensor([[0, 1]]))[0, 0, torch.as_tensor(held)]).all()   # nobody's negative in training
    b = Blend({'text': learn.model.eval(), 'ease': EASENext(10).fit(htrn)}).fit_weights(hval, grid=(0, 1.0))
    assert b.valid_score == pytest.approx(evaluate_next_item(b, hval)['N@10'])
