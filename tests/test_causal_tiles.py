"""Causal prefill attention without the masked tiles (issue 15, TTFT): a group's query rows (token-major) are cut
into bands of row tiles (compiler.tiling.attention_bands), each a Q·Kᵀ command whose N covers only the keys its
rows attend and a P·V command whose K does, on the unchanged GEMM engine and command encoding.

Checks: the bands cover every row and every key a row attends and nothing beyond a key tile more, merged only
where a command's start-up costs more than the tiles it adds (gemm_cost: the GEMM cycle definition's closed
form, checked against sim.gemm_model.gemm_fast); BitNet-0.7B's prefill attention work drops by about half for a
long prompt while decode is unchanged; executor logits bit-identical to PyTorch's int mode for prompts that are
no multiple of the tiles, for a second prefill chunk (pos > 0), with overlap's split softmax, and for general
modules with and without the mask; one top-level co-simulation of a multi-band prefill (bit-exact logits,
every command's cycles RTL = model)."""

import random
from pathlib import Path

import pytest

from compiler.tiling import AttentionBand, GemmCost, attention_bands, attention_gemms, ceil_div, gemm_cost
from hw.config import config_from_dict, load_config
from hw.gemm_layout import gemm_shape
from hw.isa import GemmCommand
from sim.gemm_model import gemm_fast

ROOT = Path(__file__).resolve().parent.parent


def _cfg(name: str, **sections):
    acfg = load_config(ROOT / "configs" / name)
    if not sections:
        return acfg
    d = acfg.to_dict()
    for sec, fields in sections.items():
        d[sec].update(fields)
    return config_from_dict(d, source="test")


# ---------------------------------------------------------------------------------- the banding rule
def test_bands_cover_every_attended_key_and_skip_whole_tiles():
    rng = random.Random(7)
    for _ in range(400):
        rpt, T, pos = rng.randint(1, 6), rng.randint(1, 90), rng.choice([0, 0, rng.randint(1, 200)])
        kt, rt, other = rng.choice([4, 8, 16, 64]), rng.choice([1, 2, 4, 8]), rng.randint(1, 4)
        cost = GemmCost(rng.randint(16, 100), rng.choice([0, 40, 130, 5000]))
        bands = attention_bands(rpt, T, pos, kt, rt, other, cost)
        M, ctx = rpt * T, pos + T
        assert bands[0].r0 == 0 and bands[-1].r1 == M and bands[-1].keys == ctx
        for a, b in zip(bands, bands[1:], strict=False):
            assert a.r1 == b.r0 and a.r1 % rt == 0 and a.keys < b.keys
        for b in bands:
            need = pos + (b.r1 - 1) // rpt + 1  # the band's last row attends the most keys
            assert b.keys == need <= ctx
        if cost.startup == 0:  # nothing to save by merging: one band per run of equal key tiles
            tiles = [ceil_div(b.keys, kt) for b in bands]
            assert tiles == sorted(set(tiles))
    # decode and non-causal attention: one band over every key
    c = GemmCost(66, 130)
    assert attention_bands(2, 1, 99, 64, 2, 3, c) == (AttentionBand(0, 2, 100),)
    assert attention_bands(2, 128, 0, 64, 2, 3, c, causal=False) == (AttentionBand(0, 256, 128),)
    # BitNet-0.7B on kv260, prompt 128: two bands of 64 tokens (64 and 128 keys)
    assert attention_bands(2, 128, 0, 64, 2, 3, c) == (
        AttentionBand(0, 128, 64),
        AttentionBand(128, 256, 128),
    )


def test_merging_follows_the_start_up_cost():
    # tokens 62..65 at key tile 64, one token per row tile: rows 0..1 need 1 key tile, rows 2..3 two
    split = attention_bands(1, 4, 62, 64, 1, 3, GemmCost(66, 130))
    assert [b.keys for b in split] == [64, 66]  # merging adds 2 × 3 steps (396 cycles) > 130
    merged = attention_bands(1, 4, 62, 64, 1, 3, GemmCost(66, 400))
    assert merged == (AttentionBand(0, 4, 66),)  # 396 < 400: one command is cheaper


