"""compiler.passes.fuse_dequant (docs/design.md, "Compiler"): a TLMM result's dequantization folded into the one
host op that reads it (``dequant+<kind>``, hw.program.DEQUANT_PREFIX). It fires on the tiny model and on
BitNet-0.7B; a dequant read by two ops or by the graph output stays; the executor's logits are bit-identical to
the Program compiled without the pass and to PyTorch's int mode; the host cost drops by exactly the dequant ops'
bytes (same flops); the Program format checks the new attributes; and once through the RTL top level."""

import copy
import dataclasses
import functools

import pytest

pytest.importorskip("torch", reason="[torch] PyTorch is not installed (the ml extra)")
import torch  # noqa: E402
from conftest import config_variant  # noqa: E402
from torch import nn  # noqa: E402

from compiler import compile_model, load_model, passes  # noqa: E402
from compiler.hostcost import host_cost, host_cycles  # noqa: E402
from hw.config import load_config  # noqa: E402
from hw.program import DEQUANT_PREFIX, Program, ProgramError  # noqa: E402
from models.bitlinear import BitLinear  # noqa: E402
from models.intref import int_reference  # noqa: E402
from models.w8a8 import Int8Linear  # noqa: E402
from sim.runtime import Runtime, execute  # noqa: E402

pytestmark = pytest.mark.torch
PROMPT = [3, 17, 40, 8, 61]


def _unfused(monkeypatch):
    """compile_model without fuse_dequant (the pipeline's other passes unchanged)."""
    run = passes.run_pipeline
    monkeypatch.setattr(passes, "run_pipeline", lambda g, state: run(g, state, skip=("fuse_dequant",)))


@functools.cache
def _tiny(repo):
    return load_model(str(repo / "models" / "checkpoints" / "tiny.pt"))


def _overlap(acfg):
    return dataclasses.replace(acfg, system=dataclasses.replace(acfg.system, overlap=True))


def _kinds(prog) -> list[str]:
    return [h.kind for h in prog.host_ops]


def _entries(prog) -> list[dict]:
    return [e for h in prog.host_ops for e in h.attrs.get("dequant", ())]


def _host_totals(prog) -> tuple[float, float]:
    costs = [host_cost(prog.tensors, h) for h in prog.host_ops]
    return sum(f for f, _ in costs), sum(b for _, b in costs)


# ---------------------------------------------------------------- the pass fires
def test_fires_on_the_tiny_model(repo):
    m = _tiny(repo)
    cm = compile_model(m, load_config(repo / "configs" / "default.yaml"))
    assert "dequant" not in [op.kind for op in cm.graph.ops]
    L = m.config.n_layers
    prog = cm.program(len(PROMPT), 0)
    kinds = _kinds(prog)
    assert "dequant" not in kinds
    assert kinds.count("dequant+attn_prep") == L  # q, k, v
    assert kinds.count("dequant+add") == 2 * L  # o_proj and down_proj into the residual adds
    gated = [k for k in kinds if k.startswith("dequant+relu2") or k.startswith("dequant+swiglu")]
    assert len(gated) == L  # gate and up
    assert len(_entries(prog)) == 7 * L
    prep = next(h for h in prog.host_ops if h.kind == "dequant+attn_prep")
    assert len(prep.attrs["dequant"]) == 3 and all(
        e["input"] in prep.inputs[:3] for e in prep.attrs["dequant"]
    )
    # the per-token scales are inputs (read ranges, buffer lifetimes), once even when q/k/v share them
    assert prep.inputs.count(prep.attrs["dequant"][0]["sx"]) == 1
    for h in prog.host_ops:
        assert h.attrs["cycles"] == host_cycles(prog.acfg, prog.tensors, h)


def test_fires_on_bitnet_07b(repo):
    # overlap off: whole host ops (with overlap a prefill's row-wise ops run in row chunks: compiler/chunks.py)
    acfg = config_variant(load_config(repo / "configs" / "kv260.yaml"), system={"overlap": False})
    m = load_model("bitnet-0.7b")
    cm = compile_model(m, acfg)
    L = m.config.n_layers
    assert not any(op.kind == "dequant" for op in cm.graph.ops)
    prog = cm.program(16, 0, logits="last")
    kinds = _kinds(prog)
    assert "dequant" not in kinds and len(_entries(prog)) == 7 * L
    assert kinds.count("dequant+attn_prep") == L and kinds.count("dequant+add") == 2 * L
    assert sum(k.startswith("dequant+swiglu") for k in kinds) == L


