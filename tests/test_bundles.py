"""Bundle format: write/load round trip, discovery, errors, and the shipped SmolLM2 bundle."""

import json
import math

import numpy as np
import pytest

from wfviz.bundles import (
    BUNDLE_FORMAT_VERSION,
    LAYER_INPUTS,
    LLAMA3_HINT,
    SHIPPED_DIR,
    list_bundles,
    load_bundle,
    rebuild_sigma,
)
from wfviz.cli import main
from wfviz.collect import LayerStatistics, write_bundle
from wfviz.errors import WfvizError
from wfviz.theory import cholesky_diag, gptq_gap_bits

SHIPPED = "smollm2-135m-wikitext2"


def random_sigma(n, rng, spread=3.0):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.exp(rng.uniform(-spread, spread, n))
    s = (q * lam) @ q.T
    return 0.5 * (s + s.T)


@pytest.fixture(scope="module")
def stats():
    rng = np.random.default_rng(0)
    dims = {"qkv": 24, "o": 24, "gate_up": 24, "down": 40}
    return LayerStatistics({(b, k): random_sigma(n, rng) for b in (0, 1) for k, n in dims.items()},
                           tokens=1000)


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory, stats):
    root = tmp_path_factory.mktemp("data")
    write_bundle(root / "toy", stats, provenance={"model": {"label": "Toy"}}, full_blocks=[1],
                 progress=False)
    return root


def test_round_trip(bundle_root, stats):
    b = load_bundle(bundle_root / "toy")
    assert b.name == "toy" and b.manifest["format_version"] == BUNDLE_FORMAT_VERSION
    assert b.layers[:4] == [(0, "qkv", 24, False), (0, "o", 24, False), (0, "gate_up", 24, False),
                            (0, "down", 40, False)]
    assert len(b.layers) == 8 and all(full for blk, _, _, full in b.layers if blk == 1)
    sigma = stats.sigmas[(1, "down")]
    full = b.layer(1, "down")
    assert full.is_full and full.label == "Toy · block 1 · down_proj input"
    assert full.source_id == "bundle:toy/1/down"
    np.testing.assert_allclose(full.eigenvalues, np.linalg.eigvalsh(sigma)[::-1], rtol=1e-12)
    np.testing.assert_allclose(full.matrix, sigma, atol=2e-3 * np.abs(sigma).max())
    np.testing.assert_allclose(full.d_by_rotation["identity"], cholesky_diag(sigma), rtol=1e-10)
    # GPTQ's order: Var(X_j | X_>j), the last one is the plain variance
    gptq = full.d_gptq_by_rotation["identity"]
    np.testing.assert_allclose(gptq, cholesky_diag(sigma, order="gptq"), rtol=1e-10)
    assert gptq[-1] == pytest.approx(sigma[-1, -1], rel=1e-12)
    assert np.sum(np.log(gptq)) == pytest.approx(np.sum(np.log(full.d_by_rotation["identity"])))
    part = b.layer(0, "o")
    assert part.matrix is None and set(part.d_by_rotation) == {"identity", "hadamard", "act_order"}
    assert set(part.d_gptq_by_rotation) == set(part.d_by_rotation)
    np.testing.assert_array_equal(part.diagonal, np.diag(stats.sigmas[(0, "o")]))
    # act_order: columns by decreasing variance, so its first d is the largest diagonal entry
    assert part.d_by_rotation["act_order"][0] == pytest.approx(part.diagonal.max(), rel=1e-12)
    for e in b.manifest["layers"]:
        if e["has_full"]:
            assert e["full_check"]["passed"] and e["full_check"]["abs_error_bits"] <= 0.01


def test_rebuild_sigma_is_exactly_psd_with_stored_spectrum():
    rng = np.random.default_rng(1)
    lam = np.sort(np.exp(rng.uniform(-8, 3, 50)))[::-1]
    q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    s = rebuild_sigma(lam, q.astype(np.float16))
    assert np.array_equal(s, s.T)
    np.testing.assert_allclose(np.linalg.eigvalsh(s)[::-1], lam, rtol=1e-9, atol=1e-12 * lam[0])


