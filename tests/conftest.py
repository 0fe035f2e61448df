"""Shared test setup: import paths, and markers for the long runs (skipped unless asked for)."""
import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
for _path in (ROOT, TESTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# Step times remembered by one test (or by the user's own runs) must not stand in for the timing
# another test checks: nothing is remembered unless a test names a file of its own
# (tests/training/test_timing_cache.py). Set before cli_tools copies the environment.
os.environ["RESNET_CIFAR_TIMINGS"] = "off"


# Opt-in tests: marker -> (the environment variable that runs them, why they are skipped otherwise).
# `slow`: test_training.py (torch.compile); `fuzz_more`: test_fuzz.py, many more mutated files.
OPT_IN = {"slow": ("RUN_SLOW", "slow on a small CPU; set RUN_SLOW=1 to run it"),
          "fuzz_more": ("RUN_FUZZ", "the long fuzzing run; set RUN_FUZZ=1 to run it")}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes long on a small CPU (torch.compile); run with "
                                       "RUN_SLOW=1")
    config.addinivalue_line("markers", "fuzz_more: many more fuzzing cases than the default run; "
                                       "run with RUN_FUZZ=1")


def pytest_collection_modifyitems(config, items):
    for marker, (variable, reason) in OPT_IN.items():
        if os.environ.get(variable) == "1":
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if item.get_closest_marker(marker) is not None:
                item.add_marker(skip)
