"The learner beyond the lesson: a real kill and resume, data-parallel training on 2 CPU processes, bad input."
import json, os, signal, socket, subprocess, sys, textwrap
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import torch.multiprocessing as mp
from fine_tuning_flm.data import Interactions
from fine_tuning_flm.learner import *

def toy(seed=0, n_users=120, n_items=80, n=4000):
    "A synthetic ratings table with a low-rank structure, and random 16-d 'text' vectors."
    rng = np.random.default_rng(seed)
    pairs = rng.choice(n_users*n_items, n, replace=False)
    u, i = pairs // n_items, pairs % n_items
    pu, qi = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    r = np.clip(np.round(3 + (pu[u]*qi[i]).sum(1) + rng.normal(0, .5, n)), 1, 5)
    d = Interactions.from_df(pd.DataFrame({'user_id': u, 'item_id': i, 'rating': r, 'timestamp': np.arange(n)}))
    g = torch.Generator().manual_seed(seed)
    return d, torch.randn(d.n_items, 16, generator=g), torch.randn(d.n_users, 16, generator=g)

# --- kill and resume -------------------------------------------------------------------------------
_SCRIPT = textwrap.dedent('''
    import os, signal, sys, torch
    sys.path.insert(0, {here!r})
    from test_learner import toy
    from fastai.callback.core import Callback
    from fine_tuning_flm.learner import *
    mode, out = sys.argv[1], sys.argv[2]
    class KillAfter(Callback):
        order = FLMCheckpoint.order + 1          # runs after the epoch's checkpoint is written
        def after_epoch(self):
            if self.epoch == 1: os.kill(os.getpid(), signal.SIGKILL)
    d, iv, uv = toy()
    trn, tst = d.split('random', valid_pct=0.2, seed=0)
    learn = train_flm(trn, tst, epochs=4, bs=512, item_vectors=iv, user_vectors=uv, checkpoint='run', progress=False,
                      path=out, seed=0, **({{'cbs': [KillAfter()]}} if mode == 'kill' else {{}}))
    torch.save({{k: v for k, v in learn.model.state_dict().items()}}, os.path.join(out, 'final.pt'))
''')

def _run(tmp, mode, out):
    script = tmp/'train.py'; script.write_text(_SCRIPT.format(here=str(Path(__file__).parent)))
    return subprocess.run([sys.executable, str(script), mode, str(out)], capture_output=True, text=True, timeout=300)

def test_killed_run_resumes_exactly(tmp_path):
    straight, crashed = tmp_path/'straight', tmp_path/'crashed'
    r = _run(tmp_path, 'plain', straight); assert r.returncode == 0, r.stderr[-2000:]
    r = _run(tmp_path, 'kill', crashed)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    assert not (crashed/'final.pt').exists()
    assert (crashed/'models'/'run-last.safetensors').exists()
    assert not list((crashed/'models').glob('*.tmp'))            # no half-written checkpoint
    r = _run(tmp_path, 'resume', crashed); assert r.returncode == 0, r.stderr[-2000:]
    a, b = torch.load(straight/'final.pt'), torch.load(crashed/'final.pt')
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)

def test_corrupt_checkpoint_is_refused(tmp_path):
    d, iv, uv = toy()
    trn, tst = d.split('random', valid_pct=0.2, seed=0)
    learn = flm_learner(trn, tst, item_vectors=iv, user_vectors=uv, path=tmp_path)
    (tmp_path/'models').mkdir(); p = tmp_path/'models'/'flm-last.safetensors'
    p.write_bytes(b'\x00' * 50)
    with pytest.raises(ValueError, match='flm-last.safetensors'): resume(learn, 'flm')
    with pytest.raises(FileNotFoundError, match='nope'): load_checkpoint(learn, tmp_path/'nope.safetensors')

# --- data-parallel on 2 CPU processes (gloo) -------------------------------------------------------
def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), FLM_DEVICE='cpu')
    torch.set_num_threads(1)
    from fine_tuning_flm.core import set_seed
    d, iv, uv = toy()
    trn, tst = d.split('random', valid_pct=0.2, seed=0)
    set_seed(0)
    learn = flm_learner(trn, tst, item_vectors=iv, user_vectors=uv, bs=400, seed=0, id_dropout=0.0)   # ID dropout draws differ per process
    with learn.no_bar(), distributed(learn): learn.fit_one_cycle(2, 1e-2)
    torch.save({'state': learn.model.state_dict(), 'rmse': learn.validate()[1]}, os.path.join(out, f'rank{rank}.pt'))

