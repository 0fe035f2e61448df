"""Shared test setup: import paths and a tiny CIFAR-10 data set made on the spot."""
import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
for _path in (ROOT, TESTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from cifar_files import write_cifar  # noqa: E402


@pytest.fixture
def tiny_cifar(tmp_path):
    """A data_dir holding cifar-10-batches-py with 5 x 20 training and 20 test images (py2 format)."""
    data_dir = tmp_path / "data"
    write_cifar(str(data_dir), n_per_batch=20, n_test=20, seed=0, style="py2")
    return str(data_dir)


# --- `slow` tests (test_training.py): skipped unless RUN_SLOW=1 ---

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes long on a small CPU (torch.compile); run with "
                                       "RUN_SLOW=1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow on a small CPU; set RUN_SLOW=1 to run it")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)
