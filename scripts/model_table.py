"""Print a whole-model grid's results as the README's Markdown table (perplexity and KL).

Usage::

    .venv/bin/python scripts/model_table.py [RESULTS_DIR]

RESULTS_DIR defaults to the shipped grid (``sample_covariances/<bundle>/model_grid``). One row
per method · rotation · calibration, one column per target rate; each cell is
``perplexity / KL`` at the measured bits per weight, which follows in brackets.
"""

from __future__ import annotations

import sys

from wfviz.model_results import group_size, load_results, shipped_results
from wfviz.plots.model import model_label
from wfviz.rates import metric_name


def main(argv: list[str]) -> int:
    results = load_results(argv[0]) if argv else shipped_results()
    if results is None:
        print("no shipped grid found", file=sys.stderr)
        return 1
    ref = results.reference or {}
    rates = sorted({p["target_rate"] for p in results.points if p.get("target_rate")})
    rows: dict[tuple, dict] = {}
    for p in results.points:
        group = f" · g{group_size(p)}" if group_size(p) else ""
        key = (p["method"] + group, p["rotation"], p["calibration"], metric_name(p["rate_metric"]))
        rows.setdefault(key, {})[p["target_rate"]] = p
    print(f"Model: {model_label(results)}; reference perplexity **{ref.get('ppl', 0):.2f}**; "
          f"{results.spans_text()}.\n")
    print("| method · rotation · calibration | bits counted as | "
          + " | ".join(f"{r:g} bits" for r in rates) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in rates) + " |")
    for (method, rotation, calibration, metric), cells in sorted(rows.items()):
        text = []
        for r in rates:
            p = cells.get(r)
            ppl = "" if p is None else (f"{p['ppl']:.2f}" if p["ppl"] < 1e4 else f"{p['ppl']:.2g}")
            text.append("" if p is None else f"{ppl} / {p['kl']:.3f} ({p['rate']:.3f})")
        print(f"| {method} · {rotation} · {calibration} | {metric} | " + " | ".join(text) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