# ---------------------------------------------------------------- numerics and cost
@pytest.mark.parametrize("overlap", [False, True])
def test_tiny_logits_bit_identical_and_host_cost_lower_by_the_dequant_bytes(repo, monkeypatch, overlap):
    """Prefill and two decode steps: the fused Programs' logits equal the unfused Programs' and PyTorch's int
    mode bit for bit; per step the host bytes drop by exactly the dequant ops' bytes, flops unchanged."""
    acfg = load_config(repo / "configs" / "default.yaml")
    acfg = _overlap(acfg) if overlap else acfg
    m = _tiny(repo)
    fused = compile_model(m, acfg)
    with monkeypatch.context() as mp:
        _unfused(mp)
        plain = compile_model(m, acfg)
    assert [op.kind for op in plain.graph.ops].count("dequant") == 7 * m.config.n_layers
    toks = list(PROMPT)
    rf, rp = None, None
    for step in range(3):
        T, pos = (len(toks), 0) if step == 0 else (1, len(toks) - 1)
        pf, pp = fused.program(T, pos), plain.program(T, pos)
        deq = [h for h in pp.host_ops if h.kind == "dequant"]
        assert len(deq) == 7 * m.config.n_layers and "dequant" not in _kinds(pf)
        (ff, bf), (fp, bp) = _host_totals(pf), _host_totals(pp)
        assert ff == fp  # the dequant's 2 flops per element moved into its reader
        assert bp - bf == sum(host_cost(pp.tensors, h)[1] for h in deq) > 0
        if rf is None:
            rf, rp = Runtime(pf), Runtime(pp)
        feed = toks if step == 0 else toks[-1:]
        lf, _ = rf.run(pf, feed)
        lp, _ = rp.run(pp, feed)
        ref = m(torch.tensor(toks)[None], mode="int")[0]
        assert torch.equal(lf, lp)
        assert torch.equal(lf[-T:], ref[-T:])
        toks.append(int(lf[-1].argmax()))


class Readers(nn.Module):
    """Dequantized values with one reader (fused into gelu+quant, into the next BitLinear's quant, into an
    Int8Linear's quantization), with two readers (relu and mul), and as the graph output."""

    def __init__(self, d=16, h=24):
        super().__init__()
        self.a = BitLinear(d, h)  # read by relu and by mul: stays a dequant
        self.c = BitLinear(
            h, d, bias=True, per_channel=True
        )  # read by gelu(+quant): fused with bias, row scales
        self.d = BitLinear(d, h)  # read by e's quantization: dequant+quant
        self.e = BitLinear(h, d)  # read by the Int8Linear's quantization: dequant+int8_quant
        self.i8 = Int8Linear(d, d)
        self.b = BitLinear(d, d)  # the graph output: stays a dequant

    def forward(self, x):
        y = self.a(x)
        z = self.c(torch.relu(y) * y)
        return self.b(self.i8(self.e(self.d(nn.functional.gelu(z)))))


def test_general_graph_keeps_shared_and_output_dequants(repo, monkeypatch, tmp_path):
    torch.manual_seed(4)
    m = Readers().eval()
    with torch.no_grad():
        m.c.bias.normal_(0.0, 1.0)
    x = torch.randn(5, 16)
    acfg = load_config(repo / "configs" / "default.yaml")
    cm = compile_model(m, acfg, example_inputs=(x,))
    g = cm.graph
    left = [op for op in g.ops if op.kind == "dequant"]
    assert len(left) == 2 and left[-1].outputs[0] == g.output
    assert len(g.consumers(left[0].outputs[0])) == 2
    prog = cm.program()
    kinds = _kinds(prog)
    assert kinds.count("dequant") == 2
    assert {"dequant+gelu+quant", "dequant+quant", "dequant+int8_quant"} <= set(kinds)
    gel = next(h for h in prog.host_ops if h.kind == "dequant+gelu+quant")
    (e,) = gel.attrs["dequant"]
    assert e["bias"] == "c.bias" and "scale_rows" in e and "scale" not in e
    ref = int_reference(m, x)
    y, _ = execute(prog, x)
    assert torch.equal(y, ref)
    with monkeypatch.context() as mp:
        _unfused(mp)
        pp = compile_model(m, acfg, example_inputs=(x,)).program()
    assert _kinds(pp).count("dequant") == 5
    assert torch.equal(execute(pp, x)[0], y)
    (ff, bf), (fp, bp) = _host_totals(prog), _host_totals(pp)
    assert ff == fp and bp - bf == sum(
        host_cost(pp.tensors, h)[1] for h in pp.host_ops if h.kind == "dequant"
    ) - sum(host_cost(prog.tensors, h)[1] for h in prog.host_ops if h.kind == "dequant")
    # saved and loaded (JSON scales and entries), the Program runs the same
    prog.save(tmp_path / "p")
    assert torch.equal(execute(Program.load(tmp_path / "p"), x)[0], y)


