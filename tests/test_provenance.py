"""Every results file under benchmarks/results says where it came from (`benchmarks.provenance`): the full record of the run
that wrote it, or, for a file written before the helper and not regenerated since, exactly the record that says so."""
import datetime, json, re, subprocess
from pathlib import Path

import pytest

import benchmarks.provenance as P

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT/'benchmarks'/'results').glob('*.json'))
HEX = re.compile('[0-9a-f]{40}')

def check_run(p:dict):
    "The record of a run: every field of `FIELDS`, none null, each of the form the helper writes."
    missing = [k for k in P.FIELDS if p.get(k) is None]
    assert not missing, f'provenance lacks {missing}'
    assert p.get('regenerated', True) is True
    assert HEX.fullmatch(p['git_commit']), p['git_commit']
    assert isinstance(p['git_dirty'], bool)
    assert p['command'].startswith('python -m benchmarks.'), p['command']
    datetime.datetime.fromisoformat(p['date'])
    assert {'python', *P.PACKAGES} <= set(p['versions']), sorted(p['versions'])
    assert set(P.HOST) <= set(p['host']) and p['host']['cpus'] >= 1
    for k in ('load_average_start', 'load_average_end'): assert len(p[k]) == 3 and all(x >= 0 for x in p[k]), (k, p[k])
    assert p['wall_seconds'] > 0

def check_not_regenerated(p:dict):
    "The record of a file that predates the helper: regenerated false, the commit that last changed it, and a note naming what is unknown."
    assert p['regenerated'] is False
    assert HEX.fullmatch(p.get('results_commit') or ''), p.get('results_commit')
    assert p.get('git_commit') == p['results_commit'], 'git_commit is the results_commit, never null'
    note = p.get('provenance_note')
    assert isinstance(note, str) and 'predates benchmarks/provenance.py' in note, note
    assert set(p['unknown']) <= set(P.FIELDS) and p['unknown'], p['unknown']
    for k in P.FIELDS:
        if k in p['unknown']: assert k not in p and k in note, k        # unknown: absent, and named in the note
        else: assert p.get(k) is not None, k                            # known: there, and not null

def _commits_that_changed(path) -> list|None:
    "Commits that changed `path` (None when the history cannot tell: not a git checkout, or a shallow clone)."
    try:
        if subprocess.run(['git', 'rev-parse', '--is-shallow-repository'], cwd=ROOT, capture_output=True, text=True).stdout.strip() != 'false': return None
        return subprocess.run(['git', 'log', '--format=%H', '--', str(path)], cwd=ROOT, capture_output=True, text=True).stdout.split()
    except OSError: return None

def test_there_are_results_files():
    assert len(FILES) >= 7, FILES

@pytest.mark.parametrize('path', FILES, ids=[f.name for f in FILES])
def test_results_file_has_provenance(path):
    d = json.loads(path.read_text())
    assert 'provenance' in d, f'{path.name} has no provenance record: write it through benchmarks.provenance'
    p = d['provenance']
    if p.get('regenerated') is False:
        check_not_regenerated(p)
        known = _commits_that_changed(path)
        if known is not None: assert p['results_commit'] in known, f"{path.name}: results_commit {p['results_commit']} never changed it"
    else: check_run(p)

# --- the helper itself ----------------------------------------------------------------------------------------------

@pytest.fixture
def repo(tmp_path, monkeypatch):
    "A git repository of one committed file, which `benchmarks.provenance` takes for the project's."
    root = tmp_path/'repo'; (root/'benchmarks'/'results').mkdir(parents=True)
    git = lambda *a: subprocess.run(['git', '-c', 'user.email=t@example.com', '-c', 'user.name=t', *a], cwd=root, check=True, capture_output=True)
    git('init', '-q'); (root/'benchmarks'/'results'/'old.json').write_text('{"command": "python benchmarks/old.py", "date": "2026-11-01"}')
    git('add', '.'); git('commit', '-q', '-m', 'old results')
    monkeypatch.setattr(P, 'ROOT', root)
    return root

def test_a_run_records_every_field(repo):
    out = repo/'benchmarks'/'results'/'new.json'
    run = P.Run('benchmarks.thing', ['--n', 3, '--name', 'two words', '--out', str(out)], out=out)
    assert run.start['git_dirty'] is False                    # its own output file is not a change
    res = run.write({'n': 3})
    check_run(res['provenance'])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res['provenance']['command'] == f"python -m benchmarks.thing --n 3 --name 'two words' --out {out}"
    assert not list(out.parent.glob('.new.json.*.tmp'))         # written through a temporary file, renamed

def test_dirty_lists_every_change_but_the_output(repo):
    out = repo/'benchmarks'/'results'/'new.json'
    out.write_text('{}'); (out.parent/'.new.json.abc123.tmp').write_text('')
    assert P.dirty_paths([out]) == []
    (repo/'benchmarks'/'results'/'old.json').write_text('{}'); (repo/'other.py').write_text('')
    assert sorted(P.dirty_paths([out])) == ['benchmarks/results/old.json', 'other.py']
    assert P.Run('benchmarks.thing', [], out=out).start['git_dirty'] is True

def test_no_git_no_run(tmp_path, monkeypatch):
    "Outside a git checkout a run stops at once: a results file never records a null commit."
    monkeypatch.setattr(P, 'ROOT', tmp_path)
    with pytest.raises(RuntimeError, match='git'): P.Run('benchmarks.thing', [])

def test_an_old_file_gets_exactly_the_accepted_form(repo):
    path = repo/'benchmarks'/'results'/'old.json'
    p = P.not_regenerated(path, 'Regenerate it.')
    check_not_regenerated(p)
    assert p['command'] == 'python benchmarks/old.py' and p['date'] == '2026-11-01' and 'versions' in p['unknown']
    assert p['results_commit'] == subprocess.run(['git', 'log', '-1', '--format=%H'], cwd=repo, capture_output=True, text=True).stdout.strip()
    for broken in ({**p, 'git_commit': None}, {k: v for k, v in p.items() if k != 'provenance_note'}, {**p, 'versions': None},
                   {**p, 'regenerated': True}):
        with pytest.raises(AssertionError): check_not_regenerated(broken)
    with pytest.raises(AssertionError): check_run(p)           # an old file never passes for a run's record
