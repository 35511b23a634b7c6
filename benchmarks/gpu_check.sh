#!/usr/bin/env bash
# GPU check for issue #15 (scale), ready for a task that is lent a GPU. NOT RUN YET: no GPU was lent to the task that
# wrote it (December 2026), so every line below the preparation is untested on CUDA; the CPU parts ran here.
#
# What it runs, in <= 5 minutes, writing $OUT/gpu_check.json (and printing each number):
#   0. (#24) the ranking recipe's fit on ml-100k (Recommenders' split), bf16 autocast: fit seconds and NDCG@10.
#   1. the code of the notebooks' `#| gpu` cells (grep -l '#| gpu' nbs/*.ipynb): 04_embeddings' encoding throughput in
#      fp32/fp16/bf16 against CPU fp32 vectors (min cosine), and 08_learner's `flm_learner(..., device='cuda')`, which must
#      turn on mixed precision, timed over 5 epochs. They run on ml-latest-small / ml-100k where $FLM_DATA has them, else
#      on synthetic stand-ins of the same size (`synthetic_ratings`): MovieLens may not be copied onto the device.
#   2. encoding throughput at scale: the 62,423 texts of the synthetic ml-25m catalogue, fp32 vs fp16 vs bf16.
#   3. one AMP (bf16 autocast) epoch of the rating objective at 25 M synthetic ratings, and one of the ranking
#      objective with benchmarks.scale_stage's RANK_SETTINGS (sampled negatives), ratings/s.
#   4. `recommend_batch` for all 162,541 users on CUDA (the model moved with `rec.model.cuda()`), fp32 and the
#      default bf16 pass, and the agreement of their lists.
#
# What to carry (64 MiB in all; the device has torch, transformers and peft, but no fastai, nbdev or MiniLM weights):
#   .whl/    wheels, pure Python: fastai 2.8.7, fastcore, fastprogress, fasttransform, fastdownload, plum-dispatch, beartype,
#            and safetensors, accelerate in case they are absent                                  (~3 MB)
#   .carry/minilm-fp16/   the bundled all-MiniLM-L6-v2 with fp16 weights (the package's fp32 copy is 91 MB)  (~45 MB)
# Both are git-ignored (.gitignore). Prepare them here, on the CPU machine, once:
#     bash benchmarks/gpu_check.sh --prepare
# then, through the device tool (the package itself travels with the working tree):
#     run(command="GIT_COMMIT=<the commit> bash benchmarks/gpu_check.sh", carry=[".whl", ".carry"], timeout_s=420)
# fastai also imports matplotlib, pandas, scipy, scikit-learn, pillow, requests and pyyaml: the script lists the ones
# the device lacks and stops (they are too large to carry together; carry the missing ones' wheels in .whl/ instead).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    rm -rf .whl && mkdir -p .whl .carry
    # the versions of this machine's environment; plum-dispatch and safetensors are binary wheels: for a device whose Python
    # differs from this one's (3.11), add --python-version X.Y --only-binary=:all: to this command
    pip download -q --no-deps -d .whl $(python -c "import importlib.metadata as m; print(' '.join(f'{p}=={m.version(p)}' for p in
        ('fastai', 'fastcore', 'fastprogress', 'fasttransform', 'fastdownload', 'plum-dispatch', 'beartype', 'safetensors', 'accelerate')))")
    python - <<'EOF'
import shutil, torch
from pathlib import Path
from transformers import AutoModel, AutoTokenizer
from fine_tuning_flm.embeddings import bundled_model_path
src, dst = bundled_model_path(), Path('.carry/minilm-fp16')
shutil.rmtree(dst, ignore_errors=True)
AutoModel.from_pretrained(src).half().save_pretrained(dst)
AutoTokenizer.from_pretrained(src).save_pretrained(dst)
print(f"{dst}: {sum(f.stat().st_size for f in dst.rglob('*') if f.is_file()) / 2**20:.1f} MiB")
EOF
    du -sh .whl .carry
    exit 0
fi

OUT="${OUT:-/tmp/gpu_check}"; mkdir -p "$OUT"
export PIP_DISABLE_PIP_VERSION_CHECK=1 OMP_WAIT_POLICY=PASSIVE FLM_CACHE="${FLM_CACHE:-/tmp/flm_gpu_cache}"
python - <<'EOF'
import importlib.util, sys
need = ['torch', 'transformers', 'numpy', 'pandas', 'scipy', 'sklearn', 'matplotlib', 'PIL', 'requests', 'yaml']
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing: sys.exit(f"gpu_check: the device lacks {missing}: carry their wheels in .whl/ (pip download --no-deps) and run again")
EOF
pip install -q --no-index --no-deps --find-links .whl fastai fastcore fastprogress fasttransform fastdownload plum-dispatch beartype
python -c "import safetensors" 2>/dev/null || pip install -q --no-index --no-deps --find-links .whl safetensors
python -c "import accelerate" 2>/dev/null || pip install -q --no-index --no-deps --find-links .whl accelerate
pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