def test_data_parallel_two_cpu_processes(tmp_path):
    "Two gloo processes with half a batch each end where one process with the whole batch ends."
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path/'rank0.pt'), torch.load(tmp_path/'rank1.pt')
    for k in r0['state']: torch.testing.assert_close(r0['state'][k], r1['state'][k], msg=k)   # replicas in sync
    d, iv, uv = toy(); trn, tst = d.split('random', valid_pct=0.2, seed=0)
    from fine_tuning_flm.core import set_seed
    set_seed(0)
    single = flm_learner(trn, tst, item_vectors=iv, user_vectors=uv, bs=400, seed=0, device='cpu', id_dropout=0.0)
    sparse_grads(single.model, False)             # `distributed` trains with dense gradients (every row steps), so the reference does too
    # the same global batches: one process, drop_last as the sharded loader does
    single.dls.train = single.dls.train.new(drop_last=True)
    with single.no_bar(), single.no_logging(): single.fit_one_cycle(2, 1e-2)
    for k, v in single.model.state_dict().items(): torch.testing.assert_close(r0['state'][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert abs(r0['rmse'] - single.validate()[1]) < 1e-4

def test_distributed_needs_a_seed(monkeypatch):
    d, iv, uv = toy(); trn, tst = d.split('random', valid_pct=0.2, seed=0)
    learn = flm_learner(trn, tst, item_vectors=iv, user_vectors=uv)
    monkeypatch.setenv('WORLD_SIZE', '2')
    with pytest.raises(ValueError, match='seed'):
        with distributed(learn): pass

# --- bad input --------------------------------------------------------------------------------------
def test_unknown_codes_at_predict_time():
    d, iv, uv = toy()
    trn, tst = d.split('cold_items', pct=0.2, seed=0)
    learn = flm_learner(trn, tst, item_vectors=iv, user_vectors=uv)
    m = learn.model
    cold = tst.ratings.item.to_numpy()[:3]
    with pytest.raises(ValueError, match='cold=True'): m.predict(tst.ratings.user.to_numpy()[:3], cold)
    assert m.predict(tst.ratings.user.to_numpy()[:3], cold, cold=True).shape == (3,)
    with pytest.raises(IndexError, match=f'item code {d.n_items}'): m.predict([0], [d.n_items])
    with pytest.raises(IndexError, match='user code -1'): m.predict([-1], [0])
    with pytest.raises(ValueError, match='3 users but 2 items'): m.predict([0, 1, 2], [0, 1])

def test_interactions_dl_rejects_mismatch():
    with pytest.raises(ValueError, match='10 code pairs but 9 ratings'): InteractionsDL(torch.zeros(10, 2, dtype=torch.long), torch.zeros(9))
    with pytest.raises(ValueError, match='seed'): InteractionsDL(torch.zeros(10, 2, dtype=torch.long), torch.zeros(10), shard=(0, 2), shuffle=True)

def test_flm_learner_bad_text():
    d, iv, uv = toy(); trn, tst = d.split('random', valid_pct=0.2, seed=0)
    with pytest.raises(ValueError, match="'frozn'"): flm_learner(trn, tst, text='frozn', item_vectors=iv)

# --- memory ------------------------------------------------------------------------------------------
def test_every_learner_trims_freed_memory(monkeypatch):
    "flm_learner adds TrimMemory, which calls malloc_trim every `every` training batches (and never in validation)."
    d, iv, uv = toy()
    trn, tst = d.split('random', valid_pct=0.2, seed=0)
    learn = flm_learner(trn, tst, item_vectors=iv, user_vectors=uv, bs=256)
    tm = [cb for cb in learn.cbs if isinstance(cb, TrimMemory)]
    assert len(tm) == 1
    calls = []
    tm[0]._trim, tm[0].every = (lambda pad: calls.append(pad) or 1), 3
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    n = len(learn.dls.train)
    assert calls == [0] * len(range(0, n, 3)), (len(calls), n)

# --- steps that cost what the batch touches (#24) --------------------------------------------------
def test_a_step_moves_only_the_rows_of_the_batch():
    "flm_learner's ID tables of at least 4 batches' rows give sparse gradients, and lazy_adam moves only the rows a batch touched; smaller tables stay dense."
    d, iv, uv = toy()
    trn, tst = d.split('random', valid_pct=0.2, seed=0)
    small = flm_learner(trn, tst, item_vectors=iv, user_vectors=uv, bs=64).model           # 120 users, 80 items < 4 * 64 rows
    assert not small.u_weight.sparse and not small.i_weight.sparse
    learn = flm_learner(trn, tst, item_vectors=iv, user_vectors=uv, bs=16, id_dropout=0.0)
    assert isinstance(learn.create_opt() or learn.opt, FLMOptimizer) and learn.model.u_weight.sparse
    m = learn.model.train()
    x, y = next(iter(learn.dls.train))
    before = m.u_weight.weight.detach().clone()
    (learn.loss_func(m(x), y) + m.penalty).backward()
    assert m.u_weight.weight.grad.is_sparse
    learn.opt.step(); learn.opt.zero_grad()
    touched = torch.zeros(m.n_users, dtype=torch.bool); touched[x[:, 0]] = True
    assert torch.equal(m.u_weight.weight[~touched], before[~touched]) and (m.u_weight.weight[touched] != before[touched]).all()
    assert m.u_weight.weight.grad is None

def test_lazy_adam_is_fastais_adam_on_dense_gradients():
    from fastai.optimizer import Adam
    g = torch.Generator().manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(7, 4, generator=g)); w2 = torch.nn.Parameter(w1.detach().clone())
    o1, o2 = Adam([w1], lr=0.05, wd=0.01), lazy_adam([w2], lr=0.05, wd=0.01)
    for k in range(8):
        grad = torch.randn(7, 4, generator=g)
        for o in (o1, o2): o.set_hypers(mom=0.85 + 0.01 * k, lr=0.05 * (k + 1) / 8)
        w1.grad, w2.grad = grad.clone(), grad.clone(); o1.step(); o2.step(); o1.zero_grad(); o2.zero_grad()
    torch.testing.assert_close(w1.detach(), w2.detach(), rtol=0, atol=1e-6)

def test_cpu_mixed_precision_trains_a_ranking_model():
    "mixed_precision=True: bf16 autocast on a CPU with bf16 instructions (else fp32); a ranking model's output holds None and still trains."
    from fine_tuning_flm.learner import _cpu_bf16
    d, iv, uv = toy()
    trn, tst = d.split('random', valid_pct=0.2, seed=0)
    learn = flm_learner(trn, tst, recipe_for('rank'), item_vectors=iv, user_vectors=uv, epochs=1, mixed_precision=True, device='cpu')
    assert any(isinstance(cb, FLMMixedPrecision) for cb in learn.cbs) == _cpu_bf16()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-2)
    assert np.isfinite(learn.recorder.values[-1][0])
    assert not any(isinstance(cb, FLMMixedPrecision) for cb in flm_learner(trn, tst, item_vectors=iv, user_vectors=uv, device='cpu').cbs)   # default: CUDA only

@pytest.mark.needs_data('ml-100k')
def test_profile_quick(tmp_path):
    "`python -m benchmarks.profile --quick --measures u1`: every phase measured, the phases add up to the fit, and the provenance record."
    out = tmp_path/'p.json'
    r = subprocess.run([sys.executable, '-m', 'benchmarks.profile', '--quick', '--measures', 'u1', '--out', str(out)], cwd=Path(__file__).parents[1],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got['provenance']['command'] == f'python -m benchmarks.profile --quick --measures u1 --out {out}'
    for name in ('FLM-mse', 'FLM-both'):
        u = got['trees']['after']['u1'][name]
        assert set(u['phases']) == set(got['phases']) and abs(sum(u['phases'].values()) - u['fit_seconds']) < 0.01
        assert u['phases']['backward'] > 0 and u['phases']['optimizer step'] > 0 and u['batches'] > 0 and 0.8 < u['rmse'] < 1.3
