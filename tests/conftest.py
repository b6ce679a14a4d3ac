"""Fixtures shared by every test module."""

import sys

import pytest


@pytest.fixture(autouse=True)
def _fresh_streamlit_caches():
    """Give every test empty Streamlit caches: they are process-global and outlive AppTest runs.

    Only clears when some test already imported Streamlit, so library-only runs never import it.
    """
    st = sys.modules.get("streamlit")
    if st is not None:
        st.cache_data.clear()
        st.cache_resource.clear()
    yield
