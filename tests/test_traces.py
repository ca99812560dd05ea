"""KV trace format (loader errors name the file), recorder (the keys are the int-mode model's keys)."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from traces.format import Trace, TraceError, load_trace, save_trace

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

CKPT = str(Path(__file__).resolve().parent.parent / "models/checkpoints/tiny.pt")


def _meta(L=2, H=4, Hkv=2, S=8, hd=4):
    return {
        "format": "tritium-kv-trace",
        "version": 1,
        "model": "toy",
        "model_config": {},
        "checkpoint_sha256": "0",
        "source": "test",
        "offset": 0,
        "n_layers": L,
        "n_heads": H,
        "n_kv_heads": Hkv,
        "head_dim": hd,
        "n_tokens": S,
        "dtype": "float32",
        "mode": "int",
    }


def _trace(L=2, H=4, Hkv=2, S=8, hd=4, seed=0) -> Trace:
    r = np.random.default_rng(seed)
    return Trace(
        keys=r.standard_normal((L, Hkv, S, hd)).astype(np.float32),
        queries=r.standard_normal((L, H, S, hd)).astype(np.float32),
        positions=np.arange(S, dtype=np.int64),
        tokens=r.integers(0, 256, S).astype(np.int64),
        meta=_meta(L, H, Hkv, S, hd),
    )


def _write_raw(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _arrays(t: Trace, **override):
    d = {
        "keys": t.keys,
        "queries": t.queries,
        "positions": t.positions,
        "tokens": t.tokens,
        "meta": np.array(json.dumps(t.meta)),
    }
    d.update(override)
    return {k: v for k, v in d.items() if v is not None}


def test_roundtrip(tmp_path):
    t = _trace()
    p = save_trace(t, tmp_path / "a.npz")
    u = load_trace(p)
    for name in ("keys", "queries", "positions", "tokens"):
        np.testing.assert_array_equal(getattr(u, name), getattr(t, name))
    assert u.meta == t.meta and u.group == 2 and list(u.query_heads(1)) == [2, 3]
    assert not list(tmp_path.glob("*.tmp"))


def _expect(path, *words):
    with pytest.raises(TraceError) as e:
        load_trace(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize(
    "case,override,words",
    [
        ("missing", {"queries": None}, ["missing", "queries"]),
        ("extra", {"junk": np.zeros(1)}, ["unexpected", "junk"]),
        ("kdtype", {"keys": "f64"}, ["keys", "float64"]),
        ("qshape", {"queries": "short"}, ["queries", "shape"]),
        ("heads", {"queries": "3heads"}, ["not a multiple"]),
        ("nan", {"keys": "nan"}, ["NaN"]),
        ("inf", {"queries": "inf"}, ["NaN/inf"]),
        ("pos", {"positions": "dup"}, ["positions"]),
        ("tokdtype", {"tokens": "i32"}, ["tokens", "int32"]),
        ("version", {"meta": "v2"}, ["version"]),
        ("json", {"meta": "bad"}, ["JSON"]),
        ("metafield", {"meta": "nofield"}, ["checkpoint_sha256"]),
        ("metashape", {"meta": "heads"}, ["n_heads"]),
        ("metaobj", {"meta": "bytes"}, ["meta"]),
    ],
)
def test_loader_errors(tmp_path, case, override, words):
    t = _trace()
    L, S, hd = 2, 8, 4
    ov = {}
    for k, v in override.items():
        if not isinstance(v, str):
            ov[k] = v
        elif v == "f64":
            ov[k] = t.keys.astype(np.float64)
        elif v == "short":
            ov[k] = t.queries[:, :, :-1]
        elif v == "3heads":
            q = np.zeros((L, 3, S, hd), np.float32)
            ov[k] = q
        elif v in ("nan", "inf"):
            a = (t.keys if k == "keys" else t.queries).copy()
            a[1, 0, 3, 2] = np.nan if v == "nan" else np.inf
            ov[k] = a
        elif v == "dup":
            ov[k] = np.zeros(S, np.int64)
        elif v == "i32":
            ov[k] = t.tokens.astype(np.int32)
        elif v == "v2":
            ov[k] = np.array(json.dumps({**t.meta, "version": 2}))
        elif v == "bad":
            ov[k] = np.array("{not json")
        elif v == "nofield":
            ov[k] = np.array(json.dumps({x: y for x, y in t.meta.items() if x != "checkpoint_sha256"}))
        elif v == "heads":
            ov[k] = np.array(json.dumps({**t.meta, "n_heads": 8}))
        elif v == "bytes":
            ov[k] = np.frombuffer(json.dumps(t.meta).encode(), dtype=np.uint8)
    p = tmp_path / f"{case}.npz"
    _write_raw(p, **_arrays(t, **ov))
    _expect(p, *words)


def test_corrupt_files(tmp_path):
    _expect(tmp_path / "absent.npz", "no such")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file at all")
    _expect(junk, "not a readable")
    good = save_trace(_trace(S=64, hd=16), tmp_path / "good.npz")
    data = good.read_bytes()
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(data[: len(data) // 2])
    _expect(trunc, "not a readable")
    # a damaged member: flip bytes inside the compressed keys array
    bad = bytearray(data)
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("keys.npy")
    mid = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    bad[mid : mid + 16] = bytes(16)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(bytes(bad))
    _expect(damaged, "not a readable")
    pickled = tmp_path / "pickled.npz"
    _write_raw(pickled, **_arrays(_trace(), tokens=np.array([{"a": 1}], dtype=object)))
    _expect(pickled, "not a readable")


def test_save_rejects_invalid(tmp_path):
    t = _trace()
    t.keys[0, 0, 0, 0] = np.nan
    with pytest.raises(TraceError):
        save_trace(t, tmp_path / "x.npz")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def tiny():
    from traces.record import load_model

    return load_model(CKPT)


def test_recorder_keys_are_the_int_models(tiny):
    """The trace's keys quantize to exactly the int8 codes and scales the int-mode model puts in its KV cache,
    token-by-token decoding gives the same keys as the prefill, and layer 0 recomputed by hand matches."""
    from models import hostops
    from models.bitlinear import quantize_act
    from traces.record import record, validation_tokens

    toks = validation_tokens(1000, 40)
    keys, queries, _ = record(tiny, toks)
    cfg = tiny.config
    assert keys.shape == (cfg.n_layers, cfg.n_kv_heads, 40, cfg.head_dim)
    assert queries.shape == (cfg.n_layers, cfg.n_heads, 40, cfg.head_dim)
    cache = tiny.new_cache()
    with torch.no_grad():
        tiny(toks[:24].reshape(1, -1), cache=cache, mode="int")
        for i in range(24, 40):  # decode the rest one token at a time
            tiny(toks[i : i + 1].reshape(1, -1), cache=cache, mode="int")
    for layer in range(cfg.n_layers):
        kq_cache, sk_cache = cache.layers[layer][0][0], cache.layers[layer][1][0]
        kq, sk = quantize_act(torch.from_numpy(keys[layer]))
        assert torch.equal(kq, kq_cache) and torch.equal(sk, sk_cache), layer
    # layer 0 from the embedding, by hand
    blk = tiny.layers[0]
    with torch.no_grad():
        x = tiny.embed_tokens(toks.reshape(1, -1))
        h = hostops.rmsnorm(x, blk.attn_norm.weight, cfg.norm_eps)
        k = blk.attn.k_proj(h, "int").view(1, 40, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        q = blk.attn.q_proj(h, "int").view(1, 40, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        pos = torch.arange(40)
        k = hostops.rope(k, pos, tiny.rope_cos, tiny.rope_sin)
        q = hostops.rope(q, pos, tiny.rope_cos, tiny.rope_sin)
    np.testing.assert_array_equal(keys[0], k[0].numpy())
    np.testing.assert_array_equal(queries[0], q[0].numpy())


def test_recorder_cli_writes_a_valid_trace(tmp_path, repo):
    from traces.record import main

    out = tmp_path / "t.npz"
    assert main(["--checkpoint", CKPT, "--out", str(out), "--tokens", "32", "--offset", "5"]) == 0
    t = load_trace(out)
    assert t.n_tokens == 32 and t.meta["offset"] == 5 and t.meta["mode"] == "int"
    from models.data import load_corpus

    np.testing.assert_array_equal(t.tokens, load_corpus().val[5:37].numpy())
    assert (
        main(
            [
                "--checkpoint",
                CKPT,
                "--out",
                str(tmp_path / "u.npz"),
                "--tokens",
                "32",
                "--offset",
                "999999999",
            ]
        )
        == 2
    )
    assert not (tmp_path / "u.npz").exists()


def test_longer_rope_table_keeps_the_first_positions(tiny):
    from traces.record import load_model

    long = load_model(CKPT, max_seq=512)
    assert long.config.max_seq == 512 and long.rope_cos.shape[0] == 512
    assert torch.equal(long.rope_cos[:256], tiny.rope_cos) and torch.equal(long.rope_sin[:256], tiny.rope_sin)


def test_committed_traces_load(repo):
    paths = sorted((repo / "traces").glob("*.npz"))
    assert len(paths) >= 3
    total = 0
    for p in paths:
        t = load_trace(p)
        assert t.meta["source"].endswith("validation") and t.meta["model"] == "tiny"
        total += p.stat().st_size
    assert total < 8e6