# ---------------------------------------------------------------- the Program format
def test_program_checks_the_dequant_entries(repo):
    prog = compile_model(_tiny(repo), load_config(repo / "configs" / "default.yaml")).program(2, 0)
    i = next(i for i, h in enumerate(prog.host_ops) if h.kind == "dequant+add")
    j = next(i for i, h in enumerate(prog.host_ops) if h.kind == "rmsnorm+quant")

    def broken(fn, i=i):
        p = copy.deepcopy(prog)
        fn(p.host_ops[i])
        return p

    cases = {
        "no scale": (lambda h: h.attrs["dequant"][0].pop("scale"), "expected input, sx, scale"),
        "two scales": (lambda h: h.attrs["dequant"][0].update(scale_rows="rope_cos"), "expected input, sx"),
        "bad scale": (lambda h: h.attrs["dequant"][0].update(scale=-1.0), "positive number"),
        "not an input": (lambda h: h.attrs["dequant"][0].update(input="embedding"), "int32 inputs"),
        "sx not an input": (lambda h: h.inputs.pop(), "float32 inputs"),
        "no entries": (lambda h: h.attrs.update(dequant=[]), "non-empty list"),
        "bias not host": (lambda h: h.attrs["dequant"][0].update(bias="embedding"), "not a host tensor"),
    }
    for name, (fn, msg) in cases.items():
        with pytest.raises(ProgramError, match=msg):
            broken(fn).validate()
            pytest.fail(f"{name}: accepted")
    plain = broken(lambda h: setattr(h, "kind", "add"))
    with pytest.raises(ProgramError, match="only dequant\\+<kind> ops"):
        plain.validate()
    p = broken(lambda h: h.attrs.update(dequant=[dict(prog.host_ops[i].attrs["dequant"][0])]), i=j)
    p.host_ops[j].kind = DEQUANT_PREFIX + "rmsnorm+quant"
    with pytest.raises(ProgramError, match="int32 inputs"):
        p.validate()
    prog.validate()  # the untouched Program


def test_skip_only_optional_passes():
    with pytest.raises(ValueError, match="fuse_dequant"):
        passes.run_pipeline(None, {}, skip=("check_weights",))
    assert "fuse_dequant" in passes.PIPELINE and "fuse_dequant" in passes.OPTIONAL


# ---------------------------------------------------------------- the RTL top level
@pytest.mark.verilator
def test_top_level_runs_fused_programs_cycle_exact(repo):
    """One decoder layer of the tiny model through the RTL top level with overlap (SYNCs from the fused ops'
    read ranges: the int32 parts and the scales) on configs/small-g2-half.yaml — the build
    tests/test_overlap.py uses: logits bit-exact against PyTorch and the model, every command's cycles and
    each step's cycles RTL = model."""
    from conftest import top_one_layer

    from sim.cosim import truncated_model

    acfg = _overlap(load_config(repo / "configs" / "small-g2-half.yaml"))
    prog = compile_model(truncated_model(_tiny(repo), 1), acfg).program(5, 0)
    assert "dequant" not in _kinds(prog) and any(k.startswith(DEQUANT_PREFIX) for k in _kinds(prog))
    rep = top_one_layer(acfg, b"x = 1", 2)
    assert rep.rtl_step_cycles == rep.model_step_cycles
