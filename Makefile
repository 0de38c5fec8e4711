# Two entry points (see README): `make demo` and `make test`. Both create or reuse .venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.tscli-installed
OUT     := out

.PHONY: venv demo test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision pinned to the builds on this machine's local mirror (CUDA build, runs on CPU).
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[export,test]"
	touch $(STAMP)

venv: $(STAMP)

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

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(OUT) .pytest_cache
