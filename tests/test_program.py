"""Program folders: the content hash, atomic save, and a battery of damaged folders that must all be refused
with a one-line ProgramError; ``tritium run``; the compiler's and the runtime's tlmm.act_bits checks."""

import dataclasses
import json
import os
import shutil
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, cli_json, random_lm, run_cli

import hw.program as hp
from compiler import CompileError, compile_model
from hw.config import load_config
from hw.isa import GemmCommand, HostCommand, TlmmCommand, decode_program, encode_program
from hw.program import DEQUANT_PREFIX, HOST_OP_KINDS, Program, ProgramError
from models.presets import bitnet_2b_layout
from sim.runtime import _Host, check_act_range, execute

REPO = Path(__file__).resolve().parent.parent
TINY = bitnet_2b_layout(
    vocab=32, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn=48, max_seq=16, tie_embeddings=False
)
TOKENS = np.array([3, 1, 4])


def tiny_model(seed: int = 0):
    return random_lm(TINY, seed)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(compiled model, its 3-token step Program, a saved copy, the reference logits)."""
    m = tiny_model()
    cm = compile_model(m, load_config(REPO / "configs" / "default.yaml"))
    prog = cm.program(len(TOKENS), 0)
    good = prog.save(tmp_path_factory.mktemp("good") / "p")
    ref = execute(prog, TOKENS)[0]
    assert torch.equal(ref, m(torch.from_numpy(TOKENS)[None], mode="int")[0])
    return cm, prog, good, ref


# ------------------------------------------------------------------ helpers that damage a copy
def _doc(d: Path) -> dict:
    return json.loads((d / "program.json").read_text())


def _put_doc(d: Path, doc: dict) -> None:
    (d / "program.json").write_text(json.dumps(doc, indent=1))


def _arrays(d: Path) -> dict:
    with np.load(d / "program.npz", allow_pickle=False) as z:
        return {k: z[k].copy() for k in z.files}


def _flip(d: Path, name: str, where: float) -> None:
    p = d / name
    data = bytearray(p.read_bytes())
    data[min(int(len(data) * where), len(data) - 1)] ^= 0x41
    p.write_bytes(bytes(data))


def _unlink(d: Path, name: str) -> None:
    (d / name).unlink()


def _truncate(d: Path, name: str, keep: float) -> None:
    p = d / name
    p.write_bytes(p.read_bytes()[: int(p.stat().st_size * keep)])


def _json_edit(fn):
    def damage(d):
        doc = _doc(d)
        fn(doc)
        _put_doc(d, doc)

    return damage


def _set(path: str, value):
    """A JSON edit: set the field at a /-separated path (list indices as numbers)."""

    def fn(doc):
        *head, last = path.split("/")
        obj = doc
        for k in head:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        if isinstance(obj, list):
            obj[int(last)] = value
        else:
            obj[last] = value

    return _json_edit(fn)


def _delete(path: str):
    def fn(doc):
        *head, last = path.split("/")
        obj = doc
        for k in head:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        del obj[last]

    return _json_edit(fn)


def _rewrite(
    d: Path, arrays_fn=None, doc_fn=None, files: bool = True, resign: bool = False, writer=None
) -> None:
    """Rewrite program.npz (and program.json) after ``arrays_fn``/``doc_fn``; ``files``: update the file
    hashes; ``resign``: also recompute the content hash (so only the structural checks can catch it)."""
    doc, arrays = _doc(d), _arrays(d)
    if arrays_fn:
        arrays_fn(arrays)
    if doc_fn:
        doc_fn(doc)
    (writer or hp._write_npz)(d / "program.npz", arrays)
    if files:
        for n in ("program.npz", "listing.txt"):
            doc["files"][n] = {"bytes": (d / n).stat().st_size, "sha256": hp._sha256_file(d / n)}
    if resign:
        body = {k: v for k, v in doc.items() if k not in ("files", "content_hash")}
        doc["content_hash"] = hp.content_hash(body, arrays, (d / "listing.txt").read_bytes())
    _put_doc(d, doc)


def _arrays_edit(fn, **kw):
    return lambda d: _rewrite(d, arrays_fn=fn, **kw)


def _resigned(doc_fn=None, arrays_fn=None):
    return lambda d: _rewrite(d, arrays_fn=arrays_fn, doc_fn=doc_fn, resign=True)


def _swap_host(a):
    a["host:embed_tokens.weight"], a["host:lm_head.weight"] = (
        a["host:lm_head.weight"],
        a["host:embed_tokens.weight"],
    )


def _edit_word(a):
    a["words"][4] ^= np.uint64(1 << 20)


def _host_op_999(a):
    cmds = decode_program([int(w) for w in a["words"]])
    i = next(i for i, c in enumerate(cmds) if isinstance(c, HostCommand))
    cmds[i] = HostCommand(999)
    a["words"] = np.array(encode_program(cmds), dtype=np.uint64)


def _tlmm_out_of_image(a):
    cmds = decode_program([int(w) for w in a["words"]])
    i = next(i for i, c in enumerate(cmds) if isinstance(c, TlmmCommand))
    c = cmds[i]
    cmds[i] = TlmmCommand(c.tokens, c.k_chunks, c.n_blocks, c.act_base, c.wgt_base, a["image"].shape[0] - 1)
    a["words"] = np.array(encode_program(cmds), dtype=np.uint64)


def _gemm_out_of_image(a):
    cmds = decode_program([int(w) for w in a["words"]])
    i = next(i for i, c in enumerate(cmds) if isinstance(c, GemmCommand))
    cmds[i] = dataclasses.replace(cmds[i], b_base=a["image"].shape[0] - 2)
    a["words"] = np.array(encode_program(cmds), dtype=np.uint64)


def _extra_file(d):
    (d / "notes.txt").write_text("hello")


def _dir_for_file(d):
    (d / "listing.txt").unlink()
    (d / "listing.txt").mkdir()


def _append(name):
    return lambda d: (d / name).write_bytes((d / name).read_bytes() + b"\0" * 7)


def _write_object_array(path, arrays):
    """An npz member holding a pickled object array (np.save with pickles allowed)."""
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in arrays.items():
            with zf.open(k + ".npy", "w") as f:
                np.lib.format.write_array(f, v, allow_pickle=True)


def _objects(a):
    """Big enough that program.npz keeps its declared size: the member header check must catch it."""
    a["host:lm_head.weight"] = np.array([{"x": "y" * 8000}, None], dtype=object)


def _compressed(path, arrays):
    np.savez_compressed(path, **arrays)


def _savez(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _first_tensor_in_memory(doc) -> int:
    return next(i for i, t in enumerate(doc["tensors"]) if t["addr"] >= 0)


def _tensor_outside(doc):
    i = _first_tensor_in_memory(doc)
    doc["tensors"][i]["addr"] = doc["meta"]["memory_beats"] + 5


def _huge_nbytes(doc):
    doc["tensors"][_first_tensor_in_memory(doc)]["nbytes"] = 10**30


def _huge_parts(doc):
    t = next(t for t in doc["tensors"] if "parts" in t["attrs"])
    t["shape"] = [10**9, 10**9]


def _dup_tensor(doc):
    doc["tensors"][1]["name"] = doc["tensors"][0]["name"]


DAMAGE = {
    # whole files: missing, extra, truncated, appended, replaced by a folder
    **{f"delete-{n}": partial(_unlink, name=n) for n in hp.PROGRAM_FILES},
    **{f"truncate-half-{n}": partial(_truncate, name=n, keep=0.5) for n in hp.PROGRAM_FILES},
    **{f"truncate-empty-{n}": partial(_truncate, name=n, keep=0.0) for n in hp.PROGRAM_FILES},
    **{f"append-{n}": _append(n) for n in hp.PROGRAM_FILES},
    "extra-file": _extra_file,
    "listing-is-a-folder": _dir_for_file,
    # one flipped byte anywhere
    **{
        f"flip-{n}-{w}": partial(_flip, name=n, where=w)
        for n in hp.PROGRAM_FILES
        for w in (0.0, 0.1, 0.35, 0.5, 0.75, 0.999)
    },
    # program.json fields of the wrong type, missing, extra, out of range (content hash not updated)
    "format": _set("format", "tritium-trace"),
    "version-old": _set("program_version", 1),
    "version-str": _set("program_version", "2"),
    "isa-version": _set("isa_version", 2),
    "format-type": _set("format", 1),
    "files-type": _set("files", []),
    "arrays-type": _set("arrays", "x"),
    "config-type": _set("config", []),
    "config-field": _set("config/gemm/rows", 4),
    "config-invalid": _set("config/tlmm/act_bits", 99),
    "fingerprint": _set("fingerprint", "0" * 16),
    "fingerprint-type": _set("fingerprint", 12),
    "meta-type": _set("meta", "x"),
    "meta-tokens-str": _set("meta/tokens", "3"),
    "meta-tokens-zero": _set("meta/tokens", 0),
    "meta-pos-negative": _set("meta/pos", -1),
    "meta-beats-float": _set("meta/memory_beats", 1.5),
    "meta-beats-huge": _set("meta/memory_beats", 10**40),
    "meta-materialized-int": _set("meta/weights_materialized", 1),
    "meta-output-type": _set("meta/output", 3),
    "meta-model-type": _set("meta/model", []),
    "meta-missing-output": _delete("meta/output"),
    "host-ops-type": _set("host_ops", {}),
    "host-op-kind": _set("host_ops/0/kind", "sigmoid"),
    "host-op-inputs": _set("host_ops/0/inputs", "tokens"),
    "host-op-attrs": _set("host_ops/0/attrs", []),
    "host-op-extra-field": _set("host_ops/0/color", "red"),
    "host-op-missing-field": _delete("host_ops/0/where"),
    "tensors-type": _set("tensors", None),
    "tensor-addr-str": _set("tensors/0/addr", "0"),
    "tensor-addr-bool": _set("tensors/0/addr", True),
    "tensor-shape-negative": _set("tensors/0/shape", [-1, 4]),
    "tensor-dtype": _set("tensors/0/dtype", "float64"),
    "tensor-layout": _set("tensors/0/layout", "cols"),
    "tensor-nbytes-huge": _json_edit(_huge_nbytes),
    "tensor-duplicate": _json_edit(_dup_tensor),
    "arrays-image-huge": _set("arrays/image/shape", [10**12, 32]),
    "arrays-words-dtype": _set("arrays/words/dtype", "<i8"),
    "arrays-object-dtype": _set("arrays/host:lm_head.weight/dtype", "|O"),
    "arrays-extra": _set("arrays/host:extra", {"dtype": "<f4", "shape": [1]}),
    "arrays-missing": _delete("arrays/words"),
    "files-npz-bytes-huge": _set("files/program.npz/bytes", 10**15),
    "files-listing-sha": _set("files/listing.txt/sha256", "0" * 64),
    "files-sha-type": _set("files/program.npz/sha256", 5),
    "content-hash-other": _set("content_hash", "sha256:" + "ab" * 32),
    "content-hash-type": _set("content_hash", None),
    "top-level-extra": _set("comment", "hi"),
    "top-level-missing": _delete("tensors"),
    "json-not-object": lambda d: (d / "program.json").write_text("[1, 2]"),
    "json-not-utf8": lambda d: (d / "program.json").write_bytes(b"\xff\xfe{}"),
    "json-deep": lambda d: (d / "program.json").write_text("[" * 100000 + "]" * 100000),
    "json-value-edit": _set("host_ops/2/attrs/scale", 0.5),
    "listing-edit": lambda d: ((d / "listing.txt").write_text("# edited\n"), _rewrite(d)),
    # program.npz content changed, file hashes updated (only the content hash or the member checks catch it)
    "swap-host-tensors": _arrays_edit(_swap_host),
    "edit-command-word": _arrays_edit(_edit_word),
    "edit-image-byte": _arrays_edit(lambda a: a["image"].__setitem__((5, 3), a["image"][5, 3] ^ 1)),
    "edit-host-value": _arrays_edit(lambda a: a["host:lm_head.weight"].__setitem__((0, 0), np.nan)),
    "words-stored-int64": _arrays_edit(lambda a: a.__setitem__("words", a["words"].astype(np.int64))),
    "image-stored-fortran": _arrays_edit(lambda a: a.__setitem__("image", np.asfortranarray(a["image"]))),
    "image-reshaped": _arrays_edit(lambda a: a.__setitem__("image", a["image"].reshape(-1, 16))),
    "npz-extra-member": _arrays_edit(lambda a: a.__setitem__("extra", np.zeros(3, np.float32))),
    "npz-missing-member": _arrays_edit(lambda a: a.pop("host:lm_head.weight")),
    "npz-object-member": _arrays_edit(_objects, writer=_write_object_array),
    "npz-compressed": _arrays_edit(None, writer=_compressed),
    "npz-numpy-savez": _arrays_edit(_edit_word, writer=_savez),
    # re-signed (hashes recomputed): the structural checks behind the hashes
    "resigned-host-op-index": _resigned(arrays_fn=_host_op_999),
    "resigned-tlmm-out-of-image": _resigned(arrays_fn=_tlmm_out_of_image),
    "resigned-gemm-out-of-image": _resigned(arrays_fn=_gemm_out_of_image),
    "resigned-tensor-outside-image": _resigned(doc_fn=_tensor_outside),
    "resigned-memory-beats-huge": _resigned(
        doc_fn=lambda doc: doc["meta"].__setitem__("memory_beats", 10**40)
    ),
    "resigned-tensor-nbytes-huge": _resigned(doc_fn=_huge_nbytes),
    "resigned-parts-shape-huge": _resigned(doc_fn=_huge_parts),
    "resigned-memory-beats": _resigned(doc_fn=lambda doc: doc["meta"].__setitem__("memory_beats", 7)),
    "resigned-host-shape": _resigned(
        arrays_fn=lambda a: a.__setitem__("host:lm_head.weight", a["host:lm_head.weight"][:4].copy()),
        doc_fn=lambda doc: doc["arrays"]["host:lm_head.weight"].__setitem__("shape", [4, TINY.d_model]),
    ),
    "resigned-output-missing": _resigned(doc_fn=lambda doc: doc["meta"].__setitem__("output", "nope")),
    "resigned-unknown-input": _resigned(doc_fn=lambda doc: doc["host_ops"][1]["inputs"].append("nope")),
}


def test_battery_has_at_least_50_cases():
    assert len(DAMAGE) >= 50


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_program_is_refused(built, tmp_path, case):
    _, _, good, _ = built
    d = tmp_path / "p"
    shutil.copytree(good, d)
    DAMAGE[case](d)
    assert sorted(os.listdir(d)) != sorted(os.listdir(good)) or any(
        (d / n).is_dir() or (d / n).read_bytes() != (good / n).read_bytes() for n in hp.PROGRAM_FILES
    ), "no damage"
    with pytest.raises(ProgramError) as e:
        Program.load(d)
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    assert str(d) in msg, msg  # names the folder or the file in it
    assert len(msg) < 400, msg


def test_damage_messages_name_file_and_field(built, tmp_path):
    _, _, good, _ = built
    expect = {
        "tensor-addr-str": "tensors[0].addr",
        "meta-tokens-str": "meta.tokens",
        "host-op-kind": "host_ops[0].kind",
        "files-npz-bytes-huge": "files.program.npz.bytes",
        "flip-program.npz-0.5": "program.npz",
        "edit-command-word": "content_hash",
        "delete-listing.txt": "missing listing.txt",
        "extra-file": "notes.txt",
        "config-field": "fingerprint",
        "words-stored-int64": "words",
        "resigned-host-op-index": "HOST command",
        "arrays-image-huge": "arrays",
    }
    for case, text in expect.items():
        d = tmp_path / case
        shutil.copytree(good, d)
        DAMAGE[case](d)
        with pytest.raises(ProgramError) as e:
            Program.load(d)
        assert text in str(e.value), (case, str(e.value))


# ------------------------------------------------------------------ hash and save
def test_round_trip_hash_and_deterministic_bytes(built, tmp_path):
    _, prog, good, ref = built
    doc = _doc(good)
    back = Program.load(good)
    assert back.digest() == prog.digest() == doc["content_hash"]
    assert torch.equal(execute(back, TOKENS)[0], ref)
    again = prog.save(tmp_path / "again")
    for n in hp.PROGRAM_FILES:
        assert (again / n).read_bytes() == (good / n).read_bytes(), n
    assert sorted(os.listdir(tmp_path)) == ["again"]  # no temporary folder left
    # the hash covers every part: change any one and it changes
    variants = [
        dict(words=prog.words.copy()),
        dict(listing=prog.listing + " "),
        dict(meta={**prog.meta, "x": 1}),
    ]
    variants[0]["words"][0] ^= np.uint64(1 << 9)
    for v in variants:
        other = Program(
            **{
                **{
                    f: getattr(prog, f)
                    for f in (
                        "config",
                        "words",
                        "host_ops",
                        "tensors",
                        "image",
                        "meta",
                        "listing",
                        "host_data",
                    )
                },
                **v,
            }
        )
        assert other.digest() != prog.digest()


def test_save_replaces_only_program_folders(built, tmp_path):
    _, prog, good, _ = built
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Program.load(prog.save(empty)).digest() == prog.digest()
    damaged = tmp_path / "damaged"
    shutil.copytree(good, damaged)
    _flip(damaged, "program.npz", 0.5)
    assert Program.load(prog.save(damaged)).digest() == prog.digest()
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("keep me")
    with pytest.raises(ProgramError, match="not a Program folder"):
        prog.save(user)
    assert (user / "thesis.tex").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ProgramError, match="not a folder"):
        prog.save(tmp_path / "file")


def _other_program(built) -> Program:
    cm = built[0]
    return cm.program(2, 0)


@pytest.mark.parametrize("fail_from, fail_to", [(2, 99), (2, 2), (1, 99), (3, 99)])
def test_crash_during_the_renames(built, tmp_path, monkeypatch, fail_from, fail_to):
    """os.replace fails from its ``fail_from``-th call (to the ``fail_to``-th): the target holds the old,
    correct Program or nothing loadable, never a mix; the next save succeeds and leaves nothing behind."""
    _, prog, _, ref = built
    new = _other_program(built)
    out = prog.save(tmp_path / "p")
    real, calls = os.replace, []

    def flaky(a, b):
        calls.append((a, b))
        if fail_from <= len(calls) <= fail_to:
            raise OSError("simulated crash")
        return real(a, b)

    monkeypatch.setattr(os, "replace", flaky)
    try:
        new.save(out)
    except OSError:
        pass
    monkeypatch.setattr(os, "replace", real)
    try:
        back = Program.load(out)
    except ProgramError as e:
        assert fail_to == 99 and "interrupted save" in str(e) or "not found" in str(e)
    else:
        if back.digest() == prog.digest():
            assert torch.equal(execute(back, TOKENS)[0], ref)
        else:
            assert back.digest() == new.digest()
    if fail_to == 2:  # the old Program was put back
        assert Program.load(out).digest() == prog.digest()
    new.save(out)
    assert Program.load(out).digest() == new.digest()
    assert sorted(os.listdir(tmp_path)) == ["p"]


def test_every_intermediate_state_is_old_new_or_nothing(built, tmp_path, monkeypatch):
    _, prog, _, _ = built
    new = _other_program(built)
    out = prog.save(tmp_path / "p")
    seen = []

    def state():
        try:
            seen.append(Program.load(out).digest())
        except ProgramError:
            seen.append(None)

    real_replace, real_write = os.replace, hp._write_bytes

    def replace(a, b):
        state()
        real_replace(a, b)
        state()

    def write(p, data):
        real_write(p, data)
        state()

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(hp, "_write_bytes", write)
    new.save(out)
    assert set(seen) <= {prog.digest(), new.digest(), None} and seen[-1] == new.digest()
    assert len(seen) >= 6


def test_crash_while_writing_keeps_the_old_program(built, tmp_path, monkeypatch):
    _, prog, _, _ = built
    out = prog.save(tmp_path / "p")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", boom)
    with pytest.raises(OSError, match="disk full"):
        _other_program(built).save(out)
    assert Program.load(out).digest() == prog.digest()
    assert sorted(os.listdir(tmp_path)) == ["p"]


# ------------------------------------------------------------------ tritium run
def test_run_program_report(built, tmp_path):
    from tritium.run import run_program

    _, prog, good, ref = built
    rep = run_program(good, TOKENS.tolist(), logits_out=tmp_path / "l.npy")
    stats = execute(prog, TOKENS)[1]
    assert rep["commands"] == {**stats.commands, "total": sum(stats.commands.values())}
    assert rep["cycles"]["total"] == stats.cycles["tlmm"] + stats.cycles["gemm"] > 0
    assert rep["output"]["argmax"] == ref.argmax(-1).tolist() and rep["output"]["next_token"] == int(
        ref[-1].argmax()
    )
    assert rep["content_hash"] == _doc(good)["content_hash"]
    assert np.array_equal(np.load(tmp_path / "l.npy"), ref.numpy())
    assert run_program(good)["tokens"] == [0, 0, 0]  # default: the ids in the Program's own image


def test_run_input_errors(built, capsys):
    from tritium.cli import main

    good = built[2]
    assert main(["run", str(good), "--tokens", "1,2"]) == 2
    assert "step of 3 token(s)" in capsys.readouterr().err
    assert main(["run", str(good), "--tokens", "1,2,x"]) == 2
    assert main(["run", str(good), "--tokens", f"1,2,{TINY.vocab}"]) == 2
    err = capsys.readouterr().err
    assert "outside the model's vocabulary" in err and err.count("\n") == 2
    assert main(["run", str(good), "--prompt", "abcd"]) == 2


def test_cli_run(built, tmp_path):
    _, _, good, ref = built
    out = cli_json("run", good, "--tokens", "3 1 4")
    assert out["output"]["next_token"] == int(ref[-1].argmax()) and out["commands"]["tlmm"] > 0
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    _flip(bad, "program.npz", 0.5)
    assert_one_line_error(run_cli("run", bad, expect=2), "program.npz")


# ------------------------------------------------------------------ activation width
def test_compiler_refuses_narrow_activations():
    acfg = load_config(REPO / "configs" / "small-g3-half.yaml")
    assert acfg.tlmm.act_bits == 6
    with pytest.raises(CompileError, match=r"tlmm\.act_bits is 6.*int8.*tlmm\.act_bits: 8"):
        compile_model(tiny_model(), acfg)


def test_cosim_top_refuses_narrow_activations_before_building():
    """`tritium cosim top --config configs/small-g3-half.yaml` stops at the compiler (no Verilator needed)."""
    from sim.cosim import run_top_cosim

    acfg = load_config(REPO / "configs" / "small-g3-half.yaml")
    with pytest.raises(CompileError, match=r"tlmm\.act_bits is 6"):
        run_top_cosim(
            acfg,
            REPO / "models" / "checkpoints" / "tiny.pt",
            list(b"import"),
            1,
            layers=1,
            build_root=Path("/nonexistent"),
            quiet=True,
        )


def test_runtime_checks_activation_range(built):
    _, prog, _, _ = built
    narrow = Program(
        **{
            f: getattr(prog, f)
            for f in ("words", "host_ops", "tensors", "image", "meta", "listing", "host_data")
        },
        config={**prog.config, "tlmm": {**prog.config["tlmm"], "act_bits": 6}},
    )
    with pytest.raises(ProgramError, match=r"TLMM command \d+ .*do not fit tlmm\.act_bits=6 \(-32\.\.31\)"):
        execute(narrow, TOKENS)
    check_act_range(np.array([-32, 31], np.int8), 6, "ok")
    with pytest.raises(ProgramError, match="-33..31"):
        check_act_range(np.array([-33, 31], np.int8), 6, "x")


def test_runtime_implements_every_host_op_kind():
    # dequant+<kind>: the dequantization (_Host.run), then <kind>
    kinds = {k.removeprefix(DEQUANT_PREFIX) for k in HOST_OP_KINDS}
    assert all(hasattr(_Host, "op_" + k.replace("+", "_")) for k in kinds)


def test_forged_host_op_fails_with_a_program_error(built, tmp_path):
    """Hashes recomputed after removing an attribute a host op needs: loads, then fails naming the op."""
    good = built[2]
    d = tmp_path / "p"
    shutil.copytree(good, d)
    _rewrite(
        d,
        doc_fn=lambda doc: next(h for h in doc["host_ops"] if h["kind"] == "rmsnorm+quant")["attrs"].pop(
            "eps"
        ),
        resign=True,
    )
    prog = Program.load(d)
    with pytest.raises(
        ProgramError, match=r"HOST command \d+: host op layers\.0\.attn_norm \(rmsnorm\+quant\)"
    ):
        execute(prog, TOKENS)
