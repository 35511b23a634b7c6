"Fixtures shared by several test files."
import pytest

from fine_tuning_flm.data import load_movielens

@pytest.fixture(scope='session')
def tiny():
    "About 1,000 ratings of 10 users of ml-100k, split 80/20 at random: one training batch, a few hundred unique items."
    d = load_movielens('ml-100k').sample(0.01, seed=3)
    return d.split('random', valid_pct=0.2, seed=0)