timeout 300 python - <<'EOF'
import json, os, time, numpy as np, torch
from pathlib import Path
from fine_tuning_flm.core import atomic_write, set_seed
from fine_tuning_flm.data import Interactions, load_movielens
from fine_tuning_flm.datasets import synthetic_ratings
from fine_tuning_flm.embeddings import TextEncoder
from fine_tuning_flm.learner import FLMMixedPrecision, flm_learner, ranking_metric, recipe_for, train_flm
from fine_tuning_flm.recommend import Recommender
from benchmarks.provenance import host, versions        # the run's versions and host; the device copy has no git history
from benchmarks.scale_stage import RANK_SETTINGS        # the ranking epoch of python -m benchmarks.scale
SMOKE = bool(os.environ.get('GPU_CHECK_SMOKE'))          # GPU_CHECK_SMOKE=1: the same steps on the CPU at toy sizes (how this script was tested)
DEV, N, N_ITEMS = ('cpu', 200_000, 3_000) if SMOKE else ('cuda', 25_000_095, 62_423)
assert SMOKE or torch.cuda.is_available(), 'no CUDA device'
sync = torch.cuda.synchronize if DEV == 'cuda' else (lambda: None)
OUT, MODEL, t0 = Path(os.environ['OUT']), '.carry/minilm-fp16', time.perf_counter()
res = dict(device=torch.cuda.get_device_name() if DEV == 'cuda' else 'cpu (smoke test)', torch=torch.__version__,
           bf16=DEV == 'cuda' and torch.cuda.is_bf16_supported(), steps={},
           provenance=dict(command='bash benchmarks/gpu_check.sh', versions=versions(), host=host(), load_average_start=list(os.getloadavg()),
                           git_commit=os.environ.get('GIT_COMMIT'), note='written to $OUT, not benchmarks/results: the device has no git checkout; '
                           'pass GIT_COMMIT=$(git rev-parse HEAD) in the run command to record the commit'))
def save():
    res['wall_seconds'] = time.perf_counter() - t0
    with atomic_write(OUT/'gpu_check.json', 'w') as f: json.dump(res, f, indent=1)
def step(name, fn):
    t = time.perf_counter()
    try: res['steps'][name] = {**fn(), 'seconds': time.perf_counter() - t}
    except Exception as e: res['steps'][name] = dict(error=f'{type(e).__name__}: {e}')   # noqa: BLE001 -- report and go on
    print(name, json.dumps(res['steps'][name]), flush=True); save()
def syn(n, n_items=62_423):
    r, m = synthetic_ratings(n, n_items=n_items, seed=0)
    return Interactions.from_df(r.rename(columns={'userId': 'user_id', 'movieId': 'item_id'}), m.rename(columns={'movieId': 'item_id'}), scale=(0.5, 5), name=f'synthetic {n:,}')
data = Path(os.environ.get('FLM_DATA', '/nonexistent'))

def encode_precisions(texts, ref_n=1000):
    "04_embeddings' `#| gpu` cell: texts/s per precision, min cosine to CPU fp32 vectors."
    ref = TextEncoder(MODEL, device='cpu').encode(texts[:ref_n])
    out = {}
    for prec in ('fp32', 'fp16', 'bf16') if DEV == 'cuda' else ('fp32', 'bf16'):
        enc = TextEncoder(MODEL, device=DEV, batch_size=256, precision=prec)
        enc.encode(texts[:512]); sync()           # warm-up (CUDA kernels, allocator)
        t = time.perf_counter(); v = enc.encode(texts); sync(); dt = time.perf_counter() - t
        out[prec] = dict(texts_per_s=len(texts) / dt, min_cos=float((v[:ref_n].cpu() * ref).sum(1).min()))
    return out

mls = (data/'ml-latest-small').exists()
step('gpu cell of 04_embeddings: encode (ml-latest-small)' if mls else 'gpu cell of 04_embeddings: encode (9,742 synthetic texts)',
     lambda: encode_precisions(load_movielens('ml-latest-small').items.text.tolist() if mls else syn(200_000, 9_742).items.text.tolist()))

