"""Σ_X collection from a tiny random Llama built offline, and the `wfviz collect` CLI."""

import json

import numpy as np
import pytest
import torch

from tests._tiny_llm import (
    WORDS,
    tiny_model,
)
from wfviz.cli import main
from wfviz.collect import (
    check_inputs,
    collect_statistics,
    model_label,
    token_windows,
)
from wfviz.errors import WfvizError


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    p = tmp_path_factory.mktemp("text") / "calib.txt"
    p.write_text(" ".join(rng.choice(WORDS, size=2000)), encoding="utf-8")
    return p


def captured_sigmas(model, windows):
    """Σ_X from raw inputs stored by hooks written independently of wfviz.collect."""
    raw = {}

    def hook(name):
        def f(_m, args):
            raw.setdefault(name, []).append(args[0].detach().reshape(-1, args[0].shape[-1]).clone())
        return f

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in n]
    with torch.no_grad():
        for w in windows:
            model(input_ids=w[None])
    for h in handles:
        h.remove()
    out = {}
    for name, xs in raw.items():
        x = torch.cat(xs).double()
        out[name] = (x.T @ x / x.shape[0]).numpy()
    return out, {name: torch.cat(xs) for name, xs in raw.items()}


def test_sigma_matches_independent_capture():
    model = tiny_model()
    windows = token_windows(torch.randint(0, 60, (300,)).tolist(), 300, 128)
    stats = collect_statistics(model, windows, progress=False)
    ref, raw = captured_sigmas(model, windows)
    assert stats.tokens == 300
    assert list(stats.sigmas) == [(b, i) for b in (0, 1) for i in ("qkv", "o", "gate_up", "down")]
    for b in (0, 1):
        pre = f"model.layers.{b}."
        # q/k/v and gate/up really read one tensor, so storing it once loses nothing
        assert torch.equal(raw[pre + "self_attn.q_proj"], raw[pre + "self_attn.v_proj"])
        assert torch.equal(raw[pre + "mlp.gate_proj"], raw[pre + "mlp.up_proj"])
        for key, name in (("qkv", "self_attn.k_proj"), ("o", "self_attn.o_proj"),
                          ("gate_up", "mlp.up_proj"), ("down", "mlp.down_proj")):
            got, want = stats.sigmas[(b, key)], ref[pre + name]
            assert got.dtype == np.float64
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * np.abs(want).max())
    assert stats.sigmas[(1, "down")].shape == (160, 160)


def test_float32_products_are_close_to_float64():
    model = tiny_model()
    windows = token_windows(torch.randint(0, 60, (300,)).tolist(), 300, 128)
    exact = collect_statistics(model, windows, progress=False).sigmas
    fast = collect_statistics(model, windows, progress=False, products="float32").sigmas
    for key, sigma in exact.items():
        assert fast[key].dtype == np.float64 and not np.array_equal(fast[key], sigma)
        np.testing.assert_allclose(fast[key], sigma, rtol=0, atol=1e-6 * np.abs(sigma).max())
    with pytest.raises(WfvizError, match="products must be"):
        collect_statistics(model, windows, progress=False, products="float16")


def test_inputs_subset_and_hooks_removed():
    model = tiny_model()
    stats = collect_statistics(model, [torch.arange(40)], inputs=("down",), progress=False)
    assert list(stats.sigmas) == [(0, "down"), (1, "down")]
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_token_windows_and_helpers():
    assert [w.numel() for w in token_windows(list(range(10)), 9, 4)] == [4, 4, 1]
    assert check_inputs("") == ("qkv", "o", "gate_up", "down")
    assert model_label("x", "SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct (Q4_1)"
    with pytest.raises(WfvizError, match="Unknown layer input 'attn'"):
        check_inputs("qkv,attn")
    with pytest.raises(WfvizError):
        token_windows([1, 2], 0, 4)


def test_cli_collect_writes_bundle(model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "tiny-bundle"
    rc = main(["collect", "--model", str(model_dir), "--text", str(text_file), "--tokens", "400",
               "--seq-len", "128", "--device", "cpu", "--out", str(out), "--full-layers", "1"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())
    assert m["format_version"] == 2 and m["tokens"] == 400 and m["seq_len"] == 128
    assert m["text"]["name"] == "calib.txt" and len(m["text"]["sha256"]) == 64
    assert str(tmp_path) not in json.dumps(m)  # no absolute paths in the provenance
    assert set(m["versions"]) >= {"wfviz", "torch", "transformers"}
    assert m["model"]["files"]["model.safetensors"]
    assert m["device"] == "cpu" and m["dtype"] == "float32" and m["date"].endswith("Z")
    assert len(m["layers"]) == 8 and m["full_blocks"] == [1]
    full = [e for e in m["layers"] if e["has_full"]]
    assert len(full) == 4 and all(e["full_check"]["passed"] for e in full)
    assert all(e["full_check"]["abs_error_bits"] <= 0.01 for e in full)


@pytest.mark.parametrize("change, message", [
    ({"--model": "/no/such/model/dir"}, "does not exist"),
    ({"--text": "/no/such/text.txt"}, "Cannot read the text file"),
    ({"--tokens": "0"}, "--tokens"),
    ({"--layers": "qkv,mlp"}, "Unknown layer input 'mlp'"),
    ({"--full-layers": "7"}, "not a block"),
    ({"--gguf-file": "missing.gguf"}, "GGUF file missing.gguf not found"),
])
def test_cli_collect_bad_input(model_dir, text_file, tmp_path, capsys, change, message):
    args = {"--model": str(model_dir), "--text": str(text_file), "--tokens": "64",
            "--device": "cpu", "--out": str(tmp_path / "o"), **change}
    rc = main(["collect", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err
    assert rc == 2
    last = err.strip().splitlines()[-1]  # transformers' own load bar may precede it
    assert last.startswith("wfviz: error:") and message in last and err.count("wfviz:") == 1
    if "--full-layers" not in change:
        assert err.count("\n") == 1
    assert not (tmp_path / "o").exists()
