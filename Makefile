# The two set-up commands of the README. Both install everything first (scripts/bootstrap.sh).
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: demo test install

install:
	./scripts/bootstrap.sh

demo: install
	$(VENV)/bin/dgx-music demo

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
