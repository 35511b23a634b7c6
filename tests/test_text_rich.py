"`python -m benchmarks.text_rich --quick` (#23), the size CI runs: every system on a sample of Amazon Scientific's users, one results file."
import json
import pytest

from benchmarks import text_rich

@pytest.mark.needs_data('amazon-scientific')
def test_quick_run_writes_every_system(tmp_path):
    out = tmp_path/'tr.json'
    res = text_rich.main(['--quick', '--no-recbole', '--threads', '2', '--out', str(out)])
    saved = json.loads(out.read_text())
    assert saved['provenance']['command'].startswith('python -m benchmarks.text_rich --quick')
    sy = saved['systems']
    for k in ('most-popular', 'EASE', 'content-kNN (frozen MiniLM)', 'FLM-seq ID', 'FLM-seq text (inductive)', 'FLM-seq text+ID',
              'FLM-seq text, control (LM frozen, same budget)'):
        assert {'R@10', 'N@10', 'R@50', 'N@50'} <= set(sy[k]['test']), k
        assert 0 <= sy[k]['test']['N@10'] <= sy[k]['test']['R@10'] <= sy[k]['test']['R@50'] <= 1, k
    assert sy['EASE']['chosen_on_valid']['lam'] in text_rich.parse([]).lams         # chosen from the grid, on valid
    # ordered models learn something: above chance (10 / 4,385 items) by a wide margin, even at this size
    assert sy['FLM-seq text+ID']['test']['R@10'] > 5 * 10 / saved['data']['n_items']
    assert all('published' not in k for k in sy) and set(saved['published']) >= {'SASRec (ID)', 'UniSRec, text + ID'}
    assert {'best_flm', 'inductive', 'peak_rss', 'wall'} <= set(saved['targets']) and res['targets'] == saved['targets']
    assert saved['heldout']['test_users'] > 0 and 'content-kNN' in saved['heldout']['systems']
