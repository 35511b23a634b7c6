"Fine-tuning through the ranking loss: `train_flm(text=mode, objective='rank')`'s joint stage (in-batch softmax, logQ), `CapItems`, chunked LM runs, hard negatives."
import numpy as np, pandas as pd, pytest, torch
from fastai.callback.core import Callback

from fine_tuning_flm.embeddings import TextEncoder
from fine_tuning_flm.towers import trainable, TrainableText
from fine_tuning_flm.experimental import prompt_pairs
from fine_tuning_flm.learner import train_flm, CapItems
from fine_tuning_flm.recommend import Recommender

pytestmark = pytest.mark.needs_data('ml-100k')          # fails without FLM_DATA (see conftest.py)

# `tiny` (about 1,000 ratings of 10 users) comes from conftest.py

class Snap(Callback):
    "At the start and end of every fit: the model's weights, its negatives, the loss's logQ and the callbacks in use."
    order = 95
    def __init__(self): self.fits = []
    def before_fit(self):
        m = self.learn.model
        self.fits.append(dict(start={k: v.detach().clone() for k, v in m.state_dict().items()}, negatives=m.negatives,
                              log_q=self.learn.loss_func.log_q, cbs=[type(c).__name__ for c in self.learn.cbs], rows=self.dls.train.n, bs=self.dls.train.bs))
    def after_fit(self): self.fits[-1]['end'] = {k: v.detach().clone() for k, v in self.learn.model.state_dict().items()}

def _rank_run(trn, mode, **kw):
    snap = Snap()
    learn = train_flm(trn, None, objective='rank', text=mode, epochs=2, joint_epochs=1, joint_bs=4096, progress=False, seed=0,
                      lm_lr={'top_k': 1e-3, 'lora': 1e-2, 'full': 3e-4}[mode], cbs=[snap], **kw)
    return learn, snap

def _lm(keys): return {k for k in keys if k.startswith('i_text.')}

@pytest.mark.parametrize('mode', ['top_k', 'lora', 'full'])
def test_contrastive_step_changes_exactly_the_lm_weights_of_its_mode(tiny, mode):
    trn, _ = tiny
    learn, snap = _rank_run(trn, mode)
    stage1, stage2 = snap.fits
    assert not _lm(k for k, v in stage1['end'].items() if not torch.equal(v, stage1['start'][k])), f'{mode}: the LM trained in the frozen stage'
    changed = {k for k, v in stage2['end'].items() if not torch.equal(v, stage2['start'][k])}
    lm_changed = _lm(changed)
    assert lm_changed, f'{mode}: the ranking loss did not reach the language model'
    if mode == 'top_k': assert {k.split('.layer.')[1].split('.')[0] for k in lm_changed} == {'4', '5'}, sorted(lm_changed)[:5]
    elif mode == 'lora': assert all('lora_' in k for k in lm_changed), sorted(k for k in lm_changed if 'lora_' not in k)[:5]
    else: assert any('.layer.0.' in k for k in lm_changed) and any('.layer.5.' in k for k in lm_changed)
    # the joint stage compares items within the batch (logQ-corrected), not the whole catalogue; stage 1's settings come back
    assert (stage1['negatives'], stage2['negatives']) == ('full', 'in-batch')
    assert stage1['log_q'] is None and stage2['log_q'] is not None and stage2['bs'] == 4096
    assert learn.model.negatives == 'full' and learn.loss_func.log_q is None

def test_joint_rows_accumulate_and_their_checks(tiny):
    trn, _ = tiny
    learn, snap = _rank_run(trn, 'top_k', joint_rows=300, accumulate=2)
    s1, s2 = snap.fits
    assert (s1['rows'], s2['rows']) == (len(trn), 300)
    assert 'GradientAccumulation' in s2['cbs'] and 'GradientAccumulation' not in s1['cbs']
    assert not any(type(c).__name__ == 'GradientAccumulation' for c in learn.cbs) and learn.dls.train.n == len(trn)
    for bad, msg in (({'accumulate': 0}, 'accumulate'), ({'joint_rows': -5}, 'joint_rows')):
        with pytest.raises(ValueError, match=msg): train_flm(trn, None, objective='rank', text='top_k', epochs=0, progress=False, **bad)

def test_top_k_ranker_round_trips_with_identical_lists(tiny, tmp_path):
    trn, _ = tiny
    learn, _ = _rank_run(trn, 'top_k')
    rec = Recommender.from_learner(learn, trn)
    assert rec.trained_encoder is not None and rec.trained_encoder.mode == 'top_k'
    rec.save(tmp_path/'rec')
    back = Recommender.load(tmp_path/'rec')
    for u in trn.users.id.iloc[:3]: pd.testing.assert_frame_equal(rec.recommend(u, k=20), back.recommend(u, k=20))

def test_cap_items_keeps_whole_rows_of_few_items(tiny):
    trn, _ = tiny
    learn, _ = _rank_run(trn, 'top_k', max_items=5)
    cap = next(c for c in learn.cbs if isinstance(c, CapItems))
    learn.unfreeze(); learn.training = True
    x = torch.tensor([[0, i % 12] for i in range(40)]); y = torch.arange(40.)
    learn.xb, learn.yb = (x,), (y,)
    cap.before_batch()
    kept = learn.xb[0]
    assert len(kept[:, 1].unique()) == 5 and len(kept) == int(np.isin(x[:, 1], kept[:, 1].unique()).sum())
    assert torch.equal(learn.yb[0], y[np.isin(x[:, 1], kept[:, 1].unique())])
    learn.freeze(); learn.xb, learn.yb = (x,), (y,); cap.before_batch()
    assert learn.xb[0] is x                                    # the LM does not train: nothing to cap
    with pytest.raises(ValueError, match='max_items'): CapItems(0)

def test_chunked_lm_memory_follows_chunk_tokens():
    "More chunks, the same vectors: each chunk is one forward pass of at most `chunk_tokens` padded tokens."
    enc = TextEncoder()
    texts = [f"Film number {i}. " + 'word ' * (i % 9) for i in range(30)]
    tower = TrainableText(trainable(enc, 'lora'), texts, chunk_tokens=40)
    chunks = tower._token_chunks(list(range(30)))
    widths = [max(len(tower.tokens[c]) for c in ch) * len(ch) for ch in chunks]
    assert len(chunks) > 1 and max(widths) <= 40 and sorted(j for ch in chunks for j in ch) == list(range(30))
    tower.train(); tower.encoder.eval()
    v = tower(torch.arange(30))
    assert v.requires_grad
    torch.testing.assert_close(v.detach(), enc.encode(texts), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match='chunk_tokens'): TrainableText(tower.encoder, texts, chunk_tokens=0)

def test_prompt_pairs_hard_negatives(tiny):
    trn, _ = tiny
    r = trn.ratings
    rated = set(zip(r.user, r.item))
    u = int(r.user.iloc[0])
    unrated = [i for i in range(trn.n_items) if (u, i) not in rated][:4]
    ut, it, y = prompt_pairs(trn, threshold=0.0, neg_ratio=0.0, hard=(np.full(4, u), np.array(unrated)))
    assert len(y) == len(r) + 4 and y[:len(r)].all() and not y[len(r):].any()
    assert it[-4:] == [trn.items.text.iloc[i] for i in unrated]
    with pytest.raises(ValueError, match='rated in train'): prompt_pairs(trn, hard=(np.array([u]), np.array([int(r.item.iloc[0])])))
