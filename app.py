"""wfviz: how bits should be allocated when LLM weights are quantized (Streamlit entry point).

Run with ``streamlit run app.py``. This file is the frame of every page: page config, the shared
Σ_X source sidebar (``pages/_ui.py``) and the navigation.
"""

import sys
from pathlib import Path

import pandas  # noqa: F401  (see below)
import streamlit as st

# Import pandas before any page runs: Plotly reads pandas from sys.modules without importing it,
# so while one session's first st.dataframe imports pandas, every other session building a figure
# met a half-initialised module (AttributeError: module 'pandas' has no attribute 'Series'; seen
# by benchmarks/bench_classroom.py). An import in app.py waits until pandas is complete.

# `streamlit run app.py` puts the script's folder on sys.path only for the entry script's
# directory at start-up; make `pages._ui` importable for AppTest and other launch directories too.
ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pages._ui import return_to_deep_link, sidebar_presenter, sidebar_source  # noqa: E402

st.set_page_config(page_title="wfviz", page_icon=":material/water:", layout="wide")

PAGES = [
    st.Page("pages/covariance.py", title="Covariance", icon=":material/grid_on:", default=True),
    st.Page("pages/waterfilling.py", title="Waterfilling", icon=":material/water:"),
    st.Page("pages/quantize.py", title="Quantize: WaterSIC vs GPTQ", icon=":material/compress:"),
    st.Page("pages/layer_stats.py", title="Layer statistics", icon=":material/table_chart:"),
    st.Page("pages/model.py", title="Model: perplexity vs bits", icon=":material/memory:"),
    st.Page("pages/learn.py", title="Learn", icon=":material/school:"),
]

page = st.navigation(PAGES)
sidebar_presenter()
sidebar_source()
return_to_deep_link()
page.run()
