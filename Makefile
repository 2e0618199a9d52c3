# `make demo` and `make test` each work on a fresh machine with only Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
KILN := $(VENV)/bin/kiln
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: anything unpinned would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[export,cpu,serve,sign,tensorrt,triton,nncf,openvino,vision,bench,test]'
	touch $@

demo: install
	$(KILN) export minilm --task feature-extraction -o demo-out/minilm-onnx --force
	$(KILN) inspect demo-out/minilm-onnx
	$(KILN) predict demo-out/minilm-onnx "A gripping, beautifully acted film." "Dull and far too long."
	$(KILN) bench demo-out/minilm-onnx --batch-sizes 1,8 --seq-len 128 --backend onnxruntime,torch --iters 20

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo-out
