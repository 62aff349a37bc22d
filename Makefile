# `make demo` and `make test` are the two commands a newcomer needs; both set up .venv first.
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/retriever: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/python -c "import open_clip, faiss, torch, torchvision; print('installed: torch', torch.__version__, '| open_clip', open_clip.__version__, '| faiss', faiss.__version__)"
	touch $@

.PHONY: demo test lint
demo: $(BIN)/retriever
	$(BIN)/retriever demo

test: $(BIN)/retriever
	$(BIN)/pytest -q

lint: $(BIN)/retriever
	$(BIN)/ruff check .
	$(BIN)/mypy

# The benchmarks (bench/RESULTS.md): speed against rclip, then vector search at scale; slow.
.PHONY: bench
bench: $(BIN)/retriever
	$(BIN)/python -m bench
