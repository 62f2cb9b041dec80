# make book     build the HTML book into _build/html (bootstraps .venv)
# make test     run every test: unit, parity, notebooks (nbval, strict), browser
# make outputs  update each chapter's .ipynb from its text source (.md), re-execute it
#               and store its outputs as nbval sees them
#               (one chapter: make outputs CHAPTERS=book/ch03_gradient_pruning)
# make seeds    re-run every chapter with its seeds shifted (OFFSETS="1 2") and list
#               the cells whose asserts fail (not part of make test: slow)
# make bench    time the companion's hot paths
# make lab      open the chapters in JupyterLab (127.0.0.1, the venv's kernel)
# make pdf      the whole book as one PDF: _build/pdf/book.pdf (after make book)
# make clean    remove built files (keeps .venv)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
MATHJAX := book/_static/mathjax
# Chapters and guides, without extension: book/NAME.md is the text source, book/NAME.ipynb
# its outputs.
CHAPTERS ?= $(basename $(wildcard book/ch[0-9]*.md book/guide_*.md))

export TF_CPP_MIN_LOG_LEVEL := 3
export TF_ENABLE_ONEDNN_OPTS := 0
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: book test outputs seeds bench lab pdf clean venv

venv: $(STAMP)

# Re-installs whenever the pinned requirements or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# MathJax 3 served from the book itself, so math renders with no network.
$(MATHJAX)/tex-chtml.js: $(STAMP)
	$(BIN)/python tools/vendor_mathjax.py $(MATHJAX)

book: $(STAMP) $(MATHJAX)/tex-chtml.js
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html"

test: $(STAMP) $(MATHJAX)/tex-chtml.js
	$(BIN)/python -m pytest

outputs: $(STAMP)
	$(BIN)/jupytext --quiet --update --to ipynb $(addsuffix .md,$(CHAPTERS))
	$(BIN)/python tools/store_outputs.py $(addsuffix .ipynb,$(CHAPTERS))

OFFSETS ?= 1 2
seeds: $(STAMP)
	$(BIN)/python tools/shift_seeds.py $(addsuffix .md,$(CHAPTERS)) --offsets $(OFFSETS)

bench: $(STAMP)
	$(BIN)/python tools/bench.py --markdown book/_generated/bench_table.md

# JupyterLab on 127.0.0.1, opened on book/, with the venv registered as the kernel
# "Exploding gradients book (PyTorch + TensorFlow)". Extra options: make lab LAB_ARGS=--no-browser
LAB_ARGS ?=
lab: $(STAMP)
	$(BIN)/python tools/lab.py $(LAB_ARGS)

# Each page of the built book printed by Chromium (tests/test_book_html.py's browser),
# joined into one PDF with a bookmark per page.
pdf: book
	$(BIN)/python tools/book_pdf.py _build/html _build/pdf/book.pdf

clean:
	rm -rf _build $(MATHJAX)
