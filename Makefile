# Two entry points (see README): `make demo` and `make test`. Both create or reuse .venv;
# `make test` also creates or reuses .venv-serve, the serving venv (numpy<2 for PyTriton).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.tscli-installed
SERVE_VENV  := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.tscli-installed
OUT     := out

.PHONY: venv serve-venv demo test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision pinned to the builds on this machine's local mirror (CUDA build, runs on CPU).
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[export,test]"
	touch $(STAMP)

venv: $(STAMP)

# tscli serve / loadtest run here (PyTriton 0.7 needs numpy<2; the project stays on numpy 2).
# About 0.5 GB from PyPI; tscli itself is installed editable, so the venv follows the checkout.
$(SERVE_STAMP): pyproject.toml
	test -x $(SERVE_VENV)/bin/python || $(PY) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q --upgrade pip
	$(SERVE_VENV)/bin/pip install -q -e ".[serve]"
	touch $(SERVE_STAMP)

serve-venv: $(SERVE_STAMP)

demo: $(STAMP)
	mkdir -p $(OUT)/samples
	$(BIN)/python -c "from tscli.data.samples import write_samples; write_samples('$(OUT)/samples', 4)"
	# Real ImageNet weights where the Hugging Face hub (or its cache) is reachable, else random ones.
	$(BIN)/tscli export deit_s_ats --max-k 120 --pretrained -o $(OUT)/deit_s_ats.onnx || \
	  { echo "demo: no pretrained weights here; exporting with random weights instead"; \
	    $(BIN)/tscli export deit_s_ats --max-k 120 -o $(OUT)/deit_s_ats.onnx; }
	$(BIN)/tscli inspect $(OUT)/deit_s_ats.onnx
	$(BIN)/tscli run $(OUT)/deit_s_ats.onnx $(OUT)/samples --k 96 --explain $(OUT)/tokens
	$(BIN)/tscli parity $(OUT)/deit_s_ats.onnx --n 4 --k 120 --k 48

test: $(STAMP) $(SERVE_STAMP)
	TSCLI_SERVE_PYTHON=$(abspath $(SERVE_VENV))/bin/python $(BIN)/python -m pytest -q

clean:
	rm -rf $(OUT) .pytest_cache
