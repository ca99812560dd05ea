"""General graphs (docs/models.md, "General graphs"): any module built from the supported pieces compiles
with ``compile_model(module, acfg, example_inputs=...)`` — ternary linears on the TLMM, W8A8 linears on the
GEMM engine, norms and activations on the host — and its Programs compute ``models.intref.int_reference``
bit for bit: on the executor (fast) and, once, through the RTL top level (Verilator)."""

import functools

import numpy as np
import pytest
from conftest import program_cosim_cycles

pytest.importorskip("torch", reason="[torch] PyTorch is not installed (the ml extra)")
import torch  # noqa: E402
from torch import nn  # noqa: E402

import compiler.lower as lower  # noqa: E402
from compiler import CompileError, compile_model  # noqa: E402
from compiler.tiling import lm_head_gemms  # noqa: E402
from hw.config import load_config  # noqa: E402
from hw.program import Program  # noqa: E402
from models.bitlinear import BitLinear, ternary_weight  # noqa: E402
from models.intref import int_reference  # noqa: E402
from models.lm import RMSNorm  # noqa: E402
from models.lm_head import lm_head_int, quantize_lm_head  # noqa: E402
from models.w8a8 import Int8Linear  # noqa: E402
from sim.runtime import execute  # noqa: E402


class TernaryMLP(nn.Module):
    """Two BitLinear blocks: norm → up → ReLU² → down, residual (our RMSNorm and torch's)."""

    D = 24

    def __init__(self, d=24, hidden=40):
        super().__init__()
        self.n1, self.n2 = RMSNorm(d, 1e-5), nn.RMSNorm(d, eps=1e-6)
        self.up1, self.down1 = BitLinear(d, hidden), BitLinear(hidden, d)
        self.up2, self.down2 = BitLinear(d, hidden), BitLinear(hidden, d)

    def forward(self, x):
        x = x + self.down1(torch.relu(self.up1(self.n1(x))).square())
        return x + self.down2(torch.relu(self.up2(self.n2(x))) ** 2)


class W8A8Model(nn.Module):
    """LayerNorm → Int8Linear → SiLU → Int8Linear, residual, and a gated product."""

    D = 24

    def __init__(self, d=24, hidden=40):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1, self.gate, self.fc2 = Int8Linear(d, hidden), Int8Linear(d, hidden), Int8Linear(hidden, d)

    def forward(self, x):
        h = self.norm(x)
        return x + self.fc2(nn.functional.silu(self.fc1(h)) * self.gate(h))


class Mixed(nn.Module):
    """Both engines in one graph, tiny: BitLinear (TLMM, per-channel scales) → ReLU → Int8Linear (GEMM),
    residual."""

    D = 16

    def __init__(self, d=16, hidden=24):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up, self.down = BitLinear(d, hidden, per_channel=True), Int8Linear(hidden, d)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.norm(x))))


@functools.cache
def _acfg(repo):
    return load_config(repo / "configs" / "default.yaml")


def _module(cls, seed=0):
    torch.manual_seed(seed)
    m = cls()
    for p in m.parameters():  # non-trivial norm weights and biases too
        with torch.no_grad():
            p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.mark.torch
@pytest.mark.parametrize("cls", [TernaryMLP, W8A8Model, Mixed])
def test_program_equals_the_int_reference(repo, cls):
    m = _module(cls)
    x = torch.randn(1, 5, m.D)  # (batch 1, rows, d)
    cm = compile_model(m, _acfg(repo), example_inputs=(x,))
    kinds = {op.engine for op in cm.graph.ops}
    assert ("tlmm" in kinds) == (cls is not W8A8Model) and ("gemm" in kinds) == (cls is not TernaryMLP)
    ref = int_reference(m, x)[0]
    y, stats = execute(cm.program(), x)
    assert torch.equal(y, ref)
    assert stats.commands["tlmm" if cls is not W8A8Model else "gemm"] > 0
    # another row count from the same compiled module (rows in chunks of tlmm.tokens), fresh input
    x2 = torch.randn(3, x.shape[-1]) * 3
    assert torch.equal(execute(cm.program(3), x2)[0], int_reference(m, x2))
    # the reference is not trivially the float model: quantization changes bits
    assert not torch.equal(ref, m(x)[0].detach())


@pytest.mark.torch
def test_int8_linear_is_the_lm_heads_definition():
    """Int8Linear's int mode is the acc_int8 LM head's W8A8 definition on the same weights."""
    torch.manual_seed(1)
    lin = Int8Linear(32, 20)
    x = torch.randn(4, 32)
    assert torch.equal(lin(x, mode="int"), lm_head_int(x, *quantize_lm_head(lin.weight))[2])
    f = nn.Linear(32, 20, bias=False)
    assert torch.equal(Int8Linear.from_linear(f).weight, f.weight)


