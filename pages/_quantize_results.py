"""Results section of the Quantize page: charts, the per-column view, tables and exports.

``show_results(cov, result)`` draws one finished sweep (``result`` as the page stores it:
``dict(source=..., label=..., settings=..., rows=[...], columns={...}, notices=[...])``: the row
dicts of the sweep's points and their per-column data, ``iter_sweep(keep_columns=True)``). It
runs no quantizer itself.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from pages._ui import ROTATION_NAMES, chart, haar_gap_for, haar_text
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

_FORMATS = {"target_rate": "%.2f", "rate": "%.3f", "distortion": "%.3e",
            "relative_distortion": "%.3e", "it_limit": "%.3e", "gap_bits": "%.3f",
            "side_bits": "%.4f", "payload_gap_bits": "%.3f", "predicted_gap_bits": "%.3f",
            "time_s": "%.2f"}


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
    chart(column_rate_figure(measured, d, ROTATION_NAMES.get(rot, rot)), "q_cols")
    below = int(np.count_nonzero(measured < 0.05))
    st.caption(
        f"WaterSIC at target {mid:g} bits in the {rot} basis (the first rotation chosen), one "
        f"dot per column: the empirical entropy of its {settings['rows']} integer codes (side "
        "information excluded) against ½·log2(d_j/GM(d)). One step c in the whitened domain "
        "gives column j the rate R + ½·log2(d_j/GM(d)): a line of slope 1. Columns far below "
        f"the average bend to zero bits, as in waterfilling ({below:,} columns under 0.05 bit).")


def _side_text(rows: list[dict]) -> str:
    """The side information of each method, as the captions state it."""
    side = {}
    for r in rows:
        side.setdefault(r["method"], r["side_bits"])
    return ", ".join(f"{m} {b:.3f}" for m, b in side.items())


def _weights_caption(settings: dict, side: str) -> str:
    if settings["weights"] == "real":
        what = (f"W is **{settings['weights_label']}** ({settings['rows']:,} rows, mean "
                f"W² = {settings['variance']:.3g}): not Gaussian, with columns of unequal "
                "spread, so the IT limit is that of Gaussian rows of the same variance, and "
                "the predictions in the gap chart use each rotated column's entropy power "
                "next to d_j.")
    else:
        what = "W has rows i.i.d. N(0, 1), so σ² = 1."
    return (f"{what} GPTQ/RTN targets are grid bits; their points sit at the rate measured by "
            f"the same metric. Side information (scales, steps, the metric's own model) in "
            f"bits per weight at {settings['rows']:,} rows: {side}; the D–R chart's rates "
            "include it.")


def _export(cov, result: dict, rows: list[dict], gaps: dict, axis: str) -> None:
    settings = result["settings"]
    damping = settings.get("damping")
    header = {"source": result["source"], "layer": result.get("label") or cov.label,
              "weights": settings["weights_label"], "rows": settings["rows"],
              "seed": settings["seed"], "rate_metric": settings["rate_metric"],
              "damping": "default" if damping is None else f"{damping:g}"}
    c1, c2 = st.columns(2)
    c1.download_button("Download CSV", table_to_csv(rows, header=header),
                       file_name="wfviz_sweep.csv", mime="text/csv", key="q_csv")
    if c2.button("Prepare PNG of the D-R chart", key="q_png_prepare"):
        title = (f"D(R): {result.get('label') or cov.label} · {settings['weights_label']} · "
                 f"{settings['rows']:,} rows")
        try:
            png = dr_figure(rows, cov.eigenvalues, gaps, axis, settings["variance"],
                            title=title).update_layout(margin=dict(l=90, r=60, t=60)).to_image(
                format="png", width=1400, height=700)
        except Exception:  # kaleido needs a Chrome; report it in one sentence, not a trace
            st.error("PNG export needs kaleido and a Chrome/Chromium (e.g. Debian's chromium); "
                     "install one, or use the camera icon of the chart.")
        else:
            c2.download_button("Download PNG", png, file_name="wfviz_dr.png",
                               mime="image/png", key="q_png")


def _haar_note(cov, settings: dict) -> str:
    if "haar" not in settings["rotations"] or settings["weights"] == "real":
        return ""
    return (f" Haar: the prediction for the very rotation drawn (seed {settings['seed']}); "
            f"over {haar_gap_for(cov)['seeds']} random rotations GPTQ-EC's gap over WaterSIC "
            f"is {haar_text(haar_gap_for(cov))} bit.")


def show_results(cov, result: dict) -> None:
    """Draw one finished sweep on the Quantize page."""
    rows, settings = result["rows"], result["settings"]
    metric = settings["rate_metric"]
    axis = rate_axis_label(metric)
    real = settings["weights"] == "real"
    gaps = gptq_gaps(rows, settings["rotations"])
    side = _side_text(rows)
    for note in result.get("notices", []):
        st.warning(note)
    st.caption(f"Every measured rate on this page is counted as **{metric}** "
               f"({RATE_METRICS[metric]}); theory lines are in bits per weight of an ideal "
               "code. " + _weights_caption(settings, side))
    bias = _bias(settings)
    if bias is not None:
        top = max(settings["rates"])
        worst = float(plugin_entropy_bias([top], settings["rows"])[0])
        st.warning(
            f"Each column's entropy is estimated from only {settings['rows']} codes, and that "
            f"plug-in estimate reads low: by about {worst:.2f} bit at {top:g} bits (dotted line "
            "in the gap chart; a simulation of one Gaussian column). The measured points at "
            "high rate therefore sit below the high-rate lines. Count the rate with "
            "parametric_coded, use more rows, or lower rates.")
    chart(dr_figure(rows, cov.eigenvalues, {} if real else gaps, axis, settings["variance"]),
          "q_dr")
    if real:
        st.caption("The D–R lines are for Gaussian rows of the same variance; the predictions "
                   "for these weights are in the gap chart.")
    payload_axis = "payload " + axis.replace("rate (", "rate = rate − side information (", 1)
    chart(gap_figure(rows, gaps, payload_axis, bias), "q_gap")
    st.markdown(
        "**Reading the gap chart.** Points are at the payload rate, the rate without its side "
        f"information ({side} bit per weight), because the high-rate theory leaves that out. "
        f"WaterSIC should sit ½·log2(2πe/12) ≈ {WATERSIC_GAP_BITS:.4f} bit above the limit at "
        "high rate in **every** basis, so its rings for different rotations coincide. "
        "Entropy-coded GPTQ adds ½·log2(AM(d)/GM(d)) for the basis it runs in, which a random "
        "rotation shrinks. Below about 4 bits both gaps grow (error feedback of large errors)."
        + _haar_note(cov, settings))
    gaps_by_rate = pd.DataFrame(gap_table(rows, gap="payload_gap_bits")).set_index(
        "method · rotation")
    st.dataframe(gaps_by_rate, key="q_gap_table",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in gaps_by_rate.columns})
    st.caption("Measured gap to the IT limit at the payload rate, in bits per weight, at each "
               "target rate, and the high-rate prediction (GPTQ and RTN: the GPTQ-EC formula, "
               "as a reference" + ("; for these weights, at the lowest rate" if real else "")
               + ").")

    if "watersic" in settings["methods"]:
        _column_view_panel(result)

    st.subheader("Results")
    table = pd.DataFrame(rows)[[c for c in COLUMNS if c in rows[0]]]
    st.dataframe(table, hide_index=True, width="stretch", key="q_table",
                 column_config={c: st.column_config.NumberColumn(format=f)
                                for c, f in _FORMATS.items()})
    _export(cov, result, rows, {} if real else gaps, axis)
