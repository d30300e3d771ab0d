"""The Dashboard object without a browser."""
from bokeh.document import Document


def _watchers(obj):
    return sum(len(v) for per_param in obj.param.watchers.values() for v in per_param.values())


def test_reloading_data_does_not_accumulate_watchers():
    """Widgets rebuilt for each data set must not leave watchers behind on the session state."""
    from app import Dashboard

    d = Dashboard()
    d.__panel__().get_root(Document())
    st = d.state
    parts = [st, st.spec, st.data, st.view, st.fit]
    before = [_watchers(o) for o in parts]
    for name in ("grouseticks", "cbpp", "grouseticks", "cbpp"):
        st.load_demo(name)
    assert [_watchers(o) for o in parts] == before