@pytest.mark.torch
def test_per_channel_bitlinear(repo):
    """BitLinear(per_channel=True): one absmean scale per output row (the per-tensor rule on each row); the
    Program's dequant reads the row scales, bit-exact; per-tensor scales give other bits."""
    torch.manual_seed(2)
    lin = BitLinear(16, 12, per_channel=True)
    with torch.no_grad():
        lin.weight.mul_(torch.linspace(0.05, 4.0, 12)[:, None])  # rows of very different magnitude
    wq, sw = lin.refresh()
    assert sw.shape == (12,) and set(wq.unique().tolist()) <= {-1, 0, 1}
    for r in (0, 11):
        assert torch.equal(wq[r], ternary_weight(lin.weight[r : r + 1])[0][0])
        assert float(sw[r]) == ternary_weight(lin.weight[r : r + 1])[1]
    x = torch.randn(3, 16)
    seq = nn.Sequential(lin)
    ref = int_reference(seq, x)
    assert torch.equal(ref, lin(x, mode="int"))
    prog = compile_model(seq, _acfg(repo), example_inputs=x).program()
    assert torch.equal(execute(prog, x)[0], ref)
    lin.per_channel, lin.weight_q = False, None
    assert not torch.equal(int_reference(seq, x), ref)


@pytest.mark.torch
def test_int8_linear_split_over_several_gemm_commands(repo, monkeypatch):
    """Column slices of compiler.tiling.lm_head_gemms (forced small) stay exact for a W8A8 linear."""
    monkeypatch.setattr(lower, "lm_head_gemms", functools.partial(lm_head_gemms, max_n_tiles=1))
    m = _module(W8A8Model)
    x = torch.randn(3, 24)
    prog = compile_model(m, _acfg(repo), example_inputs=x).program()
    assert prog.listing.count("GEMM  fc1.gemm") == 5  # 40 columns, 8-column tiles, one per command
    assert torch.equal(execute(prog, x)[0], int_reference(m, x))


@pytest.mark.torch
def test_program_saves_loads_and_runs_from_the_cli(repo, tmp_path):
    from conftest import cli_json

    m = _module(Mixed)
    x = torch.randn(2, 16)
    prog = compile_model(m, _acfg(repo), example_inputs=x).program()
    prog.save(tmp_path / "p")
    loaded = Program.load(tmp_path / "p")
    assert loaded.meta["input"] == "input"
    assert torch.equal(execute(loaded, x)[0], int_reference(m, x))
    np.save(tmp_path / "x.npy", x.numpy())
    out = cli_json("run", tmp_path / "p", "--input", tmp_path / "x.npy", "--logits", tmp_path / "y.npy")
    assert out["rows"] == 2 and out["commands"]["gemm"] > 0 and out["commands"]["tlmm"] > 0
    ref = int_reference(m, x).numpy()
    assert np.array_equal(np.load(tmp_path / "y.npy"), ref)
    # a module's output is a tensor, not logits: no next token, its value range instead
    assert out["output"]["next_token"] is None and out["output"]["argmax"] == []
    assert (out["output"]["min"], out["output"]["max"]) == (float(ref.min()), float(ref.max()))
    from conftest import run_cli

    text = run_cli("run", tmp_path / "p", "--input", tmp_path / "x.npy").stdout
    assert "next token" not in text and f"values in [{ref.min():.6g}, {ref.max():.6g}]" in text


class _Sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = BitLinear(16, 16)

    def forward(self, x):
        return torch.sigmoid(self.fc(x))  # SIGMOID_LINE


class _FloatLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16, bias=False)

    def forward(self, x):
        return self.fc(x)


class _HandQuant(nn.Module):
    def forward(self, x):
        return torch.round(x * (127 / x.abs().amax(-1, keepdim=True)))


@pytest.mark.torch
def test_unsupported_op_is_one_line_naming_op_line_and_supported_list(repo):
    line = next(
        i for i, t in enumerate(open(__file__).read().splitlines(), 1) if t.endswith("# SIGMOID_LINE")
    )
    with pytest.raises(CompileError) as e:
        compile_model(_Sigmoid(), _acfg(repo), example_inputs=torch.randn(2, 16))
    msg = str(e.value)
    assert "\n" not in msg and "aten::sigmoid" in msg and f"test_graphs.py:{line}" in msg, msg
    assert "supported: models.bitlinear.BitLinear" in msg and "Int8Linear" in msg
    with pytest.raises(
        CompileError, match=r"^fc \(.*aten::linear; a float linear layer.*Int8Linear\.from_linear"
    ):
        compile_model(_FloatLinear(), _acfg(repo), example_inputs=torch.randn(2, 16))
    # a hand-written W8A8 quantizer: its first unsupported op, with the hint
    with pytest.raises(
        CompileError, match=r"unsupported op aten::abs; a hand-written quantizer\?.*Int8Linear"
    ):
        compile_model(_HandQuant(), _acfg(repo), example_inputs=torch.randn(2, 16))
    # a general module without example inputs: told how to call the compiler (not an AttributeError)
    with pytest.raises(CompileError, match=r"TernaryMLP is not a models\.lm\.TernaryLM.*example_inputs"):
        compile_model(TernaryMLP(), _acfg(repo))


@pytest.mark.torch
@pytest.mark.verilator
def test_top_level_runs_tlmm_and_gemm_linears(repo):
    """One Program with a ternary (TLMM) and a W8A8 (GEMM) linear through the RTL top level: the output bit
    for bit equal to the executor and to the PyTorch int reference, every command's cycles equal."""
    m = _module(Mixed)
    rep, r, mc, kinds = program_cosim_cycles(m, torch.randn(3, 16), _acfg(repo))
    bad = [(i, k, a, b) for i, (k, a, b) in enumerate(zip(kinds, r, mc, strict=True)) if a != b]
    assert not bad, f"commands with different cycles (index, kind, RTL, model): {bad[:5]}"
    assert rep.ok
