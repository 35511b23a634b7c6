"""The short runs of the benchmark scripts whose full results `16_benchmarks` displays: each script still runs end to end as
`python -m benchmarks.<name>`, writes its JSON with the provenance record, and what it measures is sane at this size.
(`benchmarks.encode`'s short run is in test_embeddings.py, `benchmarks.scale`'s in test_scale.py.)"""
import json, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPTS = ('ranking', 'feedback', 'finetune_ablation', 'flm_ml100k', 'tune_rank', 'encode', 'scale', 'scale_stage', 'provenance')

def bench(name, *args, timeout=1800) -> str:
    "Run `python -m benchmarks.<name>` with `args` in a fresh process, from the repository root; its printed report."
    r = subprocess.run([sys.executable, '-m', f'benchmarks.{name}', *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, f"benchmarks.{name} failed:\n{r.stderr[-3000:]}"
    return r.stdout

def provenance(res, name, *args):
    "The record `benchmarks.provenance` wrote: every field, and the command line as it was run."
    p = res['provenance']
    assert p['command'] == ' '.join(['python', '-m', f'benchmarks.{name}', *map(str, args)]), p['command']
    assert len(p['git_commit']) == 40 and isinstance(p['git_dirty'], bool) and p['wall_seconds'] > 0
    assert {'torch', 'fastai', 'transformers', 'numpy', 'pandas', 'fine_tuning_flm'} <= set(p['versions']) and p['host']['cpus'] >= 1
    return p

@pytest.mark.parametrize('name', SCRIPTS)
def test_every_script_runs_as_a_module(name):
    "Each script is a module of the `benchmarks` package: `--help` imports it and all it imports, with no sys.path edit."
    assert 'usage:' in bench(name, '--help', timeout=300)

@pytest.mark.needs_data('ml-100k')
def test_flm_ml100k_short_run(tmp_path):
    "One fold, three epochs, no fastai, no cold items: the FLM and SVD both land where a rating model of ml-100k lands."
    args = ('--folds', 'u1', '--epochs', '3', '--no-fastai', '--no-cold', '--out', tmp_path/'r.json')
    out = bench('flm_ml100k', *args)
    r = json.loads((tmp_path/'r.json').read_text())
    provenance(r, 'flm_ml100k', *args)
    u1 = r['folds']['u1']
    assert 0.88 < u1['svd_rmse'] < 0.98 and 0.88 < u1['flm_rmse'] < 1.0, u1       # the full run's are 0.95 and 0.91
    assert len(u1['curve']) == 3 and 'u1: FLM' in out

@pytest.mark.needs_data('ml-100k')
def test_ranking_short_run(tmp_path):
    """Two FLM recipes, EASE and popularity, 2 epochs: the headline recipe is chosen on validation, FLM-rank and EASE give a mean,
    a std and each seed, the split seeds their spread."""
    args = ('--quick', '--systems', 'most-popular', 'EASE', 'FLM-rank', 'FLM-rank-notext', '--no-cold', '--no-rmse', '--out', tmp_path/'r.json')
    bench('ranking', *args)
    r = json.loads((tmp_path/'r.json').read_text())
    provenance(r, 'ranking', *args)
    h = r['headline']['ml-100k']
    assert h['chosen'] in ('FLM-rank', 'FLM-rank-notext') and set(h['validation']) == {'FLM-rank', 'FLM-rank-notext'} and 'validation' in h['reason']
    rows = {s['system']: s for s in r['ranking']['ml-100k']['systems']}
    assert [s for s, row in rows.items() if row.get('headline')] == [h['chosen']]
    for s in {'FLM-rank', 'EASE', h['chosen']}:
        assert rows[s]['seeds'] == [42, 1] and len(rows[s]['per_seed']) == 2 and rows[s]['metrics_std']['NDCG@10'] >= 0, s
        assert abs(rows[s]['metrics']['NDCG@10'] - sum(p['metrics']['NDCG@10'] for p in rows[s]['per_seed']) / 2) < 1e-9
    assert rows['FLM-rank']['metrics']['NDCG@10'] > rows['most-popular']['metrics']['NDCG@10'] + 0.05
    spread = r['ranking']['ml-100k']['split_spread']
    assert {'FLM-rank', 'EASE'} <= set(spread) and all(v['split_seeds'] == [42, 1] for v in spread.values())

@pytest.mark.needs_data('ml-100k')
def test_feedback_short_run(tmp_path):
    """2 seeds, 10 users, 5 rounds: greedy, popularity, Thompson and the MABWiser peer all run; the peer's alpha and l2 come from the
    training side; update and refit are timed for the same 5 ratings, and named for what they time."""
    pytest.importorskip('mabwiser')
    args = ('--quick', '--policies', 'greedy', 'popularity', 'thompson', 'MABWiser-LinUCB', '--out', tmp_path/'q.json')
    bench('feedback', *args)
    fq = json.loads((tmp_path/'q.json').read_text())
    provenance(fq, 'feedback', *args)
    assert set(fq['policies']) == {'greedy', 'popularity', 'thompson', 'MABWiser-LinUCB'}
    assert set(fq['tuning']) == {'thompson', 'MABWiser-LinUCB'}
    peer = fq['peer']['MABWiser-LinUCB']
    assert peer['our_best'] in ('greedy', 'thompson') and abs(peer['diff'] - (peer['our_best_clicks_per_user'] - peer['clicks_per_user'])) < 1e-9
    assert fq['peer']['settings']['MABWiser-LinUCB']['warm_start']['unrated_negatives'] > 0      # its warm start has negatives
    t = fq['timing']
    assert 'ratio' not in t and t['update_one_user_5_ratings_ms'] > 0 and t['refit_all_users_1_epoch_s'] > 0
    assert t['refit_all_users_1_epoch_s'] > t['update_one_user_5_ratings_ms'] / 1000        # a loose bound on a noisy shared machine

@pytest.mark.needs_data('ml-100k', 'ml-latest-small')
def test_finetune_ablation_short_run(tmp_path):
    """Frozen and top-k on a sample, cold items, their validation split and memory: text ranks cold items better than chance, the joint
    run trains only its joint stage, the mode is chosen on the validation split, memory stays bounded."""
    args = ('--quick', '--parts', 'cold', 'cold-valid', 'memory', '--configs', 'frozen', 'top_k', '--out', tmp_path/'ft.json')
    out = bench('finetune_ablation', *args)
    qa = json.loads((tmp_path/'ft.json').read_text())
    provenance(qa, 'finetune_ablation', *args)
    assert [r for r in qa['runs'] if 'failed' in r] == [], out[-2000:]
    cold = {r['config']: r for r in qa['runs'] if r['part'] == 'cold'}
    assert 0 < cold['frozen']['ndcg10'] < 1 and 0.5 < cold['frozen']['auc'] < 1
    assert len(cold['top_k']['fits']) == 1                                           # the joint run only trained its joint stage
    assert cold['top_k']['lm_s_per_epoch'] > 0 and cold['top_k']['lm_params'] > 0
    t = qa['targets']
    assert t['cold']['best'] == 'top_k' and 'training side' in t['cold']['chosen_on'] and set(t['cold']['validation_ndcg10']) == {'top_k'}
    assert "training side's (user, item) pairs only" in qa['item_text_tags']           # no held-out user's tag in an item text
    assert t['memory']['met'], t['memory']                                           # 256-token texts in well under 8 GB
