# Tritium — every target is documented in docs/cli.md. The first target that needs Python creates .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/default.yaml
BOARD  ?= ulx3s
ENGINE ?= tlmm
# make bitstream ENGINE=deploy: the PLL clock of the ULX3S top, MHz (empty: hw/deploy.py's DEFAULT_CLOCK_MHZ)
CLOCK_MHZ ?=
SEED   ?= 0
TOKENS ?= 4
# PyTorch is a core dependency (the models, the compiler and every estimate need it): the venv installs the
# CPU wheel 2.13.0 first, so pip does not pull a CUDA build.
# make dse: the sweep spec, and how many of its top Pareto points to co-simulate (Verilator, ~1 min each)
SPEC   ?= configs/sweeps/kv260-bitnet07b.yaml
VERIFY ?= 1

# make bitstream: without CONFIG=... on the command line (or in the environment) the CLI picks the board's
# default config (one table: hw/boards.py, Board.default_config); CONFIG=... overrides it.
BITSTREAM_CONFIG := $(if $(filter command line environment,$(origin CONFIG)),--config $(CONFIG))

.PHONY: help venv sim top test test-all bitstream bench train lint clean dse calibrate kv-report

help:
	@echo "make sim        co-simulate the three engines of the default config (RTL ⇔ model ⇔ reference): BitNet-0.7B workloads, KV trace replays;"
	@echo "                then the tiny model generating TOKENS=4 greedy tokens through the RTL top level (logits and cycles compared)"
	@echo "make top        only the top-level run (TOKENS=4; all 4 layers; ~1-2 min)"
	@echo "make test       run the test suite (what CI runs)"
	@echo "make bitstream  build a bitstream (BOARD=ulx3s|icebreaker|kv260, ENGINE=tlmm|gemm|all|kv|top|deploy; CONFIG=... or the board's default; CLOCK_MHZ=40 for deploy) and print its report; exit 1 if timing is not met"
	@echo "make kv-report  KV policies (ReSV, StreamingLLM, H2O, Quest, full) on the recorded traces: table + recall PNG (~2 min)"
	@echo "make bench      model vs Verilator speed, fast paths, compile times"
	@echo "make train      retrain the tiny ternary LM (models/checkpoints/tiny.pt; minutes on 2 cores)"
	@echo "make dse        design-space exploration of SPEC (default configs/sweeps/kv260-bitnet07b.yaml), VERIFY=K winners co-simulated"
	@echo "make calibrate  rerun the resource-model calibration flows (~1 h, one tool at a time) and print the held-out errors"
	@echo "make lint       ruff check, ruff format --check, lint-imports (the layer contracts in .importlinter)"
	@echo "make clean      remove build products"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

sim: $(BIN)/.installed
	$(BIN)/tritium cosim tlmm --config $(CONFIG) --workload all --seed $(SEED)
	$(BIN)/tritium cosim gemm --config $(CONFIG) --workload all --seed $(SEED)
	$(BIN)/tritium cosim kv --config $(CONFIG) --workload all --seed $(SEED)
	$(BIN)/tritium cosim top --config $(CONFIG) --tokens $(TOKENS)

top: $(BIN)/.installed
	$(BIN)/tritium cosim top --config $(CONFIG) --tokens $(TOKENS)

# Two workers, one test file each (module fixtures such as Verilator builds stay in one process).
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist loadfile --durations=25

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -q

bitstream: $(BIN)/.installed
	$(BIN)/tritium bitstream --board $(BOARD) --engine $(ENGINE) $(BITSTREAM_CONFIG) $(if $(CLOCK_MHZ),--clock-mhz $(CLOCK_MHZ))

kv-report: $(BIN)/.installed
	$(BIN)/tritium kv report traces/*.npz --config $(CONFIG) --out build/kv

bench: $(BIN)/.installed
	$(BIN)/tritium bench --config $(CONFIG)

dse: $(BIN)/.installed
	$(BIN)/tritium dse $(SPEC) --out build/dse/$(basename $(notdir $(SPEC))) --verify $(VERIFY)

calibrate: $(BIN)/.installed
	$(BIN)/tritium calibrate --runs configs/calibration/runs.csv

train: $(BIN)/.installed
	$(BIN)/python -m models.train --out models/checkpoints/tiny.pt

LINT_PATHS := hw sim compiler models traces tritium tests examples

lint: $(BIN)/.installed
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/lint-imports

clean:
	rm -rf build sim_build results.xml .pytest_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
