# Build the Debian package:   make deb      -> dist/nodemedic_<version>_amd64.deb
# Check it:                   make lintian  (0 errors, 0 warnings, or it fails)
#
# `make deb` downloads the pinned, hash-checked wheels of packaging/requirements.lock into
# dist/wheels/ (once; later builds work offline), copies the source tree with packaging/debian
# as debian/ into dist/build/, and runs dpkg-buildpackage there: the working tree is never
# written to. Build dependencies: see Build-Depends in packaging/debian/control.
#
# NODEMEDIC_VERSION=0.1.0+rebuild1 make deb   builds the same tree under another version (a
# changelog entry is added in the build copy only), e.g. to try an upgrade.
# make deb DIST=/tmp/out                       builds into /tmp/out instead of dist/.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := deb

PY := /usr/bin/python3
PYPROJECT_VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
CHANGELOG_VERSION := $(shell dpkg-parsechangelog -l packaging/debian/changelog -S Version)
NODEMEDIC_VERSION ?= $(CHANGELOG_VERSION)
ARCH := $(shell dpkg --print-architecture)

# DIST=/some/dir puts the build and the .deb elsewhere (the tests do); the wheel cache stays.
DIST ?= dist
WHEELS ?= dist/wheels
BUILD := $(DIST)/build
SRC := $(BUILD)/nodemedic-$(NODEMEDIC_VERSION)
LOCK := packaging/requirements.lock
DEB := $(DIST)/nodemedic_$(NODEMEDIC_VERSION)_$(ARCH).deb

# The wheels are for Debian 12's CPython 3.11 on x86_64, whatever Python runs pip here.
PIP_TARGET := --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
	--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
# Only the lock decides what is downloaded: no pip.conf extras, no find-links from the environment.
PIP_ENV := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: deb wheels lintian clean

deb: wheels
	@[ "$(ARCH)" = amd64 ] || { echo "make deb: the bundled wheels are x86_64 only, this is $(ARCH)" >&2; exit 1; }
	@[ "$(PYPROJECT_VERSION)" = "$(CHANGELOG_VERSION)" ] || { echo "make deb: pyproject.toml says \
	$(PYPROJECT_VERSION), packaging/debian/changelog says $(CHANGELOG_VERSION)" >&2; exit 1; }
	rm -rf $(SRC) && mkdir -p $(SRC)
	cp -a pyproject.toml README.md daemon etc units docs packaging $(SRC)/
	find $(SRC) -depth \( -name __pycache__ -o -name '*.egg-info' \) -exec rm -rf {} +
	cp -a packaging/debian $(SRC)/debian
	cp -a $(WHEELS) $(SRC)/wheels
	if [ "$(NODEMEDIC_VERSION)" != "$(CHANGELOG_VERSION)" ]; then \
		{ printf 'nodemedic (%s) bookworm; urgency=medium\n\n  * Rebuild of %s.\n\n -- %s  %s\n\n' \
			"$(NODEMEDIC_VERSION)" "$(CHANGELOG_VERSION)" \
			"$$(dpkg-parsechangelog -l packaging/debian/changelog -S Maintainer)" "$$(date -R)"; \
		  cat packaging/debian/changelog; } > $(SRC)/debian/changelog; \
	fi
	cd $(SRC) && dpkg-buildpackage --build=binary --no-sign
	mv $(BUILD)/nodemedic_$(NODEMEDIC_VERSION)_$(ARCH).deb $(DEB)
	rm -rf $(SRC)
	@echo "built $(DEB)"

# Download into a temporary directory, then keep only files pip verified against the lock.
# A complete dist/wheels/ is reused offline; a changed lock fetches what is missing.
wheels:
	mkdir -p $(WHEELS)
	$(PIP_ENV) $(PY) -m pip download --quiet --no-deps --require-hashes $(PIP_TARGET) \
		--no-index --find-links $(WHEELS) --dest $(WHEELS) --requirement $(LOCK) 2>/dev/null \
	|| $(PIP_ENV) $(PY) -m pip download --quiet --no-deps --require-hashes $(PIP_TARGET) \
		--dest $(WHEELS) --requirement $(LOCK)

lintian:
	lintian --fail-on error,warning --display-info $(DEB)

clean:
	rm -rf $(BUILD) $(DIST)/nodemedic_*.deb
