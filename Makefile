# tunelab: the two commands of the quick start.
#   make demo   install everything, fine-tune SmolLM2-135M on balanced SMS spam (CPU), predict
#   make test   install everything, run the test suite
# Both are idempotent: a second run reuses the virtual environment and the asset cache.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test install assets test-assets browser lint

$(STAMP): requirements.txt requirements-lock.txt pyproject.toml
	$(PY) -m venv $(VENV)
	# torch first, on its own: a plain `torch` requirement would pull several GB of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt -c requirements-lock.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

assets: install
	$(BIN)/tunelab assets install sms-spam smollm2-135m-instruct

demo: assets
	$(BIN)/tunelab train configs/spam-smollm2.yaml --force
	$(BIN)/tunelab predict runs/spam-smollm2 --input examples/sms.txt

# The browser end-to-end test of `tunelab data review` needs Debian's Chromium.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || echo "chromium not installed: the browser test will be skipped"

test-assets: install
	$(BIN)/tunelab assets install minilm-l6 sms-spam

# The linter CI runs (rules in pyproject.toml); pinned, installed into the same venv.
lint: install
	$(BIN)/pip install -q ruff==0.17.6
	$(BIN)/ruff check src tests bench

test: install test-assets browser lint
	$(BIN)/python -m pytest -q
