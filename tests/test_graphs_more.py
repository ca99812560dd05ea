"""General graphs, continued (docs/models.md, "General graphs"): GELU and linear biases, attention
(models.attention.SelfAttention, bidirectional or causal), torch.ao dynamically quantized linears, the CLI's
``--module FILE.py:FACTORY``, and the one-line errors for what is not supported. Every Program is checked bit
for bit against ``models.intref.int_reference``; once (tiny dims) through the RTL top level."""

import functools
import json
import math
import warnings

import pytest
from conftest import program_cosim_cycles

pytest.importorskip("torch", reason="[torch] PyTorch is not installed (the ml extra)")
import torch  # noqa: E402
from torch import nn  # noqa: E402

from compiler import CompileError, compile_model  # noqa: E402
from hw.config import load_config  # noqa: E402
from models import hostops  # noqa: E402
from models.attention import SelfAttention, self_attention_int  # noqa: E402
from models.bitlinear import BitLinear  # noqa: E402
from models.intref import int_reference  # noqa: E402
from models.w8a8 import FixedInt8Linear, Int8Linear, ao_dynamic_params, convert_ao_dynamic  # noqa: E402
from sim.runtime import execute  # noqa: E402

pytestmark = pytest.mark.torch


@functools.cache
def _acfg(repo):
    return load_config(repo / "configs" / "default.yaml")


