"""Design-space exploration (tritium.dse): spec errors, the fast evaluator against estimate(), determinism,
resume after SIGKILL, fail-fast reasons, a shared PostgreSQL study (a real server started here), and (slow)
co-simulation of the winners. Fast part: ~1.5 min on 2 cores."""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import CLI, DSE_NSGA_PARAMETERS, DSE_SPEC, assert_same_estimate, run_cli

from hw.config import config_from_dict, load_config
from tritium import dse
from tritium.dse import FastEvaluator, SpecError, build_workload, load_spec, run_dse
from tritium.estimate import _compiled, estimate

# load_spec checks the workload against the model presets, which need PyTorch
pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parent.parent


def _spec(tmp_path: Path, name: str = "spec", **over) -> Path:
    d = copy.deepcopy(DSE_SPEC)
    for k, v in over.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def _nsga_spec(tmp_path: Path, population: int, budget: int, parameters: dict, **over) -> Path:
    """An NSGA-II run of ``budget`` points, generations of ``population``, over ``parameters``."""
    return _spec(
        tmp_path, sampler="nsga2", population=population, budget=budget, parameters=parameters, **over
    )


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------- spec
@pytest.mark.parametrize(
    "over, field",
    [
        ({"parameters": {"tlmm.tablez": [4]}}, "parameters.tlmm.tablez"),
        ({"parameters": {"tlmm.tables": [4, 100]}}, "parameters.tlmm.tables"),
        ({"parameters": {"tlmm.tables": []}}, "parameters.tlmm.tables"),
        ({"parameters": {"tlmm": [1]}}, "parameters.tlmm"),
        ({"objectives": [{"speed": "max"}]}, "objectives[0]"),
        ({"objectives": [{"ttft_s": "up"}]}, "objectives[0].ttft_s"),
        ({"constraints": ["lut < = 5"]}, "constraints[0]"),
        ({"constraints": ["lut <= many"]}, "constraints[0]"),
        ({"workload": {"model": "gpt-5", "prompt": 4, "context": 8}}, "workload.model"),
        ({"workload": {"model": "tiny", "prompt": 100000, "context": 8}}, "workload.prompt"),
        ({"sampler": "random"}, "sampler"),
        ({"budget": 0}, "budget"),
        ({"base": "configs/nope.yaml"}, "base"),
        ({"board": "de10"}, "board"),
        ({"bogus": 1}, "bogus"),
        ({"budget": None}, "budget"),
        ({"board": None}, "objectives"),  # lut needs a board
        ({"constraints": ["lut <= nan"]}, "constraints[0]"),
        ({"constraints": ["lut <= inf"]}, "constraints[0]"),
        ({"constraints": ["decode_tokens_per_s >= -1e999"]}, "constraints[0]"),
        ({"parameters": {"tlmm.tables": {"min": 1, "max": 10, "step": 0}}}, "parameters.tlmm.tables"),
        ({"parameters": {"tlmm.tables": [4, float("nan")]}}, "parameters.tlmm.tables"),
        ({"workload": {"model": "tiny", "prompt": 4, "contxt": 8}}, "workload.contxt"),
        ({"fit_margin": True}, "fit_margin"),
    ],
)
def test_spec_errors_name_file_and_field(tmp_path, over, field):
    p = _spec(tmp_path, **over)
    with pytest.raises(SpecError) as e:
        load_spec(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: ") and f": {field}" in msg, msg


def test_spec_huge_range_rejected_before_expanding(tmp_path):
    p = _spec(tmp_path, parameters={"tlmm.tables": {"min": 1, "max": 10**8}})
    t0 = time.perf_counter()
    with pytest.raises(SpecError) as e:
        load_spec(p)
    msg = str(e.value)
    assert time.perf_counter() - t0 < 2
    assert (
        "\n" not in msg and f"{p}: parameters.tlmm.tables: " in msg and "10000" in msg and "100000000" in msg
    ), msg


def test_spec_error_cli_exit_2_one_line(tmp_path):
    p = _spec(tmp_path, sampler="random")
    r = run_cli("dse", p, "--out", tmp_path / "o", expect=2)
    assert r.stderr.strip().count("\n") == 0 and "sampler" in r.stderr and str(p) in r.stderr
    assert not (tmp_path / "o").exists()


def test_committed_specs_load():
    for p in sorted((ROOT / "configs" / "sweeps").glob("*.yaml")):
        s = load_spec(p)
        assert s.parameters and s.objectives


# --------------------------------------------------------------------------------------- evaluator
def _variant(acfg, **sections):
    d = acfg.to_dict()
    for sec, fields in sections.items():
        d[sec].update(fields)
    return config_from_dict(d, source="test")


@pytest.mark.parametrize(
    "model, config, prompt, context, variants",
    [
        (
            "tiny",
            "configs/default.yaml",
            16,
            40,
            [
                {},
                {"tlmm": {"tables": 3, "columns": 5, "tokens": 3, "max_k": 100, "max_n": 90}},
                {
                    "gemm": {"rows": 4, "cols": 16, "k_tile": 32},
                    "memory": {"bus_bytes": 16, "beat_interval": 2},
                },
                {"tlmm": {"group_size": 2, "table_mode": "half", "tokens": 16}},
            ],
        ),
        (
            "bitnet-0.7b",
            "configs/kv260.yaml",
            64,
            128,
            [{}, {"tlmm": {"tables": 12, "tokens": 3, "max_k": 1000, "max_n": 700}, "gemm": {"rows": 4}}],
        ),
    ],
)
def test_fast_evaluator_equals_estimate(model, config, prompt, context, variants):
    base = load_config(ROOT / config)
    ev = FastEvaluator(build_workload(model, prompt, context, base))
    for v in variants:
        acfg = _variant(base, **v)
        ref = estimate(model, acfg, prompt, context)
        fast = ev.estimate(acfg)
        assert_same_estimate(ref, fast, v)
        # the screen's memory figure is the compiler's persistent region (one allocation rule)
        assert ev.memory_beats(acfg) == _compiled(model, acfg).lowering.step_base, v


# ------------------------------------------------------------------------------------- determinism
def test_same_spec_and_seed_same_csv(tmp_path):
    p = _nsga_spec(tmp_path, 8, 24, {**DSE_NSGA_PARAMETERS, "gemm.rows": [2, 4, 8]})
    spec = load_spec(p)
    a = run_dse(spec, tmp_path / "a", workers=2, progress=False, log=lambda s: None)
    b = run_dse(spec, tmp_path / "b", workers=0, progress=False, log=lambda s: None)
    ta, tb = (tmp_path / "a" / "results.csv").read_text(), (tmp_path / "b" / "results.csv").read_text()
    assert ta == tb
    assert len(a["rows"]) == 24 and (tmp_path / "a" / "pareto.png").stat().st_size > 1000
    assert any(r["pareto"] == 1 for r in a["rows"])
    # a finished study resumes without evaluating anything
    c = run_dse(spec, tmp_path / "a", workers=2, progress=False, log=lambda s: None)
    assert c["evaluated"] == 0 and (tmp_path / "a" / "results.csv").read_text() == ta
    del b


# -------------------------------------------------------------------------------------- fail fast
def test_fail_fast_reasons(tmp_path):
    base = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    base["memory"]["addr_bits"] = 16  # 2 MiB of 32-byte beats: the tiny model's weights + KV fit
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    p = _spec(
        tmp_path,
        base="base.yaml",
        budget=1000,
        parameters={
            "tlmm.tables": [8, 64],
            "tlmm.columns": [1, 8],
            "tlmm.tokens": [1, 16],
            "tlmm.max_n": [4096, 8192],
            "memory.addr_bits": [8, 16],
        },
        constraints=["lut <= 60000", "decode_tokens_per_s >= 2000"],  # LUTs of the whole top level
    )
    spec = load_spec(p)
    run_dse(spec, tmp_path / "o", workers=0, progress=False, log=lambda s: None)
    rows = _rows(tmp_path / "o" / "results.csv")
    assert len(rows) == 32
    by = {}
    for r in rows:
        by.setdefault(r["status"], []).append(r)
    assert {"ok", "invalid", "memory", "fit", "constraint"} <= set(by), set(by)
    for r in by["invalid"]:
        assert "accumulator" in r["reason"] or "max_n" in r["reason"], r["reason"]
    for r in by["memory"]:
        assert r["memory.addr_bits"] == "8" and "addr_bits" in r["reason"]
    for r in by["fit"]:
        assert "does not fit ulx3s (modeled)" in r["reason"]
    assert any(r["tlmm.tables"] == "64" and "lut" in r["reason"] for r in by["fit"])
    assert any("lut <= 60000" in r["reason"] for r in by["constraint"])
    assert any("decode_tokens_per_s >= 2000" in r["reason"] for r in by["constraint"])
    # rejected before evaluation: only points that passed the screen reach the evaluation log
    logged = {
        json.loads(line)["uid"] for line in (tmp_path / "o" / "evaluations.jsonl").read_text().splitlines()
    }
    evaluated = [
        r for r in rows if r["status"] == "ok" or (r["status"] == "constraint" and "decode" in r["reason"])
    ]
    assert len(logged) == len(evaluated)
    for r in by["ok"]:
        assert float(r["decode_tokens_per_s"]) >= 2000 and float(r["lut"]) <= 60000


# ------------------------------------------------------------------------------------------ resume
def test_sigkill_resume_keeps_finished_and_never_reevaluates(tmp_path):
    space = {
        "tlmm.tables": [2, 3, 4, 6, 8, 12, 16],
        "tlmm.columns": [1, 2, 3, 4, 6, 8],
        "tlmm.tokens": [1, 2, 4, 8],
        "gemm.rows": [2, 4, 8],
        "gemm.k_tile": [16, 32, 64],
    }
    p = _nsga_spec(tmp_path, 16, 400, space, batch=8)
    out = tmp_path / "o"
    log = out / "evaluations.jsonl"
    proc = subprocess.Popen(
        [*CLI, "dse", str(p), "--out", str(out), "--workers", "2", "--no-progress"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if log.exists() and len(log.read_text().splitlines()) >= 40:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no evaluations within 120 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(0.5)
    before = [json.loads(x) for x in log.read_text().splitlines() if x.endswith("}")]
    assert 40 <= len(before) < 400
    run_cli("dse", p, "--out", out, "--workers", 2, "--no-progress", timeout=300)
    import optuna

    study = optuna.load_study(study_name="dse-t-tiny", storage=f"sqlite:///{out / 'study.db'}")
    uids = [t.user_attrs["uid"] for t in study.trials]
    assert len(uids) == len(set(uids)) == 400
    after = [json.loads(x) for x in log.read_text().splitlines() if x.endswith("}")]
    logged = [x["uid"] for x in after]
    assert len(logged) == len(set(logged)), "a point was evaluated twice"
    assert {x["uid"] for x in before} <= set(uids), "a finished evaluation of the killed run was lost"
    rows = _rows(out / "results.csv")
    assert len(rows) == 400 and sorted(int(x["trial"]) for x in rows) == list(range(400))


# -------------------------------------------------------------------------------------- PostgreSQL
def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    w = shutil.which("initdb")
    return Path(w).parent if w else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.postgres
def test_postgres_shared_study_two_invocations(tmp_path):
    pg = _pg_bin()
    if pg is None:
        if os.environ.get("TRITIUM_SKIP_POSTGRES") == "1":
            pytest.skip("TRITIUM_SKIP_POSTGRES=1 and no PostgreSQL server binaries")
        pytest.fail(
            "PostgreSQL server binaries not found: apt-get install -y postgresql "
            "(or set TRITIUM_SKIP_POSTGRES=1)",
            pytrace=False,
        )
    import tempfile

    # a folder of its own under /tmp (pytest's tmp_path is private to root; the server runs as postgres)
    data = Path(tempfile.mkdtemp(prefix="tritium-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    r = subprocess.run(
        [*as_user, str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "tritium"],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        shutil.rmtree(data, ignore_errors=True)
        pytest.fail(f"initdb failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}", pytrace=False)
    port = _free_port()
    server = subprocess.Popen(
        [
            *as_user,
            str(pg / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            str(data),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(200):
            if (
                subprocess.run(
                    [str(pg / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
                ).returncode
                == 0
            ):
                break
            time.sleep(0.1)
        subprocess.run(
            [str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tritium", "dse"], check=True
        )
        url = f"postgresql://tritium:s3cret-pw@127.0.0.1:{port}/dse"
        p = _nsga_spec(tmp_path, 8, 48, DSE_NSGA_PARAMETERS)
        procs = [
            subprocess.Popen(
                [
                    *CLI,
                    "dse",
                    str(p),
                    "--out",
                    str(tmp_path / f"w{i}"),
                    "--storage",
                    url,
                    "--workers",
                    "1",
                    "--no-progress",
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        outs = [pr.communicate(timeout=300) for pr in procs]
        for pr, (o, e) in zip(procs, outs, strict=True):
            assert pr.returncode == 0, e[-2000:]
            assert "s3cret-pw" not in o + e, "the storage password was printed"
            assert f"***@127.0.0.1:{port}/dse" in e
        import optuna

        study = optuna.load_study(
            study_name="dse-t-tiny", storage=url.replace("postgresql:", "postgresql+psycopg2:")
        )
        # One study, not two: 48 distinct trials at most a batch per invocation over the budget (two separate
        # studies would hold 96), and below each invocation's CSV holds them all. Whether both invocations
        # stored trials depends on timing (on an idle machine the first can finish the budget before the
        # second asks), so it is not asserted.
        runs = {t.user_attrs["uid"].split(":")[0] for t in study.trials}
        assert 1 <= len(runs) <= 2
        uids = [t.user_attrs["uid"] for t in study.trials]
        assert len(uids) == len(set(uids)) and 48 <= len(uids) <= 48 + 2 * 8
        for i in range(2):
            assert len(_rows(tmp_path / f"w{i}" / "results.csv")) >= 48
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


# ----------------------------------------------------------------------------------- verification
@pytest.mark.verilator
@pytest.mark.slow
def test_verify_top_point_cosim(tmp_path):
    p = _spec(tmp_path, budget=4, parameters={"tlmm.tables": [4, 8], "tlmm.columns": [2, 4]})
    res = run_dse(
        load_spec(p), tmp_path / "o", workers=0, top=1, verify=1, progress=False, log=lambda s: None
    )
    ver = [r for r in res["rows"] if r["verified"]]
    assert len(ver) == 1 and ver[0]["verified"] == "yes"
    rows = _rows(tmp_path / "o" / "results.csv")
    assert sum(r["verified"] == "yes" for r in rows) == 1


def test_verify_config_detects_nothing_to_fix_in_model(monkeypatch):
    """verify_config reports 'no' when the RTL and model cycles differ (checked with a stub report)."""

    class Rep:
        def __init__(self, ok):
            self.ok, self.rtl_cycles, self.model_cycles, self.outputs_equal = ok, 10, 10 if ok else 11, True

    import sim.cosim as cosim

    monkeypatch.setattr(cosim, "run_tlmm_cosim", lambda *a, **k: Rep(True))
    monkeypatch.setattr(cosim, "run_gemm_cosim", lambda *a, **k: Rep(False))
    ok, detail = dse.verify_config(
        load_config(ROOT / "configs" / "default.yaml"), {"d_model": 128, "n_heads": 4}
    )
    assert not ok and "GEMM RTL 10 / model 11" in detail
