"The `flm` command: the README's main job (`flm demo`), and train → recommend → similar on a ratings CSV of your own."
import os, shutil, subprocess, sys
from pathlib import Path

import numpy as np, pandas as pd, pytest

from fine_tuning_flm.recommend import Recommender, main, run

DATA = Path(os.environ.get('FLM_DATA', '../shared/data'))
needs_ml100k = pytest.mark.skipif(not (DATA/'ml-100k').exists(), reason='set FLM_DATA to the folder holding ml-100k')

GENRES = ['Comedy', 'Drama', 'Horror', 'Sci-Fi']

@pytest.fixture(scope='module')
def csvs(tmp_path_factory):
    "A small shop of our own: 60 users, 24 items in 4 genres; users like one genre and rate it high."
    d = tmp_path_factory.mktemp('shop')
    rng = np.random.default_rng(0)
    items = pd.DataFrame({'sku': [f'sku{i:02d}' for i in range(24)],
                          'title': [f'{GENRES[i % 4]} film number {i}' for i in range(24)],
                          'genre': [GENRES[i % 4] for i in range(24)]})
    rows = []
    for u in range(60):
        fav = u % 4
        for i in rng.choice(24, 12, replace=False):
            rows.append((f'u{u}', f'sku{i:02d}', 5 if i % 4 == fav else int(rng.integers(1, 3))))
    pd.DataFrame(rows, columns=['customer', 'sku', 'stars']).to_csv(d/'ratings.csv', index=False)
    items.to_csv(d/'items.csv', index=False)
    return d

@pytest.fixture(scope='module')
def trained(csvs, tmp_path_factory):
    out = tmp_path_factory.mktemp('model')/'rec'
    rec = run(['train', '--ratings', str(csvs/'ratings.csv'), '--items', str(csvs/'items.csv'), '--user-col', 'customer',
                '--item-col', 'sku', '--rating-col', 'stars', '--epochs', '12', '--out', str(out), '--quiet'])
    return rec, out

def test_entry_point_installed():
    "`pip install -e .` puts `flm` on the path (settings.ini's console_scripts)."
    exe = shutil.which('flm') or str(Path(sys.executable).parent/'flm')
    r = subprocess.run([exe, '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for cmd in ('demo', 'train', 'recommend', 'similar'): assert cmd in r.stdout

def test_bad_command_line(capsys):
    with pytest.raises(SystemExit) as e: main(['train', '--epochs', '2'])     # --out is required
    assert e.value.code == 2
    assert '--out' in capsys.readouterr().err

def test_train_saves_a_loadable_recommender(trained):
    rec, out = trained
    assert (out/'model.safetensors').exists() and (out/'items.csv').exists()
    assert not list(out.glob('*.pkl')) and not list(out.glob('*.pth'))        # no pickle anywhere
    back = Recommender.load(out)
    a, b = rec.recommend('u0', k=5), back.recommend('u0', k=5)
    pd.testing.assert_frame_equal(a, b)

def test_recommend_learns_the_taste(trained, capsys):
    "User u0 likes Comedy (items 0, 4, 8, ...): the unseen items at the top of their list are comedies."
    rec, out = trained
    top = rec.recommend('u0', k=3)
    assert (top.id.str[3:].astype(int) % 4 == 0).all(), top
    main(['recommend', str(out), '--user', 'u0', '-k', '3'])
    printed = capsys.readouterr().out
    for sku in top.id: assert sku in printed

def test_similar_from_the_command_line(trained, capsys):
    rec, out = trained
    main(['similar', str(out), '--item', 'sku00', '-k', '3'])
    printed = capsys.readouterr().out
    assert 'sku00' not in printed.split('\n', 1)[1]                            # an item is not its own neighbour
    assert 'Comedy' in printed

def test_unknown_user_is_named(trained):
    _, out = trained
    with pytest.raises(KeyError, match='nobody'): main(['recommend', str(out), '--user', 'nobody'])

@needs_ml100k
def test_demo_runs(capsys):
    "The README's main job, shortened to 2 epochs: every step of the tour prints."
    main(['demo', '--epochs', '2'])
    out = capsys.readouterr().out
    assert 'RMSE' in out and 'new user' in out and 'done in' in out