def test_gemm_cost_is_the_gemm_cycle_definition():
    """The banding rule's closed form against the GEMM engine's model (= RTL): exact on kv260 and the default
    config, within a tenth of a step per step on every shipped config."""
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        acfg = load_config(path)
        c = gemm_cost(acfg)
        for mt, nt, kt in ((1, 1, 1), (1, 3, 2), (4, 2, 3), (64, 3, 1), (128, 2, 3)):
            steps = mt * nt * kt
            real = gemm_fast(acfg, GemmCommand(mt, nt, kt, 0, 0, 0)).cycles
            model = c.startup + steps * c.step
            if path.stem in ("kv260", "default"):
                assert model == real, (path.stem, (mt, nt, kt), model, real)
            assert abs(model - real) <= 0.1 * c.step * steps + 25, (path.stem, (mt, nt, kt), model, real)


# ---------------------------------------------------------------------------------- the work saved
def _attention_work(acfg, T: int, ctx: int, banded: bool) -> tuple[int, int, int]:
    """(GEMM steps, engine cycles, commands) of one BitNet-0.7B layer's attention GEMMs."""
    geo = acfg.gemm_geometry
    ag = attention_gemms(geo, 16, 16, 96, T, ctx, True, gemm_cost(acfg))
    shapes = ag.shapes() if banded else [ag.qk, ag.pv]
    steps = cycles = 0
    for mnk in shapes:
        s = gemm_shape(geo, *mnk)
        steps += s.steps
        cycles += gemm_fast(acfg, GemmCommand(s.m_tiles, s.n_tiles, s.k_tiles)).cycles
    return ag.n_groups * steps, ag.n_groups * cycles, ag.n_groups * len(shapes)


def test_prefill_attention_work_halves_for_a_long_prompt_and_decode_is_unchanged():
    acfg = _cfg("kv260.yaml")
    steps, cycles, cmds = _attention_work(acfg, 1024, 1024, True)
    full_steps, full_cycles, full_cmds = _attention_work(acfg, 1024, 1024, False)
    assert cmds == 16 * full_cmds  # 16 key tiles: one band each, for Q·Kᵀ and for P·V
    assert steps / full_steps == pytest.approx(136 / 256)  # (1 + … + 16) / 16² of the tiles
    assert 0.5 < cycles / full_cycles < 0.56
    # prompt 128: 2 key tiles, 3 of their 4 tiles are computed
    assert _attention_work(acfg, 128, 128, True)[0] / _attention_work(acfg, 128, 128, False)[0] == 0.75
    # decode: one command per group and GEMM, every key, as before
    assert _attention_work(acfg, 1, 1024, True) == _attention_work(acfg, 1, 1024, False)


# ---------------------------------------------------------------------------------- bit-exact results
torch = pytest.importorskip("torch", reason="[torch] PyTorch is not installed (the ml extra)")

from conftest import random_lm  # noqa: E402

from compiler import compile_model  # noqa: E402
from models.presets import bitnet_2b_layout  # noqa: E402
from sim.runtime import Runtime, execute  # noqa: E402

SMALL = bitnet_2b_layout(vocab=64, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, ffn=80, max_seq=96)


def _small_model(seed: int = 0):
    return random_lm(SMALL, seed)


def _gemm_ops(prog, what: str) -> list[str]:
    return [ln.split()[2] for ln in prog.listing.splitlines() if ln.split()[1:2] == ["GEMM"] and what in ln]


@pytest.mark.torch
@pytest.mark.parametrize(
    "config, overlap",
    [("gemm-4x4-w8.yaml", False), ("gemm-4x4-w8.yaml", True), ("gemm-2x8-w16.yaml", False)],
    ids=["4x4", "4x4-overlap", "2x8"],
)
def test_chunked_prefill_and_decode_bit_exact(config, overlap):
    """Prompt chunks of 37 and 21 tokens (no multiple of the 4- or 8-key tiles; the second at pos 37), then a
    decode step, on one persistent image: logits equal PyTorch's int mode."""
    m = _small_model()
    acfg = _cfg(config, system={"overlap": overlap})
    cm = compile_model(m, acfg)
    tok = torch.randint(0, SMALL.vocab, (59,), generator=torch.Generator().manual_seed(3))
    ref = m(tok[None], mode="int")[0]
    p0, p1, p2 = cm.program(37, 0), cm.program(21, 37), cm.program(1, 58)
    assert len(_gemm_ops(p0, ".qk0.")) > 2 and len(_gemm_ops(p1, ".qk0.")) > 1  # several bands
    if config == "gemm-4x4-w8.yaml":  # 16-deep K tiles: P·V bands too
        assert len(_gemm_ops(p0, ".pv0.")) > 1
    assert _gemm_ops(p2, "0.attn.qk0") == ["layers.0.attn.qk0"]  # decode: one command, as before
    rt = Runtime(p0)
    for prog, sl in ((p0, slice(0, 37)), (p1, slice(37, 58)), (p2, slice(58, 59))):
        logits, _ = rt.run(prog, tok[sl].numpy())
        assert torch.equal(logits, ref[sl]), (prog.meta["tokens"], prog.meta["pos"])


