"The experimental module (`15_experimental`): the two-tower rating head that fine-tunes the encoder before factorization, and the prompt-based cross-encoder. Kept in the library because these tests pin down what they do."
import re
import numpy as np
import pytest
import torch

from fine_tuning_flm.core import set_seed
from fine_tuning_flm.data import user_texts
from fine_tuning_flm.embeddings import TextEncoder
from fine_tuning_flm.towers import FrozenText, TrainableText, trainable, lm_splitter
from fine_tuning_flm.experimental import *

@pytest.fixture(scope='module')
def enc(): return TextEncoder()

def test_prompt_format():
    assert prompt('24-year-old male technician who loved Heat (1995).', 'Toy Story (1995). Genres: Comedy.') == \
        'User: 24-year-old male technician who loved Heat (1995). Candidate: Toy Story (1995). Genres: Comedy. Will they like it?'
    assert prompt('  a viewer  ', ' Fargo (1996). ') == 'User: a viewer. Candidate: Fargo (1996). Will they like it?'

def test_prompt_on_ml100k(tiny):
    trn, _ = tiny
    p = prompt(user_texts(trn)[0], trn.items.text[0])
    assert re.fullmatch(r"User: .+\. Candidate: Toy Story \(1995\)\. Genres: Animation, Children's, Comedy\. Will they like it\?", p), p

def test_two_tower_starts_at_the_mean_inside_y_range(enc):
    tt = TwoTower(FrozenText(torch.randn(4, 384)), TrainableText(trainable(enc, 'lora'), ['Heat (1995).', 'Fargo (1996).', 'Toy Story (1995).']),
                  n_factors=8, y_range=(0.5, 5.5), mean=3.5)
    out = tt.eval()(torch.tensor([[0, 0], [3, 2]]))
    assert out.shape == (2,) and ((out > 0.5) & (out < 5.5)).all()
    lm, head = lm_splitter(tt)
    assert sum(p.numel() for p in lm) == sum(p.numel() for p in tt.item_tower.encoder.parameters() if p.requires_grad) > 0
    assert {id(p) for p in tt.i_proj.parameters()} <= {id(p) for p in head}

def test_finetune_encoder_returns_a_frozen_encoder_that_changed(tiny, enc):
    trn, tst = tiny
    set_seed(0)
    ft = finetune_encoder(trn._like(trn.ratings.head(64)), tst._like(tst.ratings.head(16)), mode='lora', epochs=1, lr=3e-2, lm_lr=3e-2,
                          encoder=enc, bs=32, progress=False)
    assert isinstance(ft, TextEncoder) and not any(p.requires_grad for p in ft.model.parameters())
    texts = trn.items.text.tolist()[:8]
    assert (ft.encode(texts) - enc.encode(texts)).abs().max() > 1e-4            # the adapters moved, and were merged in
    assert ft.finetune_history['mode'] == 'lora' and len(ft.finetune_history['values']) == 1

def test_prompt_ranker_scores_reranks_and_round_trips(tiny, tmp_path):
    trn, tst = tiny
    pr = PromptRanker(max_length=64)
    u0 = user_texts(trn)[0]; cands = np.arange(5); texts = trn.items.text.tolist()
    s = pr.score([u0] * 5, [texts[i] for i in cands])
    assert s.shape == (5,) and np.isfinite(s).all()
    order = pr.rerank(u0, cands, texts)
    assert sorted(order.tolist()) == cands.tolist() and order[0] == int(np.argmax(s))
    pr.save(tmp_path/'r.safetensors')
    back = PromptRanker.load(tmp_path/'r.safetensors')
    np.testing.assert_allclose(back.score([u0] * 5, [texts[i] for i in cands]), s, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='3 user texts but 2 item texts'): pr.score(['a'] * 3, ['b'] * 2)

def test_prompt_ranker_learner_trains_one_batch(tiny):
    trn, tst = tiny
    set_seed(0)
    learn = prompt_ranker_learner(trn, tst, PromptRanker(max_length=64), bs=8, max_pairs=16)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert np.isfinite(learn.recorder.values[-1][0])
