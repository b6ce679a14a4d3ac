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


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama and its tokenizer saved as a model folder, once per test module."""
    from tests._tiny_llm import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """A 1200-word text file (1200 tokens with the tiny tokenizer)."""
    from tests._tiny_llm import write_text

    return write_text(tmp_path_factory.mktemp("text") / "wiki.txt", 1200)
