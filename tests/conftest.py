import os
import sys
from pathlib import Path

# torch's OpenMP threads spin-wait by default; next to another busy process (nextpnr, Verilator) that makes
# every torch call 15-20x slower. Set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long runs (full bitstreams); `make test-all` includes them")


@pytest.fixture
def repo() -> Path:
    return REPO
