import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long runs (full bitstreams); `make test-all` includes them")


@pytest.fixture
def repo() -> Path:
    return REPO