def cell05():
    "08_learner's `#| gpu` cell: flm_learner on CUDA turns on mixed precision; 5 epochs."
    d = load_movielens('ml-100k') if (data/'ml-100k').exists() else syn(100_000, 1_682)
    trn, tst = d.split('official', fold='u1') if d.name == 'ml-100k' else d.split('random', valid_pct=0.2, seed=0)
    iv = TextEncoder(MODEL, device=DEV, precision='bf16').encode(trn.items.text.tolist())
    gl = flm_learner(trn, tst, device=DEV, item_vectors=iv.float().cpu(), user_vectors=None)
    amp = any(isinstance(cb, FLMMixedPrecision) for cb in gl.cbs)
    t = time.perf_counter()
    with gl.no_bar(): gl.fit_one_cycle(5, 1e-2)
    return dict(data=d.name, mixed_precision=amp, five_epochs_seconds=time.perf_counter() - t, valid=[float(x) for x in gl.recorder.values[-1]])
step('gpu cell of 08_learner: flm_learner on CUDA', cell05)

def rank100k():
    "The ranking recipe (full-catalogue softmax, pooled history, bf16 autocast) on Recommenders' split of ml-100k, as benchmarks.ranking fits it."
    d = load_movielens('ml-100k') if (data/'ml-100k').exists() else syn(100_000, 1_682)
    trn, tst = d.split('recommenders', ratio=0.75, by='item', seed=42)
    iv = TextEncoder(MODEL, device=DEV, precision='bf16').encode(trn.items.text.tolist()).float().cpu()
    set_seed(42); sync(); t = time.perf_counter()
    learn = train_flm(trn, None, objective='rank', device=DEV, item_vectors=iv, user_vectors=None, progress=False, seed=42)
    sync(); s = time.perf_counter() - t
    users = np.unique(tst.ratings.user.to_numpy())
    return dict(data=d.name, fit_seconds=s, amp=any(isinstance(cb, FLMMixedPrecision) for cb in learn.cbs),
                ndcg10=ranking_metric(learn.model, users, trn.user_items(), tst.user_items()))
step('ranking recipe on CUDA: ml-100k, Recommenders split', rank100k)

t = time.perf_counter(); big = syn(N, N_ITEMS); gen = time.perf_counter() - t
print(f'{big} generated in {gen:.0f}s', flush=True)
texts = big.items.text.tolist()
step(f'encode {len(texts):,} texts', lambda: encode_precisions(texts))
iv = TextEncoder(MODEL, device=DEV, batch_size=256, precision='bf16').encode(texts).float().cpu()

def epoch(objective, **kw):
    "One epoch as benchmarks.scale_stage.fit_one_epoch runs it (the objective's recipe, `kw` changed), on DEV."
    r = recipe_for(objective).replace(**kw)
    set_seed(42)
    learn = flm_learner(big, None, r, device=DEV, item_vectors=iv, user_vectors=None, seed=42)
    sync(); t = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, r['lr'])
    sync(); s = time.perf_counter() - t
    return learn, dict(epoch_seconds=s, ratings_per_s=len(big) / s, amp=any(isinstance(cb, FLMMixedPrecision) for cb in learn.cbs),
                       peak_gpu_gb=torch.cuda.max_memory_allocated() / 2**30 if DEV == 'cuda' else None)
keep = {}
def rate():
    keep['learn'], out = epoch('rate'); return out
step(f'AMP epoch, rate, {len(big):,} ratings', rate)
step(f'AMP epoch, rank (sampled), {len(big):,} ratings', lambda: epoch(**RANK_SETTINGS)[1])

def serve():
    rec = Recommender.from_learner(keep['learn'], big); rec.model.to(DEV)
    out, lists = {}, {}
    for approx in (False, True):
        sync(); t = time.perf_counter()
        lists[approx] = np.concatenate([c for _, c, _ in rec.top_codes(np.arange(big.n_users), 10, batch_size=8192, approx=approx)])
        sync(); out['bf16 pass' if approx else 'fp32'] = time.perf_counter() - t
    out['identical lists'] = float((lists[True] == lists[False]).all(1).mean())
    out['user_item_scores_per_ms'] = big.n_users * big.n_items / min(out['fp32'], out['bf16 pass']) / 1e3
    return out
step('recommend_batch on CUDA, all users', serve)
save(); print(f"wrote {OUT/'gpu_check.json'} in {time.perf_counter() - t0:.0f}s")
EOF
