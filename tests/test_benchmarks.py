"""The short runs of the benchmark scripts that `16_benchmarks` displays the full results of: each script still runs
end to end, writes its JSON with the command line, and what it measures is sane at this size. (`encode.py`'s short run
is in test_embeddings.py, `scale.py`'s in test_scale.py; `16_benchmarks` itself makes the short run of `ranking.py`.)"""
import json, os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DATA = Path(os.environ.get('FLM_DATA', '../shared/data'))
pytestmark = pytest.mark.skipif(not (DATA/'ml-100k').exists(), reason='set FLM_DATA to the folder holding ml-100k')

def bench(script, *args, timeout=1800) -> str:
    "Run `benchmarks/<script>` with `args` in a fresh process, from the repository root; its printed report."
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/script), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, f"{script} failed:\n{r.stderr[-3000:]}"
    return r.stdout

def test_flm_ml100k_short_run(tmp_path):
    "One fold, three epochs, no fastai, no cold items: the FLM and SVD both land where a rating model of ml-100k lands."
    out = bench('flm_ml100k.py', '--folds', 'u1', '--epochs', '3', '--no-fastai', '--no-cold', '--out', tmp_path/'r.json')
    r = json.loads((tmp_path/'r.json').read_text())
    assert r['command'].startswith('python benchmarks/flm_ml100k.py --folds u1 --epochs 3 --no-fastai --no-cold')
    u1 = r['folds']['u1']
    assert 0.88 < u1['svd_rmse'] < 0.98 and 0.88 < u1['flm_rmse'] < 1.0, u1       # the full run's are 0.95 and 0.91
    assert len(u1['curve']) == 3 and 'u1: FLM' in out

def test_feedback_short_run(tmp_path):
    "2 seeds, 10 users, 5 rounds, our policies only: every policy runs, and learning five ratings through `update` beats a warm-started retrain."
    bench('feedback.py', '--quick', '--out', tmp_path/'q.json')
    fq = json.loads((tmp_path/'q.json').read_text())
    assert fq['timing']['ratio'] > 1, fq['timing']        # a loose bound on a noisy shared machine: the full run's ratio is in feedback.json
    assert set(fq['policies']) == {'greedy', 'epsilon', 'popularity', 'linucb', 'thompson'}

def test_finetune_ablation_short_run(tmp_path):
    "Frozen and top-k on a sample, cold items and memory: text ranks cold items better than chance, the joint run trains only its joint stage, memory stays bounded."
    out = bench('finetune_ablation.py', '--quick', '--parts', 'cold', 'memory', '--configs', 'frozen', 'top_k', '--out', tmp_path/'ft.json')
    qa = json.loads((tmp_path/'ft.json').read_text())
    assert [r for r in qa['runs'] if 'failed' in r] == [], out[-2000:]
    cold = {r['config']: r for r in qa['runs'] if r['part'] == 'cold'}
    assert 0 < cold['frozen']['ndcg10'] < 1 and 0.5 < cold['frozen']['auc'] < 1
    assert len(cold['top_k']['fits']) == 1                                           # the joint run only trained its joint stage
    assert cold['top_k']['lm_s_per_epoch'] > 0 and cold['top_k']['lm_params'] > 0
    assert qa['targets']['memory']['met'], qa['targets']['memory']                   # 256-token texts in well under 8 GB
