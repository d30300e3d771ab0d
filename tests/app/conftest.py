import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: end-to-end test in a real headless Chromium (slow)")


@pytest.fixture
def cbpp_state():
    """A session state with cbpp loaded and fitted by the real library (VB: fast and deterministic)."""
    from app.state import AppState

    st = AppState()
    st.load_demo("cbpp", fit=False)
    st.spec.method = "vb"
    assert st.fit_now(), st.errors
    return st
