"""The `flm` command: every mistake exits with status 2 and one line naming the value, before anything is trained; a
trained model is saved before it is scored; checkpoints resume only their own run; ids keep their form; every user's
list streams to a file (`recommend --all`); `torchrun -m fine_tuning_flm.cli train --distributed` on 2 CPU processes
ends where one process ends; and the README's main job (`flm demo`) and `flm train` on ml-100k, served by `flm recommend`."""
import json, os, re, shutil, subprocess, sys, time
from pathlib import Path

import numpy as np, pandas as pd, pytest, torch

import fine_tuning_flm.learner as L
import fine_tuning_flm.recommend as R
from fine_tuning_flm.cli import main, run
from fine_tuning_flm.recommend import Recommender

DATA = Path(os.environ.get('FLM_DATA', 'FLM_DATA-is-not-set'))
needs_ml100k = pytest.mark.needs_data('ml-100k')         # fails without FLM_DATA (see conftest.py)
EXE = shutil.which('flm') or str(Path(sys.executable).parent/'flm')
GENRES = ['Comedy', 'Drama', 'Horror', 'Sci-Fi']

def flm(capsys, *args) -> tuple:
    "Run `main` as the shell would: (exit status, stdout, stderr)."
    try: main([str(a) for a in args]); code = 0
    except SystemExit as e: code = e.code
    c = capsys.readouterr()
    return code, c.out, c.err

