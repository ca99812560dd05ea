"""Bring your own model: a Hugging Face BitNet folder → Program → run, check, estimate (runs in < 1 min on CPU).

Builds a small synthetic folder in the layout of microsoft/bitnet-b1.58-2B-4T (config.json + model.safetensors
with packed ternary weights and per-tensor scales; random weights, nothing trained), then:

1. loads it (``compiler.load_model``: what ``tritium compile FOLDER`` and ``tritium estimate --model FOLDER``
   use),
2. compiles it for an accelerator config and executes the prefill Program on the numba cycle models
   (``sim.runtime.Runtime``; ``sim.runtime.execute`` runs a single Program), checking the logits bit for bit against the PyTorch integer reference,
3. decodes a few tokens step by step with ``sim.runtime.Runtime`` (the KV cache stays in its memory image),
4. prints the modeled whole-model estimate (``tritium.estimate.estimate``).

Run from the repository root::

    python examples/byo_hf_bitnet.py [--folder DIR] [--config configs/default.yaml]

For a real checkpoint, point ``compiler.load_model`` (or the CLI) at its folder instead of step 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402

from compiler import compile_model, load_model  # noqa: E402
from hw.config import load_config  # noqa: E402
from models.hf import write_synthetic_hf  # noqa: E402
from models.lm import generate  # noqa: E402
from models.presets import bitnet_2b_layout  # noqa: E402
from sim.runtime import Runtime  # noqa: E402
from tritium.estimate import estimate  # noqa: E402

# The 2B-4T layout in small: ReLU², sub-norms, grouped-query attention, tied embeddings, RoPE θ = 500000.
SHAPE = bitnet_2b_layout(
    vocab=256, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn=256, rope_theta=500000.0, max_seq=128
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--folder", default=None, help="where to write the synthetic folder (default: a temp dir)"
    )
    ap.add_argument("--config", default="configs/default.yaml", help="accelerator config YAML")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or Path(tmp) / "bitnet-synthetic")

        # 0. a Hugging Face folder (packed ternary weights, weight_scale multiplied: linear_class autobitlinear)
        write_synthetic_hf(folder, SHAPE, layout="packed", seed=0)
        print(f"wrote {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")

        # 1. load: any MODEL argument works here (preset name, HF folder, .safetensors or .pt checkpoint)
        model = load_model(str(folder))
        print(f"loaded: {model.config}")

        # 2. compile, execute the prefill, compare with the integer reference
        acfg = load_config(args.config)
        cm = compile_model(model, acfg)
        prompt = torch.tensor([12, 200, 7, 33, 91])
        prog = cm.program(len(prompt), 0)
        rt = Runtime(prog)  # keeps weights and the KV cache in one memory image
        logits, stats = rt.run(prog, prompt.numpy())
        with torch.no_grad():
            ref = model(prompt[None], mode="int")[0]
        print(
            f"prefill Program: {len(prog.commands())} commands, engine cycles {dict(stats.cycles)}; "
            f"logits bit-identical to the int reference: {torch.equal(logits, ref)}"
        )
        if not torch.equal(logits, ref):
            return 1

        # 3. greedy decoding through step Programs on the same Runtime (its image holds the prefill's KV cache)
        toks = prompt.tolist() + [int(logits[-1].argmax())]
        for _ in range(3):
            step_logits, _ = rt.run(cm.program(1, len(toks) - 1, logits="last"), [toks[-1]])
            toks.append(int(step_logits[-1].argmax()))
        same = toks == generate(model, prompt, 4, mode="int").tolist()
        print(f"greedy tokens {toks[len(prompt) :]} (PyTorch int mode agrees: {same})")

        # 4. modeled whole-model estimate (prefill of 32 tokens, one decode step at context 128)
        e = estimate(str(folder), acfg, prompt=32, context=128)
        print(
            f"estimate on {e['config']} at {e['clock_mhz']} MHz (modeled): TTFT {e['ttft_s'] * 1e3:.2f} ms, "
            f"decode {e['decode_tokens_per_s']:.1f} tokens/s, {e['j_per_token'] * 1e3:.3f} mJ/token, "
            f"bound by {e['bound']['decode']}"
        )
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
