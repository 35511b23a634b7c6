"Joint training (`flm_learner(text=...)`): each mode changes exactly the weights it should; a LoRA-tuned FLM saves and loads to identical scores."
import pandas as pd, pytest, torch

from fine_tuning_flm.core import set_seed
from fine_tuning_flm.learner import flm_learner, LM_LR
from fine_tuning_flm.recommend import Recommender

pytestmark = pytest.mark.needs_data('ml-100k')          # fails without FLM_DATA (see conftest.py)

# `tiny` (about 1,000 ratings of 10 users) comes from conftest.py

def _one_joint_step(trn, tst, mode):
    set_seed(0)
    learn = flm_learner(trn, tst, text=mode, bs=8192, id_dropout=0.1)
    start = {k: v.detach().clone() for k, v in learn.model.state_dict().items()}
    learn.freeze()        # as `train_flm` does: the projections of the text start at zero, so the LM gets no gradient before they train
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
    before = {k: v.detach().clone() for k, v in learn.model.state_dict().items()}
    frozen_stage = {k for k, v in before.items() if not torch.equal(v, start[k])}
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, [LM_LR[mode] * 10, 1e-2])
    after = learn.model.state_dict()
    return learn, {k for k, v in after.items() if not torch.equal(v, before[k])}, frozen_stage

def _lm(keys): return {k for k in keys if k.startswith('i_text.')}

@pytest.mark.parametrize('mode', ['top_k', 'lora', 'full'])
def test_each_mode_changes_exactly_its_weights(tiny, mode):
    trn, tst = tiny
    _, changed, frozen_stage = _one_joint_step(trn, tst, mode)
    assert not _lm(frozen_stage), f'{mode}: freeze() left LM weights training, e.g. {sorted(_lm(frozen_stage))[:3]}'   # fastai's train_bn trap
    lm_changed = _lm(changed)
    assert {'u_weight.weight', 'i_weight.weight', 'i_proj.weight', 'u_proj.weight'} <= changed, sorted(changed - lm_changed)
    assert lm_changed, f'{mode}: the language model did not change'
    if mode == 'top_k':      # k=2 of 6 layers: only layers 4 and 5
        assert {k.split('.layer.')[1].split('.')[0] for k in lm_changed} == {'4', '5'}, sorted(lm_changed)[:5]
    elif mode == 'lora':     # only the adapters
        assert all('lora_' in k for k in lm_changed), sorted(k for k in lm_changed if 'lora_' not in k)[:5]
    else:                    # everything that takes part in the forward pass; the word embeddings only for rows in the batch
        assert any('.layer.0.' in k for k in lm_changed) and any('.layer.5.' in k for k in lm_changed)
    assert not any(k.startswith('u_text.') for k in changed)    # the user tower holds frozen demographic vectors here

def test_lora_flm_save_load_identical_scores(tiny, tmp_path):
    trn, tst = tiny
    learn, _, _ = _one_joint_step(trn, tst, 'lora')
    rec = Recommender.from_learner(learn, trn)
    assert rec.trained_encoder is not None and rec.trained_encoder.mode == 'lora'
    rec.save(tmp_path/'rec')
    assert (tmp_path/'rec'/'encoder.safetensors').exists()
    back = Recommender.load(tmp_path/'rec')
    u = int(trn.users.id[int(trn.ratings.user.iloc[0])])
    pd.testing.assert_frame_equal(rec.recommend(u, k=20), back.recommend(u, k=20))
    s1, s2 = rec.model.score_items([0, 1, 2], cold=True), back.model.score_items([0, 1, 2], cold=True)
    assert torch.equal(s1, s2)
    # a new item is read by the *fine-tuned* encoder in both
    new = pd.DataFrame({'id': [99999], 'title': ['Space Robots Return (2001)'], 'text': ['Space Robots Return (2001). Genres: Sci-Fi, Action.']})
    v1, v2 = rec.encoder.encode(new.text.tolist()), back.encoder.encode(new.text.tolist())
    torch.testing.assert_close(v1, v2, rtol=0, atol=1e-6)
