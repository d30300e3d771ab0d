import json
from pathlib import Path

import pytest

# Copied from ../shared/reference with the R scripts that produced them (tests/reference/).
REFERENCE = Path(__file__).resolve().parent / "reference" / "lme4_reference.json"


@pytest.fixture(scope="session")
def lme4_reference():
    """lme4/glmmTMB reference fits (``reference/fit_reference.R`` produced them)."""
    return json.loads(REFERENCE.read_text())["models"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slower tests (known-truth simulations, large designs)")
    config.addinivalue_line("markers", "browser: end-to-end tests in headless Chromium")