class _Block(torch.nn.Module):
    """A general module with one self-attention (RoPE-free, positions 0..rows-1)."""

    def __init__(self, causal: bool):
        super().__init__()
        from models.attention import SelfAttention

        self.ln = torch.nn.LayerNorm(16)
        self.attn = SelfAttention(16, 4, 2, causal=causal, bias=True)

    def forward(self, x):
        return x + self.attn(self.ln(x))


@pytest.mark.torch
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_general_module_attention_bit_exact(causal):
    from models.intref import int_reference

    torch.manual_seed(4)
    m = _Block(causal).eval()
    x = torch.randn(30, 16)
    cm = compile_model(m, _cfg("gemm-4x4-w8.yaml"), example_inputs=(x,))
    prog = cm.program()
    assert (len(_gemm_ops(prog, ".qk0.")) > 1) == causal  # bands only under the mask
    assert torch.equal(execute(prog, x)[0], int_reference(m, x))


# ---------------------------------------------------------------------------------- the RTL top level
@pytest.mark.torch
@pytest.mark.verilator
def test_top_multi_band_prefill_cycle_exact():
    """One decoder layer of the trained tiny model on configs/default.yaml (test_top.py's build), a 70-byte
    prompt: Q·Kᵀ in bands over 8-key tiles and P·V in two bands over 64-key tiles (keys 1..64, 65..70)."""
    from conftest import top_one_layer

    from compiler import load_model
    from sim.cosim import truncated_model

    acfg = _cfg("default.yaml")
    prompt = b"def f(x):\n    return [y * y for y in range(x) if y % 3]  # causal band"
    assert len(prompt) == 70
    prog = compile_model(
        truncated_model(load_model(str(ROOT / "models/checkpoints/tiny.pt")), 1), acfg
    ).program(len(prompt), 0)
    assert len(_gemm_ops(prog, ".qk0.")) == 9 and len(_gemm_ops(prog, ".pv0.")) == 2  # 70 keys: 9 × 8, 2 × 64
    rep = top_one_layer(acfg, prompt, 1)  # logits, tokens and every command's cycles asserted equal
    assert {k for step in rep.commands for k in step} == {"tlmm", "gemm", "host"}


def test_prefill_program_runs_the_bands():
    """The compiled prefill Program's attention GEMMs are the bands' (the estimate costs the Program's
    commands; the DSE's fast evaluator takes the same shapes from compiler.tiling: tests/test_dse.py)."""
    acfg = _cfg("kv260.yaml")
    prog = compile_model(_small_model(), acfg).program(90, 0, logits="last")
    geo = acfg.gemm_geometry
    ag = attention_gemms(geo, 4, 2, 12, 90, 90, True, gemm_cost(acfg))
    want = SMALL.n_layers * ag.n_groups * sum(gemm_shape(geo, *s).steps for s in ag.shapes())
    got = 0
    for ln in prog.listing.splitlines():
        f = ln.split()
        if f[1:2] == ["GEMM"] and (".qk" in f[2] or ".pv" in f[2]):
            tiles = dict(x.split("=") for x in f if x[:3] in ("MT=", "NT=", "KT="))
            got += int(tiles["MT"]) * int(tiles["NT"]) * int(tiles["KT"])
    assert got == want < SMALL.n_layers * ag.n_groups * sum(gemm_shape(geo, *s).steps for s in (ag.qk, ag.pv))
