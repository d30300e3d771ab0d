import json
from pathlib import Path

import pytest

# Copied from ../shared/reference with the R scripts that produced them (tests/reference/).
REFERENCE = Path(__file__).resolve().parent / "reference" / "lme4_reference.json"


@pytest.fixture(scope="session")
def lme4_reference():
    """lme4/glmmTMB reference fits (``reference/fit_reference.R`` produced them)."""
    return json.loads(REFERENCE.read_text())["models"]


@pytest.fixture
def rules_taken(monkeypatch):
    """``taken(cls)``: from now on, the number of nodes of every rule ``cls.hermite_rule`` returns is
    appended to the list it returns (the Gauss-Hermite rules a fit takes, in order)."""

    def taken(cls):
        counts, rule = [], cls.hermite_rule

        def spy(self, sd):
            out = rule(self, sd)
            counts.append(out[2])
            return out

        monkeypatch.setattr(cls, "hermite_rule", spy)
        return counts

    return taken


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slower tests (known-truth simulations, large designs)")
    config.addinivalue_line("markers", "browser: end-to-end tests in headless Chromium")
