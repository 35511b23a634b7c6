"""Every number in the README's results and scaling tables is the one `benchmarks.ranking` or `benchmarks.scale` wrote to
`benchmarks/results/`. A system trained with several seeds shows `mean ± std` (its `metrics` and `metrics_std`); the headline
FLM recipe is the one `ranking.json` chose on validation (`headline`), and the spread over split seeds (`split_spread`) is quoted."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _tables():
    text = (ROOT/'README.md').read_text(encoding='utf-8').split('## Results', 1)[1].split('\n## ', 1)[0]
    tables, cur = [], None
    for line in text.splitlines():
        if line.startswith('|'):
            cells = [c.strip() for c in line.strip('|').split('|')]
            if cur is None: cur = dict(header=cells, rows=[])
            elif not set(''.join(cells)) <= set('-'): cur['rows'].append(cells)
        elif cur is not None: tables.append(cur); cur = None
    if cur is not None: tables.append(cur)
    return tables, text

def _cell(row, metric) -> str:
    "A metric as the README shows it: 4 decimals, and `± std` when the system ran with several seeds."
    v = f"{row['metrics'][metric]:.4f}"
    return v + (f" ± {row['metrics_std'][metric]:.4f}" if metric in row.get('metrics_std', {}) else '')

def _name(cell:str) -> str:
    "A system's name in a README row, without a ' (headline)' mark."
    return cell.removesuffix(' (headline)').strip('*` ')

def test_readme_results_match_the_benchmark_file():
    r = json.loads((ROOT/'benchmarks'/'results'/'ranking.json').read_text())
    (warm, cold), text = _tables()
    assert f"`{r['provenance']['command']}`" in text, r['provenance']['command']     # the command that wrote the file
    sys_ = {s['system']: s for s in r['ranking']['ml-100k']['systems'] if 'metrics' in s}
    assert [_name(row[0]) for row in warm['rows']] == sorted(sys_, key=lambda k: -sys_[k]['metrics']['NDCG@10'])
    for row in warm['rows']:
        s = sys_[_name(row[0])]
        for col, v in zip(warm['header'][1:5], row[1:5]): assert v == _cell(s, col), (row[0], col, v, _cell(s, col))
        assert float(row[5]) == round(s['fit_seconds'], 1)
    head = r.get('headline', {}).get('ml-100k')
    if head:                                                   # one FLM recipe, chosen on validation, marked and named
        marked = [_name(row[0]) for row in warm['rows'] if row[0].endswith('(headline)')]
        assert marked == [head['chosen']], (marked, head['chosen'])
        assert f"`{head['chosen']}`" in text and 'validation' in text
        for name, v in r['ranking']['ml-100k'].get('split_spread', {}).items():
            assert f"{v['mean']['NDCG@10']:.4f} ± {v['std']['NDCG@10']:.4f}" in text, (name, 'spread over split seeds')
    flm = head['chosen'] if head else 'FLM-rank'
    assert f"takes about {sys_[flm]['fit_vs_cornac_bpr']:.0f} times cornac BPR" in text
    cs = {d: {s['system']: s for s in r['cold_items'][d]['systems'] if 'metrics' in s} for d in r['cold_items']}
    for row in cold['rows']:
        want = [_cell(cs[d][_name(row[0])], k) for d in ('ml-100k', 'ml-latest-small') for k in ('AUC', 'NDCG@10')]
        assert row[1:] == want, (row[0], row[1:], want)
    u1 = r['u1']['rows']
    assert f"RMSE is {u1[1]['rmse']:.4f} against {u1[0]['rmse']:.4f}" in text
    assert f"NDCG@10 is {u1[1]['ndcg10']:.4f} against {u1[0]['ndcg10']:.4f}" in text

SCALE_ROWS = {'loading (`load_movielens`)': 'load', 'one epoch, rating objective': 'rate', 'one epoch, ranking objective (sampled negatives)': 'rank',
              'top-10 for every user (`recommend_batch`)': 'serve', 'implicit ALS, one iteration': 'als', 'cornac BPR, one epoch': 'bpr'}

def test_readme_scaling_matches_the_benchmark_file():
    "The README's scaling table and its targets are those `benchmarks/scale.py` wrote to `benchmarks/results/scale.json`."
    sc = json.loads((ROOT/'benchmarks'/'results'/'scale.json').read_text())
    text = (ROOT/'README.md').read_text(encoding='utf-8').split('## Scaling', 1)[1].split('\n## ', 1)[0]
    assert f"`{sc['run']['command'].strip()}`" in text
    rows = [[c.strip() for c in l.strip('|').split('|')] for l in text.splitlines() if l.startswith('|')]
    sizes = sorted(int(n) for n in sc['sizes'])
    assert rows[0][1:-1] == [f'{n/1e6:g} M ratings' for n in sizes]
    body = rows[2:]
    assert [r[0] for r in body] == list(SCALE_ROWS)
    for r in body:
        st = SCALE_ROWS[r[0]]
        for n, cell in zip(sizes, r[1:-1]):
            s = sc['sizes'][str(n)]['stages'].get(st, {})
            want = f"{s['seconds']:.1f} s ({s['peak_rss_gb']:.1f} GB)" if 'seconds' in s else 'not run'
            assert cell == want, (r[0], n, cell, want)
        g = sc['growth_exponent'].get(st)
        assert r[-1] == (f'{g:.2f}' if g is not None else ''), (r[0], r[-1], g)
    for name, t in sc['targets'].items():
        if t['value'] is not None: assert f"{name}: {t['value']:.2f} ({'met' if t['met'] else 'missed'})" in text, name
