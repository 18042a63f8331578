# The two set-up commands of the README. Both install everything first (scripts/bootstrap.sh).
# `make test` runs the suite on the checkout, then the same daemon tests on the installed wheel.
VENV ?= .venv
PYTEST_ARGS ?=
# pytest-xdist workers: one more than the cores, as many tests wait on a daemon they started.
# Tests that share something of the machine carry one xdist_group and run on one worker.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
XDIST = -n $(TEST_WORKERS) --dist loadgroup

.PHONY: demo test install

install:
	./scripts/bootstrap.sh

demo: install
	$(VENV)/bin/dgx-music demo

# Chromium and ffmpeg judge the page and the audio formats in the tests only: the demo needs neither.
# The wheel is built and installed into its DESTDIR (pip: mostly waiting on the disk) beside the
# suite, its log shown after it; its daemon tests run once the suite is done.
test: install
	./scripts/test-tools.sh
	@mkdir -p .check-installed
	@./scripts/check-installed.sh install >.check-installed/install-phase.log 2>&1 & installing=$$!; \
	echo "make test: installing the wheel beside the suite (log: .check-installed/install-phase.log)"; \
	$(VENV)/bin/python -m pytest $(XDIST) $(PYTEST_ARGS); suite=$$?; \
	wait $$installing; installed=$$?; \
	cat .check-installed/install-phase.log; \
	[ $$installed = 0 ] || echo "make test: scripts/check-installed.sh install failed ($$installed)"; \
	[ $$suite = 0 ] && [ $$installed = 0 ]
	./scripts/check-installed.sh test $(XDIST)
