# mtl-book: `make book` builds the book, `make test` runs every test. See README.md.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JB     := $(BIN)/jupyter-book
PROFILE ?= $(or $(MTL_PROFILE),full)

.PHONY: help venv book book-quick book-student test unit nbval book-check-build check-book assignments \
        grade serve bench reproduce results-status clean clean-all

help:
	@echo "make book          build the book (executes every chapter, profile '$(PROFILE)') into _build/html"
	@echo "make test          unit tests + every chapter under nbval (quick) + warnings-as-errors book build"
	@echo "make check-book    open every built page in headless Chromium, offline; screenshots in _build/screenshots"
	@echo "                   (OVERFLOW=warn lists code/output/table blocks wider than their box without failing)"
	@echo "make assignments   write the student notebooks to notebooks/assignments/"
	@echo "make book-student  build the book with solutions hidden into _build/student/html"
	@echo "make grade SUBMISSIONS=dir   run every student notebook under dir, every check's result into _build/grades.csv"
	@echo "make serve         serve _build/html on http://127.0.0.1:8000"
	@echo "make bench         run the benchmarks in benchmarks/"
	@echo "make results-status  one line per grid: runs with a result out of the planned ones"
	@echo "make reproduce     run every grid in experiments/ (resumable) into results/ (JOBS processes share the runs; NPROC=2: torchrun)"
	@echo "make clean         remove _build (make clean-all also removes .venv and data caches)"

# The virtual environment, created with the Python that runs make; reinstalled when the requirements change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

book: $(STAMP)
	MTL_PROFILE=$(PROFILE) $(JB) build . --builder html
	@echo "open _build/html/index.html"

book-student: $(STAMP)
	$(BIN)/python tools/student_book.py _build/student_src
	MTL_PROFILE=$(PROFILE) $(JB) build _build/student_src --path-output _build/student $(JBFLAGS)
	$(BIN)/python tools/student_book.py --check _build/student/_build/html
	@echo "open _build/student/_build/html/index.html"

test: $(STAMP)
	MTL_PROFILE=quick MPLBACKEND=Agg $(BIN)/python -m pytest
	MTL_PROFILE=quick $(JB) build . -W -n --keep-going
	$(MAKE) book-student PROFILE=quick JBFLAGS="-W -n --keep-going"

unit: $(STAMP)
	MTL_PROFILE=quick $(BIN)/python -m pytest tests

nbval: $(STAMP)
	MTL_PROFILE=quick $(BIN)/python -m pytest notebooks

# A code, output or table block wider than its box at 1280 px fails its page (OVERFLOW=warn: listed only;
# OVERFLOW=off: not measured). Code cells are wrapped at 88 columns (tests/test_code_width.py).
OVERFLOW ?= fail
check-book: $(STAMP)
	@test -d _build/html || { echo "no _build/html: run 'make book' (or 'make test') first"; exit 2; }
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install --quiet "playwright>=1.48,<2"
	$(BIN)/python -m pytest -q tests/test_check_book.py   # the checker catches what it must
	$(BIN)/python tools/check_book.py --html _build/html --screenshots _build/screenshots --overflow $(OVERFLOW)

assignments: $(STAMP)
	$(BIN)/python -m mtlutils.assignments

# Grading: every notebook under SUBMISSIONS runs in a fresh kernel (quick profile, GRADE_TIMEOUT seconds for
# the whole notebook); every mtlutils.checks result, and each notebook's own status, goes to GRADES (CSV).
GRADES ?= _build/grades.csv
GRADE_TIMEOUT ?= 900
grade: $(STAMP)
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=dir (for example SUBMISSIONS=notebooks/assignments)"; exit 2; }
	$(BIN)/python tools/grade.py "$(SUBMISSIONS)" --out "$(GRADES)" --timeout $(GRADE_TIMEOUT)

serve:
	$(PYTHON) -m http.server --directory _build/html --bind 127.0.0.1 8000

bench: $(STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# Every experiment grid (experiments/*.toml): finished runs are skipped, interrupted ones resume.
# JOBS processes (one CPU thread each: small networks use one core better than two threads do) work through
# all grids together, each run under a lock, so no core idles while another grid still has runs; then the
# summaries are written. NPROC=N instead trains every run with N processes (torchrun +
# DistributedDataParallel; one GPU each when CUDA is present), one grid after the other.
NPROC ?= 1
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
EXPERIMENTS ?= $(sort $(wildcard experiments/*.toml))
reproduce: $(STAMP)
ifeq ($(NPROC),1)
	@start=$$(date +%s); pids=""; \
	for lane in $$(seq $(JOBS)); do \
	  OMP_NUM_THREADS=1 MTL_PROFILE=$(PROFILE) $(BIN)/python -m mtlutils.experiments run $(EXPERIMENTS) \
	    --no-progress > >(sed "s/^/[lane $$lane] /") 2>&1 & pids="$$pids $$!"; \
	done; fail=0; for pid in $$pids; do wait $$pid || fail=1; done; \
	MTL_PROFILE=$(PROFILE) $(BIN)/python -m mtlutils.experiments aggregate $(EXPERIMENTS) && \
	MTL_PROFILE=$(PROFILE) $(BIN)/python -m mtlutils.experiments status $(EXPERIMENTS) && \
	echo "reproduce: finished in $$(( $$(date +%s) - start )) s" && exit $$fail
else
	MTL_PROFILE=$(PROFILE) $(BIN)/torchrun --standalone --nproc_per_node=$(NPROC) -m mtlutils.experiments run $(EXPERIMENTS)
endif

clean:
	rm -rf _build

clean-all: clean
	rm -rf $(VENV) data/cache

# Which grids are complete (the chapters judge complete grids only and mark the others pending).
results-status: $(STAMP)
	@MTL_PROFILE=$(PROFILE) $(BIN)/python -m mtlutils.experiments status $(EXPERIMENTS)
