"""Issue #25, never lose an update: ids that survive a save, and a save that reads back what it wrote before it replaces
the old model; `update`/`add-items` that hold the lock from before they read the model to after they save it (a second
writer waits, or fails at once with --no-wait); error messages that quote at most ~80 characters of a bad value, and a
CSV reader that stops at an absurd field; symlinked model paths; ids of the wrong type; duplicate rows in an update; the
small ones (a decoding error names its file, control characters are not printed raw, --time-col, --seed, the --scale
hint, --rated with spaces, empty item texts, no lock file left behind); and a model whose save was killed between its
two renames is found and restored. No training: the small hand-made model of test_save."""
import os, shutil, subprocess, sys, time
from pathlib import Path

import numpy as np, pandas as pd, pytest

import fine_tuning_flm.recommend as R
from fine_tuning_flm.cli import parser
from fine_tuning_flm.data import show_value
from fine_tuning_flm.recommend import Recommender
from test_save import StubEncoder, same, tiny as small
from test_cli import flm, refused                                  # `flm ...` as the shell runs it, and its one-line refusals

flock_only = pytest.mark.skipif(os.name == 'nt', reason='flock')

@pytest.fixture
def no_training(monkeypatch):
    "Fail the test if anything is trained: a refusal must come first."
    import fine_tuning_flm.learner as L
    def refuse(*a, **k): raise AssertionError('train_flm was called')
    monkeypatch.setattr(L, 'train_flm', refuse)

def leftovers(d:Path) -> list: return sorted(p.name for p in d.iterdir() if p.name.startswith('.'))

def ratings_csv(fn:Path, users, items=(1, 2, 3), stars=4) -> Path:
    pd.DataFrame([(u, i, stars) for u in users for i in items], columns=['user_id', 'item_id', 'rating']).to_csv(fn, index=False)
    return fn

# --- 1. a save reads back what it wrote; ids that a plain CSV would change are stored as JSON ----------------------------

WHITESPACE = [' ', '\t', '\r', '  ', '\x0b', '\x0c', ' \t ', '\r\n', '\n']

@pytest.mark.parametrize('uid', WHITESPACE, ids=[repr(v) for v in WHITESPACE])
def test_whitespace_ids_survive_a_save(tmp_path, uid):
    "A string-id model with no user table: a user ' ' used to vanish from users.csv, and the model no longer loaded."
    rec = small(user_ids=(uid, 'b', 'c', 'd', 'e')); rec.users = rec.users[['id']]
    back = Recommender.load(rec.save(tmp_path/'m'))
    assert back.users.id.tolist() == [uid, 'b', 'c', 'd', 'e']
    same(rec, back)

@pytest.mark.parametrize('iid', WHITESPACE, ids=[repr(v) for v in WHITESPACE])
def test_whitespace_item_ids_survive_a_save(tmp_path, iid):
    rec = small(item_ids=(iid, 'b', 'c', 'd', 'e', 'f'))
    assert Recommender.load(rec.save(tmp_path/'m')).items.id.tolist() == [iid, 'b', 'c', 'd', 'e', 'f']

def test_a_new_whitespace_user_from_update_survives_save_and_load(tmp_path):
    rec = small(); rec.users = rec.users[['id']]
    rec.update(pd.DataFrame({'user': [' ', '\t'], 'item': [1, 2], 'rating': [4.0, 5.0]}))
    back = Recommender.load(rec.save(tmp_path/'m'))
    assert back.users.id.tolist()[-2:] == [' ', '\t'] and back.model.n_users == 7

def test_a_save_that_does_not_read_back_keeps_the_old_model(tmp_path, monkeypatch):
    "The save re-reads its tables and manifest from the temporary folder: a table that lost a row is caught before the rename."
    old = small(seed=0); old.save(tmp_path/'m')
    before = {p.name: p.read_bytes() for p in (tmp_path/'m').iterdir()}
    real = R.table_bytes
    def lossy(df):
        raw, kinds = real(df)
        return raw[:raw.rstrip(b'\n').rfind(b'\n') + 1], kinds                       # the last row is lost on the way
    monkeypatch.setattr(R, 'table_bytes', lossy)
    with pytest.raises(ValueError, match=r'items\.csv: 5 rows for 6 items.*the old model is kept|did not read back'): small(seed=1).save(tmp_path/'m')
    assert {p.name: p.read_bytes() for p in (tmp_path/'m').iterdir()} == before
    assert leftovers(tmp_path) == []

