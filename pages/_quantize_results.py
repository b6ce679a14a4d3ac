"""Results section of the Quantize page: charts, the per-column view, tables and exports.

``show_results(cov, result)`` draws one finished sweep (``result`` as the page stores it:
``dict(source=..., settings=..., rows=[...], columns={...})``: the row dicts of the sweep's
points and their per-column data, ``iter_sweep(keep_columns=True)``). It runs no quantizer
itself.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from pages._ui import ROTATION_NAMES
from wfviz.experiments import COLUMNS, gap_table, table_to_csv
from wfviz.plots import (
    column_rate_figure,
    dr_figure,
    gap_figure,
    gptq_gaps,
)
from wfviz.rates import RATE_METRICS, plugin_entropy_bias, rate_axis_label
from wfviz.theory import WATERSIC_GAP_BITS

BIAS_SHOWN_BITS = 0.03
"""The plug-in entropy bias is drawn and warned about once it exceeds this (bits)."""
SCALE_BITS = 16

_FORMATS = {"target_rate": "%.2f", "rate": "%.3f", "distortion": "%.3e",
            "relative_distortion": "%.3e", "it_limit": "%.3e", "gap_bits": "%.3f",
            "predicted_gap_bits": "%.3f", "time_s": "%.2f"}


def _bias(settings: dict) -> tuple[np.ndarray, np.ndarray, int] | None:
    """``(rates, bias, rows)`` of the per-column plug-in entropy, when it is worth showing."""
    if settings["rate_metric"] != "column_entropy":
        return None
    rates = np.linspace(max(0.5, min(settings["rates"]) - 0.1), max(settings["rates"]) + 0.1, 25)
    bias = plugin_entropy_bias(rates, settings["rows"])
    return (rates, bias, settings["rows"]) if bias.max() > BIAS_SHOWN_BITS else None


def _column_view_panel(result: dict) -> None:
    """WaterSIC's per-column entropies at the middle rate of the first rotation it finished,
    from the sweep's own codes (``keep_columns``): no quantization runs here."""
    settings, kept = result["settings"], result.get("columns", {})
    done = [(rot, float(r)) for rot in settings["rotations"] for r in settings["rates"]
            if ("watersic", rot, float(r)) in kept]
    if not done:
        return
    rot = done[0][0]
    rates = [r for ro, r in done if ro == rot]
    mid = rates[len(rates) // 2]
    kept = kept[("watersic", rot, mid)]
    measured, d = kept["column_entropy"], kept["d"]
    st.plotly_chart(column_rate_figure(measured, d, ROTATION_NAMES.get(rot, rot)),
                    width="stretch", key="q_cols")
    below = int(np.count_nonzero(measured < 0.05))
    st.caption(
        f"WaterSIC at target {mid:g} bits in the {rot} basis (the first rotation chosen), one "
        f"dot per column: the empirical entropy of its {settings['rows']} integer codes (side "
        "information excluded) against ½·log2(d_j/GM(d)). One step c in the whitened domain "
        "gives column j the rate R + ½·log2(d_j/GM(d)): a line of slope 1. Columns far below "
        f"the average bend to zero bits, as in waterfilling ({below:,} columns under 0.05 bit).")


def show_results(cov, result: dict) -> None:
    """Draw one finished sweep on the Quantize page."""
    rows, settings = result["rows"], result["settings"]
    metric = settings["rate_metric"]
    axis = rate_axis_label(metric)
    gaps = gptq_gaps(rows, settings["rotations"])
    side = SCALE_BITS / settings["rows"]
    st.caption(
        f"Every measured rate on this page is counted as **{metric}** ({RATE_METRICS[metric]}); "
        "theory lines are in bits per weight of an ideal code. W has rows i.i.d. N(0, 1), so "
        "σ² = 1. GPTQ/RTN targets are grid bits; their points sit at the rate measured by the "
        f"same metric. WaterSIC stores one 16-bit scale per column: {side:.3f} bit per weight "
        f"at {settings['rows']} rows, included in its rate.")
    bias = _bias(settings)
    if bias is not None:
        top = max(settings["rates"])
        worst = float(plugin_entropy_bias([top], settings["rows"])[0])
        st.warning(
            f"Each column's entropy is estimated from only {settings['rows']} codes, and that "
            f"plug-in estimate reads low: by about {worst:.2f} bit at {top:g} bits (dotted line "
            "in the gap chart; a simulation of one Gaussian column). The measured points at "
            "high rate therefore sit below the high-rate lines (with still fewer rows, even "
            "below the IT limit). Use more rows, or lower rates, to see the high-rate gaps.")
    st.plotly_chart(dr_figure(rows, cov.eigenvalues, gaps, axis), width="stretch", key="q_dr")
    st.plotly_chart(gap_figure(rows, gaps, axis, bias), width="stretch", key="q_gap")
    st.markdown(
        f"**Reading the gap chart.** WaterSIC should sit ½·log2(2πe/12) ≈ "
        f"{WATERSIC_GAP_BITS:.4f} bit above the limit at high rate in **every** basis, so its "
        "rings for different rotations coincide. Entropy-coded GPTQ adds ½·log2(AM(d)/GM(d)) "
        "for the basis it runs in, which a random rotation shrinks. Below about 4 bits both "
        "gaps grow (error feedback of large errors).")
    gaps_by_rate = pd.DataFrame(gap_table(rows)).set_index("method · rotation")
    st.dataframe(gaps_by_rate, key="q_gap_table",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in gaps_by_rate.columns})
    st.caption("Measured gap to the IT limit in bits per weight at each target rate, and the "
               "high-rate prediction (GPTQ and RTN: the GPTQ-EC formula, as a reference).")

    if "watersic" in settings["methods"]:
        _column_view_panel(result)

    st.subheader("Results")
    table = pd.DataFrame(rows)[[c for c in COLUMNS if c in rows[0]]]
    st.dataframe(table, hide_index=True, width="stretch", key="q_table",
                 column_config={c: st.column_config.NumberColumn(format=f)
                                for c, f in _FORMATS.items()})
    c1, c2 = st.columns(2)
    c1.download_button("Download CSV", table_to_csv(rows), file_name="wfviz_sweep.csv",
                       mime="text/csv", key="q_csv")
    if c2.button("Prepare PNG of the D-R chart", key="q_png_prepare"):
        try:
            png = dr_figure(rows, cov.eigenvalues, gaps, axis).update_layout(
                margin=dict(l=90, r=60, t=60)).to_image(format="png", width=1400, height=700)
        except Exception:  # kaleido needs a Chrome; report it in one sentence, not a trace
            st.error("PNG export needs kaleido and a Chrome/Chromium (e.g. Debian's chromium); "
                     "install one, or use the camera icon of the chart.")
        else:
            c2.download_button("Download PNG", png, file_name="wfviz_dr.png",
                               mime="image/png", key="q_png")