def test_discovery_through_wfviz_data(bundle_root, monkeypatch, capsys):
    monkeypatch.setenv("WFVIZ_DATA", str(bundle_root))
    assert "toy" in [b.name for b in list_bundles()]
    assert load_bundle("toy").layer(0, "qkv").n == 24
    assert main(["bundles", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    toy = next(b for b in out["bundles"] if b["name"] == "toy")
    assert len(toy["layers"]) == 8 and out["hint"] == LLAMA3_HINT
    assert main(["bundles"]) == 0
    text = capsys.readouterr().out
    assert "toy" in text and LLAMA3_HINT in text


def test_errors(bundle_root, monkeypatch, tmp_path):
    monkeypatch.setenv("WFVIZ_DATA", str(bundle_root))
    with pytest.raises(WfvizError, match="No bundle named 'nope'; found: .*toy"):
        load_bundle("nope")
    b = load_bundle("toy")
    with pytest.raises(WfvizError, match="no layer block 5 / input 'down'; it has blocks 0, 1"):
        b.layer(5, "down")
    with pytest.raises(WfvizError, match="inputs qkv, o, gate_up, down"):
        b.layer(0, "attn")
    bad = tmp_path / "old"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({"format_version": 99, "layers": []}))
    with pytest.raises(WfvizError, match="format version 99"):
        load_bundle(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(WfvizError, match="Cannot read"):
        load_bundle(bad)


def test_llama3_hint_is_a_collect_command():
    assert "No Llama-3-8B bundle is shipped" in LLAMA3_HINT
    assert "wfviz collect --model meta-llama/Meta-Llama-3-8B" in LLAMA3_HINT


# --- the shipped bundle ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    return load_bundle(SHIPPED)


def test_shipped_manifest_complete(shipped):
    m = shipped.manifest
    assert m["format_version"] == BUNDLE_FORMAT_VERSION
    assert m["tokens"] >= 65536 and m["seq_len"] == 2048
    assert m["model"]["files"]["SmolLM2-135M-Instruct.Q4_1.gguf"] == (
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
    assert m["text"]["name"] == "wiki.test.raw" and len(m["text"]["sha256"]) == 64
    assert "/" not in m["command"].split("--text ")[1].split()[0]
    for key in ("date", "dtype", "device", "license", "sigma_definition"):
        assert m[key]
    assert all(m["versions"][k] for k in ("torch", "transformers"))
    assert sorted(shipped.layers) == sorted(
        (b, i, 1536 if i == "down" else 576, b in (0, 15, 29)) for b in range(30)
        for i in LAYER_INPUTS)
    size = sum(p.stat().st_size for p in shipped.path.rglob("*") if p.is_file())
    assert size <= 30 * 2**20


def test_shipped_arrays_consistent(shipped):
    for e in shipped.manifest["layers"]:
        with np.load(shipped.path / e["file"], allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        assert all(np.all(np.isfinite(a)) for a in arrays.values())
        lam = arrays["eigenvalues"]
        assert lam.shape == (e["n"],) and np.all(lam >= 0) and np.all(np.diff(lam) <= 0)
        assert np.all(arrays["diagonal"] > 0)
        log_det = float(np.sum(np.log(lam)))
        for r in ("identity", "hadamard", "act_order"):
            for key in ("d", "dg"):  # both orders keep the determinant
                d = arrays[f"{key}_{r}"]
                assert math.isclose(float(np.sum(np.log(d))), log_det, rel_tol=1e-6), \
                    (e["file"], key, r)
        assert gptq_gap_bits(arrays["dg_identity"]) == pytest.approx(e["gap_bits_identity"])
        if e["has_full"]:
            assert e["full_check"]["passed"] and e["full_check"]["abs_error_bits"] <= 0.01


def test_shipped_full_layer_reproduces_gap(shipped):
    cov = shipped.layer(15, "down")
    assert cov.is_full and cov.label.startswith("SmolLM2-135M-Instruct (Q4_1) · block 15")
    got = gptq_gap_bits(cholesky_diag(cov.matrix))
    assert got == pytest.approx(gptq_gap_bits(cov.d_by_rotation["identity"]), abs=0.01)
    got = gptq_gap_bits(cholesky_diag(cov.matrix, order="gptq"))
    assert got == pytest.approx(gptq_gap_bits(cov.d_gptq_by_rotation["identity"]), abs=0.01)


def test_shipped_dir_is_in_repo():
    assert (SHIPPED_DIR / SHIPPED / "README.md").is_file()
    assert (SHIPPED_DIR / "FORMAT.md").is_file()


def test_a_format_1_bundle_still_loads_without_gptq_order_diagonals(bundle_root, tmp_path):
    """Version 1 had only WaterSIC-order d_*: it loads, and GPTQ-order predictions of layers
    without a full matrix say to regenerate it instead of silently using the other order."""
    import shutil

    from wfviz.stats import layer_stats

    old = tmp_path / "v1"
    shutil.copytree(bundle_root / "toy", old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    for f in (old / "layers").glob("*.npz"):
        with np.load(f) as z:
            kept = {k: z[k] for k in z.files if not k.startswith("dg_")}
        np.savez(f, **kept)
    b = load_bundle(old)
    part = b.layer(0, "o")
    assert part.d_gptq_by_rotation == {} and set(part.d_by_rotation) == {
        "identity", "hadamard", "act_order"}
    s = layer_stats(part)
    assert s["gap_bits"]["identity"] is None and s["gap_bits"]["haar"] is not None
    assert any("regenerate its bundle" in note for note in s["notes"])
    full = b.layer(1, "down")  # a full matrix: computed in GPTQ's order from it
    assert layer_stats(full)["gap_bits"]["identity"] is not None
