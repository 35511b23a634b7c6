"""Fixtures shared by several test files, and the `needs_data` marker.

Tests that read MovieLens are marked `@pytest.mark.needs_data('ml-100k', ...)` (no argument: ml-100k); so is every test
that uses the `tiny` fixture. They find the data in the folder `FLM_DATA` names. Without it they fail with a message
that says so, so that a run without the data never looks like a passing one; they are skipped instead only when
`FLM_DATA` is unset and `FLM_ALLOW_NO_DATA=1`."""
import os
from pathlib import Path

import pytest

from fine_tuning_flm.data import load_movielens

NO_DATA = ("set FLM_DATA to the folder holding ml-100k and ml-latest-small (for example FLM_DATA=/work/shared/data; the GitHub "
           "workflow downloads them from GroupLens), or set FLM_ALLOW_NO_DATA=1 with FLM_DATA unset to skip the tests marked needs_data")

def missing_data(names) -> str|None:
    "Why the datasets `names` cannot be read from `FLM_DATA`, or None when they can."
    root = os.environ.get('FLM_DATA')
    if not root: return f"FLM_DATA is not set: {NO_DATA}"
    gone = [n for n in names if not (Path(root)/n).is_dir()]
    return f"FLM_DATA={root} has no {', '.join(gone)}: {NO_DATA}" if gone else None

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if 'tiny' in getattr(item, 'fixturenames', ()): item.add_marker(pytest.mark.needs_data('ml-100k'))

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    names = sorted({n for m in item.iter_markers('needs_data') for n in (m.args or ('ml-100k',))})
    why = missing_data(names) if names else None
    if why is None: return
    if not os.environ.get('FLM_DATA') and os.environ.get('FLM_ALLOW_NO_DATA') == '1': pytest.skip(f"needs {', '.join(names)} (FLM_ALLOW_NO_DATA=1)")
    pytest.fail(why, pytrace=False)

@pytest.fixture(scope='session')
def tiny():
    "About 1,000 ratings of 10 users of ml-100k, split 80/20 at random: one training batch, a few hundred unique items."
    d = load_movielens('ml-100k').sample(0.01, seed=3)
    return d.split('random', valid_pct=0.2, seed=0)