def _f32_ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in float32 units in the last place (monotone integer view of the bits)."""

    def key(t):
        i = t.contiguous().view(torch.int32).to(torch.int64)
        return torch.where(i < 0, -(i & 0x7FFFFFFF), i)

    return (key(a) - key(b)).abs()


# ---------------------------------------------------------------- GELU and biases
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_is_the_correctly_rounded_formula_and_close_to_torch(approximate):
    torch.manual_seed(0)
    x = torch.cat([torch.randn(3000) * 4, torch.linspace(-14, 14, 2001), torch.tensor([0.0, -0.0, 1e-30])])
    y = hostops.gelu(x, approximate)
    if approximate == "none":
        exact = [v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in x.double().tolist()]
    else:
        k = math.sqrt(2 / math.pi)
        exact = [v / (1 + math.exp(-2 * k * (v + 0.044715 * v**3))) for v in x.double().tolist()]
    assert int(_f32_ulps(y, torch.tensor(exact, dtype=torch.float32)).max()) <= 1
    # PyTorch's float32 F.gelu cancels in 1 + erf for negative x: close, not equal
    assert float((y - nn.functional.gelu(x, approximate=approximate)).abs().max()) < 3e-6
    # elementwise: the same value alone and inside a batch
    assert torch.equal(hostops.gelu(x[:7], approximate), y[:7])
    with pytest.raises(ValueError, match="approximate"):
        hostops.gelu(x, "sigmoid")


class BiasGelu(nn.Module):
    """Biases on every kind of linear (ternary per tensor, ternary per channel, int8) and both GELUs."""

    def __init__(self, d=24, hidden=40):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = BitLinear(d, hidden, bias=True)
        self.down = Int8Linear(hidden, d, bias=True)
        self.out = BitLinear(d, d, bias=True, per_channel=True)

    def forward(self, x):
        h = x + self.down(nn.functional.gelu(self.up(self.norm(x))))
        return self.out(nn.functional.gelu(h, approximate="tanh"))


def _biased(m, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 1.0)
    return m


def test_biases_and_gelu_are_bit_exact_and_folded_into_the_dequant(repo):
    torch.manual_seed(3)
    m = _biased(BiasGelu())
    x = torch.randn(5, 24)
    cm = compile_model(m, _acfg(repo), example_inputs=(x,))
    kinds = [op.kind for op in cm.graph.ops]
    assert "bias" not in kinds and "gelu" in kinds and "gelu_tanh+quant" in kinds
    biased = {
        op.attrs["bias"]
        for op in cm.graph.ops
        if op.attrs.get("bias") and not op.kind.startswith("layernorm")
    } | {e["bias"] for op in cm.graph.ops for e in op.attrs.get("dequant", ()) if "bias" in e}  # fused
    assert biased == {"up.bias", "down.bias", "out.bias"}
    ref = int_reference(m, x)
    y, _ = execute(cm.program(), x)
    assert torch.equal(y, ref)
    # the bias is applied: the int reference follows the float forward, and zeroing a bias changes it
    flt = m(x).detach()
    assert float((ref - flt).norm() / flt.norm()) < 0.05
    with torch.no_grad():
        m.out.bias.zero_()
    assert not torch.equal(int_reference(m, x), ref)
    # the bias is one float32 add after the dequantization
    plain = BitLinear(24, 40)
    with torch.no_grad():
        plain.weight.copy_(m.up.weight)
    assert torch.equal(m.up(x, mode="int"), plain(x, mode="int") + m.up.bias)


def test_int8_linear_from_linear_keeps_the_bias():
    f = nn.Linear(16, 8)
    m = Int8Linear.from_linear(f)
    assert torch.equal(m.bias, f.bias) and torch.equal(m.weight, f.weight)
    x = torch.randn(3, 16)
    assert torch.equal(m(x, mode="int"), Int8Linear.from_linear(f)(x, mode="int"))
    assert torch.equal(m(x, mode="float"), f(x))


# ---------------------------------------------------------------- attention
class Encoder(nn.Module):
    """Pre-norm encoder block: ``x + attn(ln1(x))``, ``x + fc2(gelu(fc1(ln2(x))))``."""

    def __init__(self, d=16, heads=2, kv_heads=None, hidden=24, causal=False, linear="ternary"):
        super().__init__()
        lin = BitLinear if linear == "ternary" else Int8Linear
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = SelfAttention(d, heads, kv_heads, causal=causal, linear=linear, bias=True)
        self.fc1, self.fc2 = lin(d, hidden, bias=True), lin(hidden, d, bias=True)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


@pytest.mark.parametrize(
    "kw",
    [{}, {"causal": True}, {"linear": "int8", "heads": 4, "kv_heads": 2}],
    ids=["bidir", "causal", "gqa8"],
)
def test_encoder_block_is_bit_exact(repo, kw):
    torch.manual_seed(4)
    m = _biased(Encoder(**kw))
    x = torch.randn(6, 16)
    cm = compile_model(m, _acfg(repo), example_inputs=(x,))
    att = [op for op in cm.graph.ops if op.kind == "attention"]
    assert len(att) == 1 and att[0].attrs["causal"] == kw.get("causal", False) and not att[0].attrs["rope"]
    ref = int_reference(m, x)
    y, stats = execute(cm.program(), x)
    assert torch.equal(y, ref) and stats.commands["gemm"] >= 2
    flt = m(x).detach()  # fake-quant projections, float attention
    assert float((ref - flt).norm() / flt.norm()) < 0.05
    # fewer rows from the same compiled module; more than the example's are refused in one line
    assert torch.equal(execute(cm.program(3), x[:3])[0], int_reference(m, x[:3]))
    with pytest.raises(CompileError, match=r"compiled for at most 6"):
        cm.program(7)


def test_bidirectional_attention_sees_later_rows():
    torch.manual_seed(5)
    q, k, v = torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8)
    bi = self_attention_int(q, k, v, 2, 2, False, 2.0)
    ca = self_attention_int(q, k, v, 2, 2, True, 2.0)
    assert torch.equal(bi[-1], ca[-1])  # the last row sees every row either way
    assert not torch.equal(bi[0], ca[0])  # the first row sees later rows only without the mask
    # row 0 of the causal attention is row 0 alone
    assert torch.equal(ca[0], self_attention_int(q[:1], k[:1], v[:1], 2, 2, True, 2.0)[0])


class _Sdpa(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = BitLinear(16, 16)

    def forward(self, x):
        q = self.q(x).view(-1, 2, 8).transpose(0, 1)
        out = nn.functional.scaled_dot_product_attention(q, q, q)  # SDPA_LINE
        return out.transpose(0, 1).reshape(-1, 16)


class _Mha(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.MultiheadAttention(16, 2)

    def forward(self, x):
        return self.a(x, x, x, need_weights=False)[0]  # MHA_LINE


class _HandAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = BitLinear(16, 16)

    def forward(self, x):
        q = self.q(x)
        return torch.softmax(q @ q.T, -1) @ q  # SOFTMAX_LINE


def _line(tag: str) -> int:
    return next(i for i, t in enumerate(open(__file__).read().splitlines(), 1) if t.endswith(f"# {tag}"))


@pytest.mark.parametrize(
    "cls, tag, what",
    [
        (_Sdpa, "SDPA_LINE", "op aten::scaled_dot_product_attention"),
        (_Mha, "MHA_LINE", "module nn.MultiheadAttention"),
        (_HandAttention, "SOFTMAX_LINE", "op aten::softmax"),
    ],
)
def test_unsupported_attention_is_one_line_with_op_line_and_alternative(repo, cls, tag, what):
    with pytest.raises(CompileError) as e:
        compile_model(cls(), _acfg(repo), example_inputs=torch.randn(4, 16))
    msg = str(e.value)
    assert "\n" not in msg and f"unsupported {what}" in msg, msg
    assert f"test_graphs_more.py:{_line(tag)}" in msg, msg
    assert "models.attention.SelfAttention" in msg and "supported: models.bitlinear.BitLinear" in msg


def test_self_attention_refuses_what_it_does_not_support(repo):
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        SelfAttention(16, 4, 3)
    with pytest.raises(ValueError, match="linear="):
        SelfAttention(16, 2, linear="fp8")
    m = nn.Sequential(SelfAttention(16, 2))
    with pytest.raises(CompileError, match=r"one sequence \(T, features\)"):
        compile_model(m, _acfg(repo), example_inputs=torch.randn(2, 3, 16))


# ---------------------------------------------------------------- torch.ao dynamic quantization
def _ao(per_channel: bool):
    torch.manual_seed(6)
    mlp = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16))
    spec = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig} if per_channel else {nn.Linear}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlp, torch.ao.quantization.quantize_dynamic(mlp, spec, dtype=torch.qint8)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_ao_dynamic_linear_runs_on_the_gemm_with_torchs_weight_codes(repo, per_channel):
    mlp, q = _ao(per_channel)
    x = torch.randn(5, 32)
    codes, scales, bias = ao_dynamic_params(q[0])
    w = q[0].weight()
    assert torch.equal(codes, w.int_repr()) and torch.equal(bias, q[0].bias())
    assert (len(set(scales.tolist())) > 1) == per_channel
    conv = convert_ao_dynamic(q)
    assert isinstance(conv[0], FixedInt8Linear) and type(q[0]).__name__ != "FixedInt8Linear"  # q untouched
    cm = compile_model(q, _acfg(repo), example_inputs=(x,))
    assert [op.engine for op in cm.graph.ops if op.kind == "int8linear"] == ["gemm", "gemm"]
    ref = int_reference(q, x)
    y, stats = execute(cm.program(), x)
    assert torch.equal(y, ref) and torch.equal(ref, int_reference(conv, x)) and stats.commands["gemm"] >= 2
    # torch's own output (per-tensor uint8 activations) and ours (int8 per row) agree within quantization error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = q(x)
    flt = mlp(x).detach()
    assert float((y - theirs).norm() / theirs.norm()) < 0.05
    assert float((y - flt).norm() / flt.norm()) < 0.05


class _AoBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 16)

    def forward(self, x):
        return torch.relu(self.fc(x))  # AO_LINE


def test_ao_modules_that_cannot_match_are_refused(repo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q16 = torch.ao.quantization.quantize_dynamic(_AoBlock(), {nn.Linear}, dtype=torch.float16)
        static = torch.ao.nn.quantized.Linear(32, 16)
    with pytest.raises(CompileError) as e:
        compile_model(q16, _acfg(repo), example_inputs=torch.randn(2, 32))
    msg = str(e.value)
    assert msg.startswith(f"fc (tests/test_graphs_more.py:{_line('AO_LINE')}): ") and "\n" not in msg, msg
    assert "dynamic.Linear with torch.float16 weights is not supported" in msg and "qint8" in msg
    with pytest.raises(
        CompileError, match=r"^0: unsupported module torch\.ao\.nn\.quantized.*Linear; supported"
    ):
        compile_model(nn.Sequential(static), _acfg(repo), example_inputs=torch.randn(2, 32))


# ---------------------------------------------------------------- the CLI: --module FILE.py:FACTORY
_MODULE_FILE = """
import torch
from torch import nn
from models.bitlinear import BitLinear
from models.w8a8 import Int8Linear

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(16), BitLinear(16, 24, bias=True), Int8Linear(24, 16)

    def forward(self, x):
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))