# --- 2. update and add-items hold the lock from the read to the write ----------------------------------------------------

_GATED = ("import sys\nimport fine_tuning_flm.cli as c, fine_tuning_flm.recommend\nprint('ready', flush=True)\n"
          "sys.stdin.readline()\nc.main(sys.argv[1:])\n")

def _together(*argvs, env=None) -> list:
    "Start one `flm` per argv, release them at the same moment (after their imports), and return [(status, stderr)]."
    ps = [subprocess.Popen([sys.executable, '-c', _GATED, *map(str, a)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env) for a in argvs]
    for p in ps: assert p.stdout.readline().strip() == 'ready', p.stderr.read()
    for p in ps: p.stdin.write('go\n'); p.stdin.flush()
    out = [p.communicate(timeout=300) for p in ps]
    return [(p.returncode, e) for p, (_, e) in zip(ps, out)]

def concurrent_updates(folder:Path, tries:int) -> list:
    "`tries` times: a fresh model, two `flm update`s of 50 new users each started together; the number of users each time."
    a, b = ratings_csv(folder/'a.csv', [f'a{i}' for i in range(50)]), ratings_csv(folder/'b.csv', [f'b{i}' for i in range(50)])
    n = []
    for _ in range(tries):
        m = small().save(folder/'m')
        res = _together(['update', m, '--ratings', a], ['update', m, '--ratings', b])
        assert all(code == 0 for code, _ in res), res
        n.append(Recommender.load(m).model.n_users)
        shutil.rmtree(m)
    return n

@flock_only
def test_two_concurrent_updates_keep_both(tmp_path):
    "Both used to exit 0 with 'saved', and the first one's 50 new users were gone. FLM_UPDATE_TRIES=20 for the issue's target."
    tries = int(os.environ.get('FLM_UPDATE_TRIES', 3))
    assert concurrent_updates(tmp_path, tries) == [5 + 100] * tries

@flock_only
def test_an_update_and_add_items_at_once_keep_both(tmp_path):
    m = small(text_dim=384).save(tmp_path/'m')                                                 # the bundled MiniLM's vectors
    pd.DataFrame({'item_id': [7, 8], 'title': ['Film 7 (1997)', 'Film 8 (1998)'], 'genres': ['Drama', 'Horror']}).to_csv(tmp_path/'new.csv', index=False)
    res = _together(['update', m, '--ratings', ratings_csv(tmp_path/'a.csv', [f'a{i}' for i in range(50)])], ['add-items', m, '--items', tmp_path/'new.csv'])
    assert all(code == 0 for code, _ in res), res
    back = Recommender.load(m)
    assert (back.model.n_users, back.model.n_items) == (55, 8)

def _holder(lock:Path) -> subprocess.Popen:
    "Another process that holds the lock file `lock` until its stdin closes."
    h = subprocess.Popen([sys.executable, '-c', "import fcntl, os, sys\nf = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                          "f.truncate(0); f.write(str(os.getpid())); f.flush(); print('held', flush=True); sys.stdin.read()", str(lock)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert h.stdout.readline().strip() == 'held'
    return h

@flock_only
def test_a_second_writer_waits_with_a_message_or_fails_with_no_wait(tmp_path, capsys):
    m = small().save(tmp_path/'m')
    a = ratings_csv(tmp_path/'a.csv', ['zed'])
    h = _holder(tmp_path/'.m.lock')
    try:
        refused(capsys, 'update', m, '--ratings', a, '--no-wait', match=rf'm: another process \(pid {h.pid}\) is writing this model')
        p = subprocess.Popen([sys.executable, '-m', 'fine_tuning_flm.cli', 'update', str(m), '--ratings', str(a)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = p.stderr.readline()
        assert line.startswith('flm: waiting for ') and f'pid {h.pid}' in line, line
        assert p.poll() is None                                                        # still waiting
    finally: h.communicate('')
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and 'saved' in out, err
    assert Recommender.load(m).users.id.iloc[-1] == 'zed'
    assert leftovers(tmp_path) == []

@flock_only
def test_the_lock_file_is_removed_and_still_excludes(tmp_path):
    "Four processes add 1 to a counter ten times each under `folder_lock`: removing the lock file when done must not let two in at once."
    script = ("import sys, time\nfrom pathlib import Path\nfrom fine_tuning_flm.store import folder_lock\nd = Path(sys.argv[1])\n"
              "for _ in range(10):\n    with folder_lock(d/'m', wait=True):\n        n = int((d/'n').read_text()); time.sleep(0.005); (d/'n').write_text(str(n + 1))\n")
    (tmp_path/'n').write_text('0')
    ps = [subprocess.Popen([sys.executable, '-c', script, str(tmp_path)]) for _ in range(4)]
    assert [p.wait(timeout=300) for p in ps] == [0] * 4
    assert (tmp_path/'n').read_text() == '40'
    assert leftovers(tmp_path) == []

# --- 3. bounded messages; a CSV reader that stops at an absurd field ----------------------------------------------------

def test_show_value_quotes_at_most_80_characters_and_says_how_long():
    s = show_value('x' * 10_000)
    assert len(s) < 120 and '10,000 characters' in s and s.startswith("'xxx")
    assert show_value('short') == "'short'" and show_value(np.int64(7)) == '7'
    assert '58,890 characters' in show_value(list(range(10_000))) and len(show_value(list(range(10_000)))) < 120

@pytest.mark.parametrize('column', ['rating', 'user_id'])
def test_a_huge_field_fails_fast_small_and_on_one_line(tmp_path, column):
    "A 64 MB field (the issue's was 1 GB: 14 GB of memory, a 2.1 GB line): the reader stops at once, in little memory, and `flm` says so on one short line."
    import tracemalloc
    from fine_tuning_flm.data import MAX_FIELD, read_table
    fn = tmp_path/'big.csv'
    with open(fn, 'w') as f:
        f.write('user_id,item_id,rating\n1,1,5\n')
        f.write('1,2,' if column == 'rating' else ''); f.write('9' * (64 << 20)); f.write(',2,5\n' if column == 'user_id' else '\n')
    tracemalloc.start(); t = time.perf_counter()
    with pytest.raises(ValueError, match=rf'big\.csv: a field of more than {MAX_FIELD:,} bytes at line 3'): read_table(fn, 'ratings', ('user_id', 'item_id'))
    took, peak = time.perf_counter() - t, tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
    assert took < 2 and peak < 64 << 20, (took, peak)                                              # it stopped early: a few blocks read
    code = ("import resource, subprocess, sys\n"
            "r = subprocess.run([sys.executable, '-m', 'fine_tuning_flm.cli', 'train', '--ratings', sys.argv[1], '--out', sys.argv[2]], capture_output=True, text=True)\n"
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.stdout.write(r.stderr)")
    r = subprocess.run([sys.executable, '-c', code, str(fn), str(tmp_path/'m')], capture_output=True, text=True, timeout=600)
    head, err = r.stdout.split('\n', 1)
    status, peak_kb = head.split()
    assert int(status) == 2 and len(err.strip().splitlines()) == 1 and len(err) < 400, err[:1000]
    assert 'big.csv: a field of more than' in err and int(peak_kb) < 1 << 20, (err, peak_kb)          # under 1 GB, importing torch included

def test_a_decoding_error_names_the_file(tmp_path, capsys, no_training):
    (tmp_path/'latin.csv').write_bytes('user_id,item_id,rating\nJosé,1,5\n'.encode('latin-1'))
    refused(capsys, 'train', '--ratings', tmp_path/'latin.csv', '--out', tmp_path/'m', match=r'latin\.csv: not UTF-8 text')
    m = small().save(tmp_path/'m')
    refused(capsys, 'update', m, '--ratings', tmp_path/'latin.csv', match=r'latin\.csv: not UTF-8 text')

# --- 4. symlinked model paths ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(os.name == 'nt', reason='symlinks')
def test_a_linked_model_path_updates_the_target(tmp_path, capsys):
    base = small().save(tmp_path/'base'); (tmp_path/'link').symlink_to('base')
    code, out, err = flm(capsys, 'update', tmp_path/'link', '--ratings', ratings_csv(tmp_path/'a.csv', ['zed']))
    assert code == 0, err
    assert (tmp_path/'link').is_symlink() and Recommender.load(base).users.id.iloc[-1] == 'zed'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.csv', 'base', 'link']               # no .link.old-PID, no lock file
    rec = Recommender.load(tmp_path/'link'); rec.update(pd.DataFrame({'user': ['amy'], 'item': [1], 'rating': [3.0]}))
    rec.save(tmp_path/'link')                                                                     # the Python API too
    assert (tmp_path/'link').is_symlink() and Recommender.load(base).users.id.iloc[-1] == 'amy'

# --- 5. ids of the wrong type ----------------------------------------------------------------------------------------------

def test_update_refuses_ids_of_another_type():
    rec = small(user_ids=(1, 2, 3, 4, 5))
    for uid, kind in (('1', 'text'), ('u1', 'text'), (1.0, 'float')):
        with pytest.raises(ValueError, match=rf"user id {show_value(uid)!s} is (a )?{kind}.*this model's user ids are whole numbers"):
            rec.update(pd.DataFrame({'user': [uid], 'item': [1], 'rating': [4.0]}))
    assert rec.model.n_users == 5
    rec.update(pd.DataFrame({'user': ['u1'], 'item': [1], 'rating': [4.0]}), mixed_ids=True)       # asked for
    assert rec.users.id.tolist() == [1, 2, 3, 4, 5, 'u1']
    rec.update(pd.DataFrame({'user': [np.int64(9)], 'item': [np.int64(2)], 'rating': [4.0]}))    # numpy ints are whole numbers
    with pytest.raises(ValueError, match=r"item id '2' is text.*this model's item ids are whole numbers"):
        rec.update(pd.DataFrame({'user': [1], 'item': ['2'], 'rating': [4.0]}))

def test_flm_update_refuses_ids_that_are_not_the_models_numbers(tmp_path, capsys):
    m = small(user_ids=(1, 2, 3, 4, 5)).save(tmp_path/'m')
    before = {p.name: p.read_bytes() for p in m.iterdir()}
    for uid in ('0001', '1.0', 'u1'):
        refused(capsys, 'update', m, '--ratings', ratings_csv(tmp_path/'r.csv', [uid]), match=rf"user id '{__import__('re').escape(uid)}' is text.*whole numbers.*--mixed-ids")
    assert {p.name: p.read_bytes() for p in m.iterdir()} == before
    code, out, err = flm(capsys, 'update', m, '--ratings', ratings_csv(tmp_path/'r.csv', ['u1', '7']), '--mixed-ids')
    assert code == 0, err
    assert Recommender.load(m).users.id.tolist() == [1, 2, 3, 4, 5, 'u1', 7]

# --- 6. duplicate rows in an update ------------------------------------------------------------------------------------------

def test_duplicates_in_an_update_keep_the_latest_by_time_and_warn():
    rec = small()
    with pytest.warns(UserWarning, match=r"dropped 1 duplicate \(user, item\) pairs, kept the latest by 'timestamp'"):
        rec.update(pd.DataFrame({'user': ['ann', 'ann', 'bob'], 'item': [2, 2, 3], 'rating': [5.0, 1.0, 3.0], 'timestamp': [20, 10, 15]}))
    nr = rec.new_ratings
    assert len(nr) == 2 and nr[nr.user == 0].rating.tolist() == [5.0] and nr[nr.user == 0].timestamp.tolist() == [20]

# --- 7. the small ones -----------------------------------------------------------------------------------------------------

def test_control_characters_are_not_printed_raw(tmp_path, capsys):
    rec = small(item_ids=(1, 2, 3, 4, 5, '\x1b[2J\x1b[31mevil'))
    rec.items.loc[0, 'title'] = 'Film \x1b]0;pwned\x07 (1990)'
    m = rec.save(tmp_path/'m')
    for args in (('recommend', m, '--user', 'ann', '-k', 6), ('similar', m, '--item', 2, '-k', 5), ('predict', m, '--user', 'ann', '--item', 1)):
        code, out, err = flm(capsys, *args)
        assert code == 0, err
        assert not any(ord(c) < 32 and c not in '\n' for c in out), repr(out)
    code, out, err = flm(capsys, 'similar', m, '--item', '\x1b[0mnope')
    assert code == 2 and '\x1b' not in err

def test_time_col_must_name_a_column(tmp_path, capsys):
    m = small().save(tmp_path/'m')
    refused(capsys, 'update', m, '--ratings', ratings_csv(tmp_path/'a.csv', ['zed']), '--time-col', 'when', match=r"a\.csv: no column 'when'")
    code, _, err = flm(capsys, 'update', m, '--ratings', tmp_path/'a.csv')                      # the default: 'timestamp' if there is one
    assert code == 0, err

@pytest.mark.parametrize('seed', ['99999999999999999999', '-1', '4294967296'])
def test_seed_is_checked_when_the_line_is_parsed(capsys, tmp_path, no_training, seed):
    refused(capsys, 'train', '--out', tmp_path/'m', '--seed', seed, match=r'argument --seed: .*0 to 4,294,967,295')

def test_the_constant_rating_hint_names_the_option(tmp_path, capsys, no_training):
    ratings_csv(tmp_path/'c.csv', ['a', 'b'], stars=4)
    refused(capsys, 'train', '--ratings', tmp_path/'c.csv', '--out', tmp_path/'m', match=r'every value in column .rating. is 4.*--scale LO HI')

def test_rated_is_trimmed():
    a = parser().parse_args(['recommend', 'm', '--rated', ' 1 : 5 , 2:4'])
    assert a.rated == [('1', 5.0), ('2', 4.0)]

def test_add_items_warns_about_empty_texts():
    rec = small(); rec._encoder = StubEncoder()
    with pytest.warns(UserWarning, match=r"add_items: 1 new item\(s\) have an empty text, e\.g\. 8"):
        rec.add_items(pd.DataFrame({'id': [7, 8], 'text': ['A film.', '  ']}))

def test_no_lock_file_is_left_beside_a_model(tmp_path, capsys):
    small().save(tmp_path/'m')
    assert leftovers(tmp_path) == []
    assert flm(capsys, 'update', tmp_path/'m', '--ratings', ratings_csv(tmp_path/'a.csv', ['zed']))[0] == 0
    assert leftovers(tmp_path) == []

# --- recovery of a save killed between its two renames ---------------------------------------------------------------------

_KILLED = ("import os, sys\nimport fine_tuning_flm.core\nsys.path.insert(0, sys.argv[2])\nfrom test_save import tiny\n"
           "real, n = os.replace, []\ndef replace(a, b):\n    real(a, b); n.append(b)\n    if len(n) == 1: os._exit(9)      # killed after moving the old model away\n"
           "os.replace = replace\ntiny(seed=1).save(sys.argv[1])\n")

def test_a_save_killed_between_its_renames_is_restored(tmp_path, capsys):
    small(seed=0).save(tmp_path/'m')
    r = subprocess.run([sys.executable, '-c', _KILLED, str(tmp_path/'m'), str(Path(__file__).parent)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 9, r.stderr
    left = leftovers(tmp_path)                                                                    # the old copy and the new one beside it (and the lock file)
    assert not (tmp_path/'m').exists() and sum(n.endswith('.tmp') for n in left) == sum('.old-' in n for n in left) == 1, left
    with pytest.warns(UserWarning, match=r'm: restored the model from an interrupted save'):
        back = Recommender.load(tmp_path/'m')
    same(small(seed=1), back)                                                                     # the newest complete copy
    assert leftovers(tmp_path) == []
    r = subprocess.run([sys.executable, '-c', _KILLED, str(tmp_path/'m'), str(Path(__file__).parent)], capture_output=True, text=True, timeout=300)
    code, out, err = flm(capsys, 'recommend', tmp_path/'m', '--user', 'ann', '-k', 2)
    assert code == 0 and 'flm: warning: ' in err and 'restored' in err, err

@flock_only
def test_a_reader_waits_for_a_writer_caught_between_its_renames(tmp_path):
    "No folder at the path, a copy beside it, and a writer holding the lock: `flm recommend` says it waits, then goes on."
    small().save(tmp_path/'m'); (tmp_path/'m').rename(tmp_path/'.m.old-99')
    h = _holder(tmp_path/'.m.lock')
    p = subprocess.Popen([sys.executable, '-m', 'fine_tuning_flm.cli', 'recommend', str(tmp_path/'m'), '--user', 'ann', '-k', '2'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stderr.readline()
        assert line.startswith(f'flm: warning: waiting for pid {h.pid}, which is writing '), line
    finally: h.communicate('')
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and 'restored the model from an interrupted save' in err, err
    assert leftovers(tmp_path) == []

def test_an_unrestorable_interrupted_save_says_what_to_do(tmp_path):
    "Only an incomplete copy beside a missing model: the message names it and says what to do."
    small().save(tmp_path/'x'); (tmp_path/'x'/'manifest.json').unlink(); (tmp_path/'x').rename(tmp_path/'.m.old-123')
    with pytest.raises(FileNotFoundError, match=r"m: no such folder; an interrupted save left \.m\.old-123 beside it, not a complete model"):
        Recommender.load(tmp_path/'m')
