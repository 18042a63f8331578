# The two set-up commands of the README. Both install everything first (scripts/bootstrap.sh).
# `make test` runs the suite on the checkout, then the same daemon tests on the installed wheel.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: demo test install

install:
	./scripts/bootstrap.sh

demo: install
	$(VENV)/bin/dgx-music demo

# Chromium and ffmpeg judge the page and the audio formats in the tests only: the demo needs neither.
test: install
	./scripts/test-tools.sh
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	./scripts/check-installed.sh