def build():
    torch.manual_seed(0)
    return Tiny()

def not_a_module():
    return 3
"""


def _cli(*args):
    from tritium.cli import main

    return main([str(a) for a in args])


def test_cli_compiles_and_estimates_a_module_file(tmp_path, capsys):
    f = tmp_path / "tiny_model.py"
    f.write_text(_MODULE_FILE)
    spec = f"{f}:build"
    assert _cli("compile", "--module", spec, "--input-shape", "3,16", "-o", tmp_path / "p", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 3 and out["tlmm"] > 0 and out["gemm"] > 0 and out["input_shape"] == [3, 16]
    x = torch.randn(3, 16)
    import numpy as np

    np.save(tmp_path / "x.npy", x.numpy())
    assert _cli("run", tmp_path / "p", "--input", tmp_path / "x.npy", "--logits", tmp_path / "y.npy") == 0
    capsys.readouterr()
    from compiler import load_module

    assert np.array_equal(np.load(tmp_path / "y.npy"), int_reference(load_module(spec), x).numpy())
    assert _cli("estimate", "--module", spec, "--input-shape", "3,16", "--json") == 0
    est = json.loads(capsys.readouterr().out)
    assert est["rows"] == 3 and est["modeled"] and est["step_s"] > 0 and est["engine_cycles"]["tlmm"] > 0
    assert _cli("estimate", "--module", spec, "--input-shape", "3,16") == 0
    assert "rows/s" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--module", "{f}:nope", "--input-shape", "2,16"], "has no function or class 'nope'"),
        (["--module", "{f}:not_a_module", "--input-shape", "2,16"], "returned int, not a torch.nn.Module"),
        (["--module", "{f}", "--input-shape", "2,16"], "expected FILE.py:FACTORY"),
        (["--module", "{d}/missing.py:build", "--input-shape", "2,16"], "is not a Python file"),
        (["--module", "{f}:build"], "--input-shape ROWS,FEATURES is required"),
        (["--module", "{f}:build", "--input-shape", "2,a"], "expected positive integers"),
        (["--module", "{f}:build", "--input-shape", "2,16", "--model", "tiny"], "give one"),
        (
            ["--module", "{f}:build", "--input-shape", "2,16", "--prompt", "4"],
            "--prompt: a language-model option",
        ),
        (["--module", "{f}:build", "--input-shape", "2,12"], "normalized_shape (16,) on an input of 12"),
        (["--input-shape", "2,16", "--model", "tiny"], "--input-shape: only with --module"),
    ],
)
def test_cli_module_errors_are_one_line_exit_2(tmp_path, capsys, args, msg):
    f = tmp_path / "tiny_model.py"
    f.write_text(_MODULE_FILE)
    argv = ["estimate"] + [a.format(f=f, d=tmp_path) for a in args]
    assert _cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and msg in err, err


# ---------------------------------------------------------------- through the RTL (one Verilator test)
@pytest.mark.verilator
def test_encoder_block_through_the_top_level(repo):
    """A tiny encoder block (bidirectional attention, ternary projections with biases, GELU MLP) through the
    RTL top level: output bit for bit equal to the executor and the int reference, every command's cycles
    equal to sim/top_model.py's."""
    torch.manual_seed(7)
    m = _biased(Encoder(d=16, heads=2, hidden=16))
    rep, r, mc, _ = program_cosim_cycles(m, torch.randn(3, 16), _acfg(repo))
    assert r == mc and rep.ok