def refused(capsys, *args, match:str) -> str:
    "`flm args` exits with status 2 and a single line `flm: error: ...` that matches `match`."
    code, out, err = flm(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith('flm: error: '), err
    assert re.search(match, lines[0]), lines[0]
    return lines[0]

@pytest.fixture
def no_training(monkeypatch):
    "Fail the test if anything is trained: every refusal must come before training."
    def refuse(*a, **k): raise AssertionError('train_flm was called')
    monkeypatch.setattr(L, 'train_flm', refuse)

@pytest.fixture(scope='module')
def shop(tmp_path_factory):
    "A small shop of our own: 60 users, 24 items in 4 genres; users like one genre and rate it high."
    d = tmp_path_factory.mktemp('shop')
    rng = np.random.default_rng(0)
    pd.DataFrame({'sku': [f'sku{i:02d}' for i in range(24)], 'title': [f'{GENRES[i % 4]} film number {i}' for i in range(24)],
                  'genre': [GENRES[i % 4] for i in range(24)]}).to_csv(d/'items.csv', index=False)
    rows = [(f'u{u}', f'sku{i:02d}', 5 if i % 4 == u % 4 else int(rng.integers(1, 3))) for u in range(60) for i in rng.choice(24, 12, replace=False)]
    pd.DataFrame(rows, columns=['customer', 'sku', 'stars']).to_csv(d/'ratings.csv', index=False)
    return d

def shop_args(d, ratings='ratings.csv'):
    return ['--ratings', d/ratings, '--items', d/'items.csv', '--user-col', 'customer', '--item-col', 'sku', '--rating-col', 'stars']

@pytest.fixture(scope='module')
def trained(shop, tmp_path_factory):
    out = tmp_path_factory.mktemp('model')/'rec'
    # every user rated 12 random items, so *what* they rated says nothing: the taste is in the stars, which the rating model reads
    rec = run([str(a) for a in ['train', *shop_args(shop), '--objective', 'rate', '--epochs', '20', '--lr', '0.05', '--out', out, '--quiet']])
    return rec, out

# --- a real command: fast, one line per mistake ----------------------------------------------------------------------

def test_entry_point_is_fast_and_imports_nothing_heavy():
    "`pip install -e .` puts `flm` on the path; --help and an argument error answer without importing torch (measured: ~0.1 s)."
    t = time.perf_counter()
    r = subprocess.run([EXE, '--help'], capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - t
    assert r.returncode == 0, r.stderr
    for cmd in ('demo', 'train', 'evaluate', 'predict', 'recommend', 'similar', 'add-items'): assert cmd in r.stdout
    assert took < 3, f'flm --help took {took:.1f}s'                  # < 0.2 s on an idle machine; loose for a busy CI
    r = subprocess.run([EXE, 'train', '--out', 'm', '--epochs', '-1'], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (2, '') and r.stderr == "flm: error: argument --epochs: must be at least 1, got '-1' (see `flm train --help`)\n"
    r = subprocess.run([sys.executable, '-c', "import sys; import fine_tuning_flm.cli as c; c.parser().parse_args(['train', '--out', 'm'])\n"
                        "print([m for m in ('torch', 'fastai', 'pandas', 'numpy', 'sklearn', 'transformers') if m in sys.modules])"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == '[]', r.stdout + r.stderr

BAD_ARGS = {  # name: (argv, what the one line must say)
    'no --out':                 (['train', '--epochs', '2'], r'the following arguments are required: --out'),
    'epochs 0':                 (['train', '--out', 'm', '--epochs', '0'], r"argument --epochs: must be at least 1, got '0'"),
    'epochs -1':                (['train', '--out', 'm', '--epochs', '-1'], r"argument --epochs: must be at least 1, got '-1'"),
    'epochs 2.5':               (['train', '--out', 'm', '--epochs', '2.5'], r"argument --epochs: expected a whole number, got '2.5'"),
    'lr 0':                     (['train', '--out', 'm', '--lr', '0'], r"argument --lr: must be above 0, got '0'"),
    'lr -0.001':                (['train', '--out', 'm', '--lr', '-0.001'], r"argument --lr: must be above 0, got '-0.001'"),
    'lr=-1e-3':                 (['train', '--out', 'm', '--lr=-1e-3'], r"argument --lr: must be above 0, got '-1e-3'"),
    'lr nan':                   (['train', '--out', 'm', '--lr', 'nan'], r"argument --lr: expected a finite number, got 'nan'"),
    'valid-pct 0':              (['train', '--out', 'm', '--split', 'random', '--valid-pct', '0'], r"argument --valid-pct: must lie strictly between 0 and 1, got '0'"),
    'valid-pct -0.1':           (['train', '--out', 'm', '--split', 'random', '--valid-pct', '-0.1'], r"strictly between 0 and 1, got '-0.1'"),
    'valid-pct 1.5':            (['train', '--out', 'm', '--split', 'random', '--valid-pct', '1.5'], r"strictly between 0 and 1, got '1.5'"),
    'valid-pct 1':              (['train', '--out', 'm', '--split', 'random', '--valid-pct', '1'], r"strictly between 0 and 1, got '1'"),
    'valid-pct, official split': (['train', '--out', 'm', '--valid-pct', '0.1'], r'--valid-pct 0.1 does not apply to --split official'),
    'valid-pct, temporal split': (['train', '--out', 'm', '--split', 'temporal', '--valid-pct', '0.1'], r"--valid-pct 0.1 does not apply to --split temporal \(it holds out each user's last rating\)"),
    'fold with ratings':        (['train', '--out', 'm', '--ratings', 'r.csv', '--fold', 'u3'], r"--fold u3 picks one of ml-100k's official folds; it does not apply to --ratings r\.csv"),
    'fold with random split':   (['train', '--out', 'm', '--split', 'random', '--fold', 'u2'], r'--fold u2 .* does not apply to --split random'),
    'official split of a CSV':  (['train', '--out', 'm', '--ratings', 'r.csv', '--split', 'official'], r"--split official uses ml-100k's .* which --ratings r\.csv does not have"),
    'official split, ml-latest': (['train', '--out', 'm', '--data', 'ml-latest-small', '--split', 'official'], r'--split official exists only for --data ml-100k, not ml-latest-small'),
    'unknown fold':             (['train', '--out', 'm', '--fold', 'u9'], r"argument --fold: invalid choice: 'u9'"),
    'scale without ratings':    (['train', '--out', 'm', '--scale', '1', '5'], r'--scale describes a ratings CSV, so it needs --ratings'),
    'items without ratings':    (['train', '--out', 'm', '--items', 'i.csv'], r'--items describes a ratings CSV'),
    'scale upside down':        (['train', '--out', 'm', '--ratings', 'r.csv', '--scale', '5', '1'], r'--scale 5 1: LO must be below HI'),
    'scale not a number':       (['train', '--out', 'm', '--ratings', 'r.csv', '--scale', '1', 'five'], r"argument --scale: expected a number, got 'five'"),
    'two sources':              (['train', '--out', 'm', '--data', 'ml-100k', '--ratings', 'r.csv'], r'--data ml-100k and --ratings r\.csv are two sources'),
    'restart alone':            (['train', '--out', 'm', '--restart'], r'--restart discards a checkpoint, so it needs --checkpoint'),
    'unknown text mode':        (['train', '--out', 'm', '--text', 'big'], r"argument --text: invalid choice: 'big'"),
    'no user or rated':         (['recommend', 'm'], r'one of the arguments --user --rated --history --all is required'),
    'explain with all':         (['recommend', 'm', '--all', '--out', 'r.csv', '--explain'], r"--explain gives the reasons of one list; --all writes every user's list without them"),
    'explain without item':     (['explain', 'm', '--user', '1'], r'the following arguments are required: --item'),
    'explain without user':     (['explain', 'm', '--item', '1'], r'one of the arguments --user --rated --history is required'),
    'history with a gap':       (['recommend', 'm', '--history', 'a,,b'], r"argument --history: expected item ids separated by commas, oldest first"),
    'recbole and ratings':      (['train', '--out', 'm', '--recbole', 'f', '--ratings', 'r.csv'], r'--ratings does not apply to --recbole f: its files hold the split'),
    'recbole and objective':    (['train', '--out', 'm', '--recbole', 'f', '--objective', 'rank'], r'--objective does not apply to --recbole f'),
    'recbole items kind':       (['train', '--out', 'm', '--recbole', 'f', '--items', 'i.csv'], r"with --recbole, --items says what an item is: one of id, text, text\+id, got 'i\.csv'"),
    'recbole text none':        (['train', '--out', 'm', '--recbole', 'f', '--text', 'none'], r'--text none: with --recbole, a model that reads no text is --items id'),
    'recbole id and lora':      (['train', '--out', 'm', '--recbole', 'f', '--items', 'id', '--text', 'lora'], r'--items id reads no text, so --text lora has no language model to train'),
    'all without out':          (['recommend', 'm', '--all'], r"--all writes every user's list to a file: give it with --out CSV"),
    'out without all':          (['recommend', 'm', '--user', '1', '--out', 'r.csv'], r'--out r\.csv is the file of --all; a single list is printed'),
    'all and user':             (['recommend', 'm', '--all', '--user', '1', '--out', 'r.csv'], r'argument --user: not allowed with argument --all'),
    'id-dropout 1':             (['train', '--out', 'm', '--id-dropout', '1'], r'--id-dropout 1: a chance, from 0 up to \(not including\) 1'),
    'bs 0':                     (['train', '--out', 'm', '--bs', '0'], r"argument --bs: must be at least 1, got '0'"),
    'distributed, no launcher': (['train', '--out', 'm', '--distributed'], r'--distributed trains across the processes of a launcher; start it with torchrun'),
    'user and rated':           (['recommend', 'm', '--user', '1', '--rated', '50:5'], r'argument --rated: not allowed with argument --user'),
    'rated without rating':     (['recommend', 'm', '--rated', '50'], r"argument --rated: expected ITEM:RATING pairs separated by commas, e.g. '50:5,172:4', got '50'"),
    'rated not a number':       (['recommend', 'm', '--rated', '50:5,172:x'], r"the rating of item '172' is 'x', not a number"),
    'rated nan':                (['recommend', 'm', '--rated', '50:nan'], r"the rating of item '50' is 'nan', not a number"),
    'rated twice':              (['recommend', 'm', '--rated', '50:5,50:4'], r"item '50' is rated twice"),
    'k 0':                      (['recommend', 'm', '--user', '1', '-k', '0'], r"argument -k: must be at least 1, got '0'"),
    'predict without item':     (['predict', 'm', '--user', '1'], r'the following arguments are required: --item'),
    'unknown command':          (['fly'], r"argument COMMAND: invalid choice: 'fly'"),
    'no command':               ([], r'the following arguments are required: COMMAND'),
}

@pytest.mark.parametrize('case', list(BAD_ARGS))
def test_bad_arguments(capsys, no_training, case):
    argv, match = BAD_ARGS[case]
    refused(capsys, *argv, match=match)

# --- bad data: refused by name, before training ----------------------------------------------------------------------

def test_bad_data_is_refused_before_training(capsys, no_training, shop, tmp_path):
    r = pd.read_csv(shop/'ratings.csv', dtype=str)
    r.loc[7, 'stars'] = '50'; r.to_csv(tmp_path/'typo.csv', index=False)
    refused(capsys, 'train', *shop_args(shop, tmp_path/'typo.csv'), '--scale', 1, 5, '--out', tmp_path/'m',
            match=r"typo\.csv: column 'stars' has 1 value\(s\) outside \[1\.0, 5\.0\], e\.g\. 50(\.0)? at row 7")
    refused(capsys, 'train', *shop_args(shop, tmp_path/'nope.csv'), '--out', tmp_path/'m', match=r"ratings file '.*nope\.csv' does not exist")
    refused(capsys, 'train', *shop_args(shop)[:-1], 'score', '--out', tmp_path/'m', match=r"ratings\.csv: missing column 'score'; the columns are \['customer', 'sku', 'stars'\]")
    r = pd.read_csv(shop/'ratings.csv', dtype=str); r.loc[3, 'customer'] = 'NA'; r.loc[9, 'customer'] = 'null'; r.to_csv(tmp_path/'na.csv', index=False)
    refused(capsys, 'train', *shop_args(shop, tmp_path/'na.csv'), '--na-ids', '--out', tmp_path/'m', match=r"na\.csv: column 'customer' has 2 missing value\(s\), e\.g\. at row 3")
    (tmp_path/'short_items.csv').write_text('sku,title\nsku00,A film\n')
    refused(capsys, 'train', '--ratings', shop/'ratings.csv', '--items', tmp_path/'short_items.csv', '--user-col', 'customer', '--item-col', 'sku',
            '--rating-col', 'stars', '--out', tmp_path/'m', match=r"23 item ids in the ratings are not in the item table, e\.g\. 'sku\d\d'")
    assert not (tmp_path/'m').exists()

def test_out_must_be_a_model_folder(capsys, no_training, shop, tmp_path):
    "A save replaces the whole folder: `--out` may be new, empty or a saved model, never a folder of other files."
    (tmp_path/'mine').mkdir(); (tmp_path/'mine'/'thesis.tex').write_text('years of work')
    refused(capsys, 'train', *shop_args(shop), '--out', tmp_path/'mine', match=r'mine: a folder of 1 other file\(s\), not a saved model; refusing to replace it')
    assert (tmp_path/'mine'/'thesis.tex').read_text() == 'years of work'
    (tmp_path/'file').write_text('x')
    refused(capsys, 'train', *shop_args(shop), '--out', tmp_path/'file', match=r'file: exists and is not a folder')

@pytest.mark.skipif(os.name == 'nt', reason='flock')
def test_two_runs_on_one_out_do_not_interleave(capsys, no_training, shop, tmp_path):
    holder = subprocess.Popen([sys.executable, '-c', "import fcntl, os, sys\nf = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                               "f.truncate(0); f.write(str(os.getpid())); f.flush(); print('held', flush=True); sys.stdin.read()", str(tmp_path/'.m.lock')],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        refused(capsys, 'train', *shop_args(shop), '--out', tmp_path/'m', match=rf'm: another process \(pid {holder.pid}\) is writing this model')
    finally: holder.communicate(''); holder.wait()

# --- train, then save, then score ------------------------------------------------------------------------------------

def test_train_saves_a_loadable_recommender(trained):
    rec, out = trained
    assert sorted(p.name for p in out.iterdir()) == ['history.safetensors', 'items.csv', 'manifest.json', 'model.safetensors', 'new_ratings.safetensors', 'users.csv']
    back = Recommender.load(out)
    pd.testing.assert_frame_equal(rec.recommend('u0', k=5), back.recommend('u0', k=5))

def test_recommend_learns_the_taste(trained, capsys):
    "User u0 likes Comedy (items 0, 4, 8, ...): the unseen items at the top of their list are comedies."
    rec, out = trained
    top = rec.recommend('u0', k=3)
    assert (top.id.str[3:].astype(int) % 4 == 0).all(), top
    code, printed, _ = flm(capsys, 'recommend', out, '--user', 'u0', '-k', 3)
    assert code == 0 and all(sku in printed for sku in top.id)
    code, printed, _ = flm(capsys, 'recommend', out, '--rated', 'sku01:5,sku05:5,sku00:1', '-k', 3)      # a new user who likes dramas
    rows = [l.split()[0] for l in printed.strip().splitlines()[1:]]
    assert code == 0 and len(rows) == 3 and all(int(s[3:]) % 4 == 1 for s in rows), printed

def test_ranking_model_learns_the_taste_from_its_positives(shop, tmp_path, capsys):
    "The default objective ranks by what users chose; told that only 4 stars and up are choices, it finds each user's genre."
    code, _, err = flm(capsys, 'train', *shop_args(shop), '--positive-rating', 4, '--epochs', 40, '--out', tmp_path/'m', '--quiet')
    assert code == 0, err
    rec = Recommender.load(tmp_path/'m')
    assert rec.model.ranks and rec.model.rates and rec.model.positive_rating == 4
    share = np.mean([(rec.recommend(f'u{u}', k=3).id.str[3:].astype(int) % 4 == u % 4).mean() for u in range(60)])
    assert share >= 0.75, share                                   # measured: 0.889 (random lists: 0.25)
    refused(capsys, 'train', *shop_args(shop), '--objective', 'rate', '--positive-rating', 4, '--out', tmp_path/'r', match='positive-rating 4')

def test_similar_and_predict(trained, capsys):
    rec, out = trained
    code, printed, _ = flm(capsys, 'similar', out, '--item', 'sku00', '-k', 3)
    assert code == 0 and 'sku00' not in printed.split('\n', 1)[1] and 'Comedy' in printed
    code, printed, _ = flm(capsys, 'predict', out, '--user', 'u0', '--item', 'sku04')
    assert code == 0 and float(printed.split()[0]) == pytest.approx(rec.predict('u0', 'sku04'), abs=1e-3)

def test_serving_mistakes(trained, capsys, tmp_path):
    _, out = trained
    refused(capsys, 'recommend', out, '--user', 'nobody', match=r"user 'nobody' is not among this model's 60 users")
    refused(capsys, 'similar', out, '--item', 'sku99', match=r"item 'sku99' is not among this model's 24 items")
    refused(capsys, 'predict', out, '--user', 'u0', '--item', 'nope', match=r"item 'nope' is not among")
    refused(capsys, 'recommend', out, '--rated', 'sku01:9', match=r'the rating of item .sku01. is 9\.0; ratings are numbers in \[1, 5\]')
    refused(capsys, 'recommend', tmp_path/'none', '--user', 'u0', match=r'none: no such folder')
    bad = tmp_path/'bad'; shutil.copytree(out, bad)
    lines = (bad/'items.csv').read_text().splitlines(True); (bad/'items.csv').write_text(lines[0] + ''.join(reversed(lines[1:])))
    refused(capsys, 'recommend', bad, '--user', 'u0', match=r"items\.csv: its contents differ from the manifest's SHA-256 \(changed after saving\)")

def test_evaluate_a_saved_model(trained, shop, capsys, tmp_path):
    rec, out = trained
    t = pd.read_csv(shop/'ratings.csv').sample(50, random_state=0)
    t.to_csv(tmp_path/'test.csv', index=False)
    code, printed, err = flm(capsys, 'evaluate', out, '--ratings', tmp_path/'test.csv', '--user-col', 'customer', '--item-col', 'sku', '--rating-col', 'stars')
    assert code == 0, err
    assert 'test.csv: 50 ratings' in printed and re.search(r'^all\s+50\s', printed, re.M) and 'RMSE' in printed and 'NDCG@10' in printed
    t.assign(customer='stranger').to_csv(tmp_path/'other.csv', index=False)
    refused(capsys, 'evaluate', out, '--ratings', tmp_path/'other.csv', '--user-col', 'customer', '--item-col', 'sku', '--rating-col', 'stars',
            match=r"50 user id\(s\) not among this model's 60 users, e.g. 'stranger'")

def test_add_items(trained, capsys, tmp_path):
    _, out = trained
    pd.DataFrame({'sku': ['new-1', 'new-1'], 'title': ['Comedy film number 98', 'x'], 'genre': ['Comedy', 'Drama']}).to_csv(tmp_path/'dup.csv', index=False)
    refused(capsys, 'add-items', out, '--items', tmp_path/'dup.csv', '--item-col', 'sku', '--out', tmp_path/'grown', match=r"1 new id\(s\) repeat, e\.g\. 'new-1'")
    refused(capsys, 'add-items', out, '--items', tmp_path/'dup.csv', '--out', tmp_path/'grown', match=r"dup\.csv: no id column 'item_id'; its columns are \['sku', 'title', 'genre'\]")
    pd.DataFrame({'sku': ['new-1'], 'title': ['Comedy film number 99'], 'genre': ['Comedy']}).to_csv(tmp_path/'new.csv', index=False)
    code, printed, err = flm(capsys, 'add-items', out, '--items', tmp_path/'new.csv', '--item-col', 'sku', '--out', tmp_path/'grown')
    assert code == 0 and 'added 1 item(s): 25 items' in printed, err
    grown = Recommender.load(tmp_path/'grown')
    assert grown.items.text.iloc[-1] == 'Comedy film number 99. Genre: Comedy.'              # the catalogue's own template
    code, printed, _ = flm(capsys, 'similar', tmp_path/'grown', '--item', 'new-1', '-k', 3)
    assert code == 0 and printed.count('Comedy') >= 2
    assert Recommender.load(out).model.n_items == 24                                            # the original is untouched

def test_update_learns_new_ratings_and_a_mistake_changes_nothing(trained, capsys, tmp_path):
    "`flm update`: u0 rates two more comedies (they leave u0's list), a new user arrives who likes dramas; a bad file leaves the model as it was."
    _, out = trained
    m = tmp_path/'m'; shutil.copytree(out, m)
    cols = ['--user-col', 'customer', '--item-col', 'sku', '--rating-col', 'stars']
    pd.DataFrame({'customer': ['u0', 'u0', 'newbie', 'newbie', 'newbie'], 'sku': ['sku04', 'sku08', 'sku01', 'sku05', 'sku00'],
                  'stars': [5, 5, 5, 5, 1]}).to_csv(tmp_path/'new.csv', index=False)
    before = {p.name: p.read_bytes() for p in m.iterdir()}
    pd.DataFrame({'customer': ['u0', 'u0'], 'sku': ['sku01', 'sku99'], 'stars': [5, 5]}).to_csv(tmp_path/'unknown.csv', index=False)
    refused(capsys, 'update', m, '--ratings', tmp_path/'unknown.csv', *cols, match=r"sku99")
    pd.DataFrame({'customer': ['u0'], 'sku': ['sku01'], 'stars': [9]}).to_csv(tmp_path/'off.csv', index=False)
    refused(capsys, 'update', m, '--ratings', tmp_path/'off.csv', *cols, match=r"9")
    refused(capsys, 'update', m, '--ratings', tmp_path/'new.csv', match=r"new\.csv: no column 'user_id'; its columns are \['customer', 'sku', 'stars'\]")
    refused(capsys, 'update', m, '--ratings', tmp_path/'none.csv', *cols, match=r"none\.csv' does not exist")
    assert {p.name: p.read_bytes() for p in m.iterdir()} == before                             # every refusal left the saved model as it was
    code, printed, err = flm(capsys, 'update', m, '--ratings', tmp_path/'new.csv', *cols)     # in place
    assert code == 0 and 'learned  5 rating(s) of 2 user(s), 1 of them new' in printed, err
    up = Recommender.load(m)
    assert len(up.new_ratings) == 5 and up.users.id.iloc[-1] == 'newbie' and up.model.n_users == 61
    assert not {'sku04', 'sku08'} & set(up.recommend('u0', k=5).id)                            # rated since training: never shown again
    top = up.recommend('newbie', k=3)
    assert (top.id.str[3:].astype(int) % 4 == 1).all(), top                                    # dramas, the films not yet rated
    code, printed, _ = flm(capsys, 'recommend', m, '--user', 'newbie', '-k', 3)
    assert code == 0 and all(sku in printed for sku in top.id)
    fresh = Recommender.load(out).recommend_for({'sku01': 5, 'sku05': 5, 'sku00': 1}, k=3)    # a fold-in from the same ratings
    assert top.id.tolist() == fresh.id.tolist()

def _long_tail(d:Path, n_users=40, seed=0) -> Path:
    "A long-tail shop: a few popular items and many rated once, so any split leaves test items without training ratings."
    rng = np.random.default_rng(seed); rows = []
    for u in range(n_users):
        for i in rng.choice(8, 5, replace=False): rows.append((f'c{u}', f'p{i}', int(rng.integers(1, 6)), 100*u + i))
        rows.append((f'c{u}', f'tail{u}', int(rng.integers(1, 6)), 100*u + 99))              # rated once, by one user, last
    pd.DataFrame(rows, columns=['user_id', 'item_id', 'rating', 'timestamp']).to_csv(d/'tail.csv', index=False)
    return d/'tail.csv'

@pytest.mark.parametrize('split', ['random', 'temporal', 'stratified', 'cold_items', 'cold_users'])
def test_cold_test_items_are_scored_after_saving(capsys, tmp_path, split):
    "Issue #14.1: unseen items (or users) on the test side used to fail *after* training, and the model was lost."
    code, printed, err = flm(capsys, 'train', '--ratings', _long_tail(tmp_path), '--split', split, '--epochs', 2, '--quiet', '--out', tmp_path/'m')
    assert code == 0, err
    assert printed.index('saved') < printed.index('test ')                                       # saved before it is scored
    assert re.search(r'^cold (items|users)\s+\d', printed, re.M), printed
    assert Recommender.load(tmp_path/'m').model.n_users == 40

@pytest.mark.parametrize('checkpoint', [False, True])
def test_an_empty_test_side_still_saves(capsys, tmp_path, checkpoint):
    pd.DataFrame({'user_id': range(10), 'item_id': [i % 3 for i in range(10)], 'rating': [1, 5] * 5}).to_csv(tmp_path/'one.csv', index=False)
    code, printed, err = flm(capsys, 'train', '--ratings', tmp_path/'one.csv', '--epochs', 1, '--quiet', '--out', tmp_path/'m', *(['--checkpoint'] if checkpoint else []))
    assert code == 0, err
    assert 'no test ratings' in printed and Recommender.load(tmp_path/'m').model.n_users == 10
    assert not (tmp_path/'m.checkpoint').exists()

def test_ids_keep_their_form(capsys, tmp_path):
    "Issue #14.5: '0001' and '001' are two items, 'NA' is a user; 7 stays an int where every id is a canonical int."
    rng = np.random.default_rng(1)
    users, items = ['NA', 'null', 'None'] + [f'x{u}' for u in range(9)], ['0001', '001', '1', '7'] + [f'p{i}' for i in range(6)]
    rows = [(u, i, int(rng.integers(1, 6))) for u in users for i in rng.choice(items, 6, replace=False)]
    pd.DataFrame(rows, columns=['user_id', 'item_id', 'rating']).to_csv(tmp_path/'ids.csv', index=False)
    code, _, err = flm(capsys, 'train', '--ratings', tmp_path/'ids.csv', '--epochs', 1, '--quiet', '--text', 'none', '--out', tmp_path/'m')
    assert code == 0, err
    rec = Recommender.load(tmp_path/'m')
    assert set(items) <= set(rec.items.id) and all(isinstance(v, str) for v in rec.items.id) and {'NA', 'null', 'None'} <= set(rec.users.id)
    code, printed, err = flm(capsys, 'predict', tmp_path/'m', '--user', 'NA', '--item', '001')
    assert code == 0 and 'user NA for item 001' in printed, err
    refused(capsys, 'train', '--ratings', tmp_path/'ids.csv', '--na-ids', '--epochs', 1, '--out', tmp_path/'m2', match=r"column 'user_id' has \d+ missing value\(s\)")

def test_from_csv_id_rule(tmp_path):
    "The library side of the id rule: `Interactions.from_csv` reads ids as strings unless every id of a kind is a canonical int."
    from fine_tuning_flm.data import Interactions
    (tmp_path/'r.csv').write_text('user_id,item_id,rating\nNA,0001,5\nNA,001,3\nnull,7,4\n')
    d = Interactions.from_csv(tmp_path/'r.csv')
    assert d.items.id.tolist() == ['0001', '001', '7'] and d.users.id.tolist() == ['NA', 'null']
    with pytest.raises(ValueError, match=r"column 'user_id' has 3 missing value\(s\), e\.g\. at row 0"): Interactions.from_csv(tmp_path/'r.csv', na_ids=True)
    (tmp_path/'r.csv').write_text('user_id,item_id,rating\n1,7,5\n2,-3,3\n3,12,4\n')
    (tmp_path/'i.csv').write_text('item_id,title\n7,a\n-3,b\n12,c\n012,d\n')                 # '012' in the item table: the item ids stay strings
    d = Interactions.from_csv(tmp_path/'r.csv', tmp_path/'i.csv')
    assert d.users.id.tolist() == [1, 2, 3] and d.items.id.tolist() == ['-3', '012', '12', '7']
    (tmp_path/'r.csv').write_text('user_id,item_id,rating\n1,,5\n2,3,1\n')                     # an empty id is always missing
    with pytest.raises(ValueError, match=r"column 'item_id' has 1 missing value\(s\), e\.g\. at row 0"): Interactions.from_csv(tmp_path/'r.csv')

def test_seed_reaches_training(tmp_path, monkeypatch):
    "Issue #14.6: --seed, --epochs and --lr reach `train_flm` (the temporal split does not depend on the seed, so only training does)."
    calls, real = [], L.train_flm
    monkeypatch.setattr(L, 'train_flm', lambda *a, **k: calls.append(k) or real(*a, **k))
    tail = _long_tail(tmp_path)
    weights = {}
    for name, seed in (('a', 1), ('b', 1), ('c', 2)):
        rec = run([str(a) for a in ['train', '--ratings', tail, '--split', 'temporal', '--text', 'none', '--epochs', 2, '--lr', 0.02, '--seed', seed, '--quiet', '--out', tmp_path/name]])
        weights[name] = rec.model.u_weight.weight.detach().clone()
    assert [(k['seed'], k['epochs'], k['lr']) for k in calls] == [(1, 2, 0.02), (1, 2, 0.02), (2, 2, 0.02)]
    assert (weights['a'] == weights['b']).all() and not (weights['a'] == weights['c']).all()

def test_unexpected_errors_are_status_1_and_debug_shows_the_traceback(capsys, monkeypatch, tmp_path):
    import fine_tuning_flm.cli as C
    def boom(a): raise RuntimeError('a bug in flm')
    monkeypatch.setitem(C.COMMANDS, 'similar', boom)
    code, _, err = flm(capsys, 'similar', 'm', '--item', '1')
    assert code == 1 and err.strip() == 'flm: error: a bug in flm (RuntimeError: a bug; rerun with --debug for the traceback)'
    code, _, err = flm(capsys, 'similar', 'm', '--item', '1', '--debug')
    assert code == 1 and 'Traceback (most recent call last)' in err and err.strip().endswith('flm: error: a bug in flm (RuntimeError: a bug)')
    code, _, err = flm(capsys, '--debug', 'recommend', tmp_path/'none', '--user', '1')
    assert code == 2 and 'Traceback' in err and 'FileNotFoundError' in err

# --- saving is safe; checkpoints resume only their own run -----------------------------------------------------------

def test_a_failed_save_keeps_the_old_model(capsys, monkeypatch, tmp_path):
    tail = _long_tail(tmp_path)
    args = ['train', '--ratings', tail, '--text', 'none', '--epochs', 1, '--quiet', '--out', tmp_path/'m']
    assert flm(capsys, *args)[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path/'m').iterdir()}
    real, calls = R.put_file, []
    def put(fn, data):
        calls.append(fn.name)
        if len(calls) == 3: raise OSError(28, 'No space left on device')
        return real(fn, data)
    monkeypatch.setattr(R, 'put_file', put)
    refused(capsys, *args[:-2], '--seed', 7, '--out', tmp_path/'m', match=r'No space left on device')
    assert {p.name: p.read_bytes() for p in (tmp_path/'m').iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m', 'tail.csv']

def test_checkpoints_resume_only_their_own_run(capsys, monkeypatch, tmp_path):
    "Issue #14.3: a checkpoint left by an interrupted run resumes that run; another run is refused unless --restart."
    tail = _long_tail(tmp_path)
    args = ['train', '--ratings', tail, '--text', 'none', '--checkpoint', '--quiet', '--out', tmp_path/'m']
    real_save = Recommender.save
    monkeypatch.setattr(Recommender, 'save', lambda self, path: (_ for _ in ()).throw(KeyboardInterrupt()))   # killed before the save
    code, _, err = flm(capsys, *args, '--epochs', 2)
    assert code == 130 and err.strip() == 'flm: interrupted'
    ck = tmp_path/'m.checkpoint'
    assert (ck/'models'/'flm-last.safetensors').exists() and json.loads((ck/'fingerprint.json').read_text())['arguments']['epochs'] == 2
    monkeypatch.setattr(Recommender, 'save', real_save)
    refused(capsys, *args, '--epochs', 3, match=r"m\.checkpoint holds a checkpoint of other training arguments \(epochs 2 -> 3\); pass --restart")
    r = pd.read_csv(tail); r.loc[0, 'rating'] = 6 - r.loc[0, 'rating']; r.to_csv(tail, index=False)
    refused(capsys, *args, '--epochs', 2, match=r'holds a checkpoint of other ratings \(or another split\); pass --restart to discard it')
    r.loc[0, 'rating'] = 6 - r.loc[0, 'rating']; r.to_csv(tail, index=False)                  # the original data again: it resumes
    code, printed, err = flm(capsys, *args, '--epochs', 2)
    assert code == 0 and 'resuming from' in printed and not ck.exists(), err
    monkeypatch.setattr(Recommender, 'save', lambda self, path: (_ for _ in ()).throw(KeyboardInterrupt()))
    flm(capsys, *args, '--epochs', 2)
    monkeypatch.setattr(Recommender, 'save', real_save)
    code, printed, err = flm(capsys, *args, '--epochs', 3, '--restart')
    assert code == 0 and 'resuming' not in printed and not ck.exists(), err

# --- MovieLens: the README's main job, and the default `flm train` ---------------------------------------------------

@needs_ml100k
def test_default_train_on_ml100k_is_served(capsys, tmp_path):
    "`flm train --out m` (one epoch): official u1 fold; its 32 test ratings of unseen items are scored apart, after saving."
    code, printed, err = flm(capsys, 'train', '--out', tmp_path/'m', '--epochs', 1, '--quiet')
    assert code == 0, err
    assert re.search(r'^cold items\s+32\s', printed, re.M) and re.search(r'^warm items\s+19,968\s', printed, re.M), printed
    code, printed, err = flm(capsys, 'recommend', tmp_path/'m', '--user', 1, '-k', 10)
    assert code == 0 and len(printed.strip().splitlines()) == 11, err
    code, printed, _ = flm(capsys, 'recommend', tmp_path/'m', '--rated', '50:5,172:5,181:5,1:2', '-k', 5)
    assert code == 0 and len(printed.strip().splitlines()) == 6
    u1 = pd.read_csv(DATA/'ml-100k'/'u1.test', sep='\t', names=['user_id', 'item_id', 'rating', 'timestamp']).head(500)
    u1.to_csv(tmp_path/'u1.csv', index=False)
    code, printed, err = flm(capsys, 'evaluate', tmp_path/'m', '--ratings', tmp_path/'u1.csv')
    assert code == 0 and re.search(r'^all\s+500\s', printed, re.M), err

@needs_ml100k
def test_demo_runs(capsys):
    """The README's main job as a user runs it (the full recipe): every step of the tour prints, with a top 10 and the films
    closest to Star Wars, and the new user who gave 5 stars to the Star Wars trilogy (and 2 to Toy Story) gets a list of their taste."""
    code, out, err = flm(capsys, 'demo', '--quiet')
    assert code == 0, err
    for step in ('1. data', '2. training', '3. test RMSE', '4. top 10', '5. similar   the 5 films closest to Star Wars (1977)', '6. new film', '7. new user', 'done in'):
        assert step in out, step
    top = out.split('4. top 10')[1].split('5. similar')[0].strip().splitlines()
    assert len(top) == 1 + 1 + 10, top                                                            # the heading, the table's header, 10 films
    fan = out.split('7. new user')[1].split('done in')[0].strip().splitlines()[2:]
    assert len(fan) == 10, fan
    genre = sum(bool(re.search(r'Sci-Fi|Action|Adventure', line)) for line in fan)
    assert genre >= FAN_GENRE_MIN, '\n'.join(fan)
    assert not any(re.search(r'Star Wars|Empire Strikes|Return of the Jedi|Toy Story \(1995\)', line) for line in fan)   # their own films are left out

# What a good model does: the demo's FLM gives this fan 10 sci-fi/action/adventure films out of 10 (14_cli's demo output, December 2026);
# the rating-only FLM gave none that matched (Shawshank Redemption, Schindler's List, The Usual Suspects, Casablanca, ...).
FAN_GENRE_MIN = 7


# --- every user's list, and training across processes (issue #15) ----------------------------------------------------

def test_recommend_all_streams_every_list_to_a_file(trained, capsys, tmp_path):
    "`--all --out`: every user's top k as rows (user_id, rank, item_id, predicted), the lists of `recommend`, no rated item, written chunk by chunk."
    rec, out = trained
    code, printed, err = flm(capsys, 'recommend', out, '--all', '--out', tmp_path/'recs.csv', '-k', 4, '--batch-size', 7)
    assert code == 0 and 'wrote    240 rows, the top 4 of 60 users over 24 items' in printed, err
    recs = pd.read_csv(tmp_path/'recs.csv', dtype={'user_id': str, 'item_id': str})
    assert recs.columns.tolist() == ['user_id', 'rank', 'item_id', 'predicted'] and recs['rank'].tolist() == [1, 2, 3, 4] * 60
    for u in ('u0', 'u17', 'u59'): assert recs[recs.user_id == u].item_id.tolist() == rec.recommend(u, k=4).id.tolist()
    rated = set(zip(rec.seen[:, 0].tolist(), rec.seen[:, 1].tolist()))
    assert not rated & set(zip(rec.codes_of(recs.user_id, 'user').tolist(), rec.codes_of(recs.item_id).tolist()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['recs.csv']

def test_recommend_all_leaves_no_half_file(trained, capsys, tmp_path, monkeypatch):
    "A run that fails part-way (here on the third chunk) leaves neither a partial recs.csv nor a temporary file."
    _, out = trained
    real, calls = Recommender._top_frame, []
    def frame(self, *a):
        calls.append(1)
        if len(calls) == 3: raise OSError(28, 'No space left on device')
        return real(self, *a)
    monkeypatch.setattr(Recommender, '_top_frame', frame)
    refused(capsys, 'recommend', out, '--all', '--out', tmp_path/'recs.csv', '--batch-size', 10, match='No space left on device')
    assert list(tmp_path.iterdir()) == []

def test_distributed_refuses_what_it_does_not_support(capsys, no_training, monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '2')
    refused(capsys, 'train', '--out', 'm', '--distributed', '--checkpoint', match=r'--checkpoint is not supported with --distributed yet')
    refused(capsys, 'train', '--out', 'm', '--distributed', '--text', 'lora', match=r'--distributed trains --text frozen or none; --text lora')

def test_torchrun_on_two_cpu_processes_ends_where_one_process_ends(tmp_path):
    """`torchrun --standalone --nproc_per_node 2 -m fine_tuning_flm.cli train ... --distributed`: two gloo processes, each with half of
    every batch, train the model one process trains on the whole batches (whole batches only, and no ID dropout, whose random masks
    would differ); the first process saves and scores it, the other writes nothing."""
    from fine_tuning_flm.data import Interactions
    for n_users in range(40, 80):                                      # a training side that splits into whole batches of an even size
        tail = _long_tail(tmp_path, n_users=n_users)
        n = len(Interactions.from_csv(tail).split('random', valid_pct=0.2, seed=42)[0])
        bs = next((b for b in range(64, 15, -2) if n % b == 0), None)
        if bs: break
    args = [str(a) for a in ['train', '--ratings', tail, '--text', 'none', '--epochs', 2, '--bs', bs, '--id-dropout', 0, '--quiet']]
    one = run(args + ['--out', str(tmp_path/'one')])
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'FLM_DEVICE': 'cpu'}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'fine_tuning_flm.cli',
                        *args, '--distributed', '--out', str(tmp_path/'two')], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert f'parallel 2 processes (2 on this machine) share each batch of {bs} ratings' in r.stdout and r.stdout.count('saved    ') == 1, r.stdout
    two = Recommender.load(tmp_path/'two')
    for k, v in one.model.state_dict().items(): torch.testing.assert_close(two.model.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['one', 'tail.csv', 'two']                     # and no lock file left
