# Build the Debian package for one Debian release, in a clean build root of that release:
#   make deb SUITE=bookworm   -> dist/nodemedic_<upstream>~deb12u1_amd64.deb  (Debian 12, python3.11)
#   make deb SUITE=trixie     -> dist/nodemedic_<upstream>~deb13u1_amd64.deb  (Debian 13, python3.13)
#   make deb SUITE=forky      -> dist/nodemedic_<upstream>~deb14u1_amd64.deb  (forky/testing, python3.14)
#   make lintian SUITE=...       that release's lintian on that .deb: 0 errors, 0 warnings, or it fails
#   make debs                    all three, each linted
#
# The version follows Debian's backports/security convention, <upstream>~deb<N>u<REV>: a
# Debian 12 build sorts below the Debian 13 build of the same upstream, which sorts below a
# plain <upstream>, so a node moved from Debian 12 to 13 (and its sources.list with it) upgrades
# to the trixie package (tests/unit/test_packaging.py checks this with dpkg --compare-versions).
#
# packaging/buildroot makes (once, cached in /var/cache/nodemedic-buildroot) a debootstrap'ed
# minimal root of SUITE with the Build-Depends and lintian, the way pbuilder and sbuild do, and
# runs dpkg-buildpackage there, read-only and without network: the package gets that release's
# python3, debhelper and dpkg. `make wheels SUITE=...` downloads the pinned, hash-checked wheels
# of packaging/requirements.lock for that release's CPython into dist/wheels/cp3XX/ (once;
# later builds work offline); the source tree is copied with packaging/debian as debian/ into
# dist/build/: the working tree is never written to.
#
# NODEMEDIC_REV=2 make deb SUITE=trixie     builds <upstream>~deb13u2 from the same tree (a changelog
# entry is added in the build copy only), e.g. to try an upgrade.
# NODEMEDIC_VERSION=... overrides the whole version; DIST=/tmp/out builds into /tmp/out.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := deb

PY := /usr/bin/python3
SUITE ?= bookworm
# Debian release number and CPython of each suite the package is built for.
DEBIAN_bookworm := 12
DEBIAN_trixie := 13
DEBIAN_forky := 14
PYTHON_bookworm := 3.11
PYTHON_trixie := 3.13
PYTHON_forky := 3.14
DEBIAN_RELEASE := $(DEBIAN_$(SUITE))
SUITE_PYTHON := $(PYTHON_$(SUITE))
CPTAG := cp$(subst .,,$(SUITE_PYTHON))

PYPROJECT_VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
CHANGELOG_VERSION := $(shell dpkg-parsechangelog -l packaging/debian/changelog -S Version)
NODEMEDIC_REV ?= 1
NODEMEDIC_VERSION ?= $(CHANGELOG_VERSION)~deb$(DEBIAN_RELEASE)u$(NODEMEDIC_REV)
ARCH := $(shell dpkg --print-architecture)

# DIST=/some/dir puts the build and the .deb elsewhere (the tests do); the wheel cache stays.
DIST ?= dist
WHEELS ?= dist/wheels/$(CPTAG)
BUILD := $(DIST)/build
SRC := $(BUILD)/nodemedic-$(NODEMEDIC_VERSION)
LOCK := packaging/requirements.lock
DEB := $(DIST)/nodemedic_$(NODEMEDIC_VERSION)_$(ARCH).deb

# The wheels are for the suite's CPython on x86_64, whatever Python runs pip here. The lock
# holds one hash per wheel file: pip takes the file of this interpreter's tag whose hash is
# listed (pure-python wheels are shared by all three). google-re2 ships manylinux_2_28 wheels only.
PIP_TARGET := --only-binary=:all: --python-version $(SUITE_PYTHON) --implementation cp --abi $(CPTAG) \
	--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
# Only the lock decides what is downloaded: no pip.conf extras, no find-links from the environment.
PIP_ENV := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: deb debs wheels lintian buildroot check-suite version clean

# The version `make deb` builds for SUITE (tests compare them with dpkg --compare-versions).
version: check-suite
	@echo $(NODEMEDIC_VERSION)

check-suite:
	@[ -n "$(DEBIAN_RELEASE)" ] || { echo "make: SUITE=$(SUITE): choose bookworm, trixie or forky" >&2; exit 2; }

buildroot: check-suite
	packaging/buildroot $(SUITE)

deb: check-suite wheels
	@[ "$(ARCH)" = amd64 ] || { echo "make deb: the bundled wheels are x86_64 only, this is $(ARCH)" >&2; exit 1; }
	@[ "$(PYPROJECT_VERSION)" = "$(CHANGELOG_VERSION)" ] || { echo "make deb: pyproject.toml says \
	$(PYPROJECT_VERSION), packaging/debian/changelog says $(CHANGELOG_VERSION)" >&2; exit 1; }
	packaging/buildroot $(SUITE) >/dev/null
	rm -rf $(SRC) && mkdir -p $(SRC)
	cp -a pyproject.toml README.md daemon etc units docs packaging $(SRC)/
	find $(SRC) -depth \( -name __pycache__ -o -name '*.egg-info' \) -exec rm -rf {} +
	cp -a packaging/debian $(SRC)/debian
	cp -a $(WHEELS) $(SRC)/wheels
	# The build copy's changelog names this build's version and suite (debian/rules reads the
	# suite from it to choose the unit variant). Its date is the release entry's plus a few
	# minutes (later, as lintian wants, and the same for every build of one version).
	if [ "$(NODEMEDIC_VERSION)" != "$(CHANGELOG_VERSION)" ]; then \
		{ printf 'nodemedic (%s) %s; urgency=medium\n\n  * Build of %s for Debian %s (%s).\n\n -- %s  %s\n\n' \
			"$(NODEMEDIC_VERSION)" "$(SUITE)" "$(CHANGELOG_VERSION)" "$(DEBIAN_RELEASE)" "$(SUITE)" \
			"$$(dpkg-parsechangelog -l packaging/debian/changelog -S Maintainer)" \
			"$$(date -u -R -d @$$(( $$(dpkg-parsechangelog -l packaging/debian/changelog -S Timestamp) + $(DEBIAN_RELEASE) * 60 + $(NODEMEDIC_REV) )))"; \
		  cat packaging/debian/changelog; } > $(SRC)/debian/changelog; \
	fi
	BUILDROOT_BIND=$(abspath $(BUILD)):/build BUILDROOT_CHDIR=/build/nodemedic-$(NODEMEDIC_VERSION) \
		packaging/buildroot $(SUITE) -- dpkg-buildpackage --build=binary --no-sign
	mv $(BUILD)/nodemedic_$(NODEMEDIC_VERSION)_$(ARCH).deb $(DEB)
	rm -rf $(SRC) $(BUILD)/nodemedic_$(NODEMEDIC_VERSION)_$(ARCH).buildinfo $(BUILD)/nodemedic_$(NODEMEDIC_VERSION)_$(ARCH).changes
	@echo "built $(DEB) (Debian $(DEBIAN_RELEASE), $(SUITE), python$(SUITE_PYTHON))"

# Download into the suite's wheel directory, keeping only files pip verified against the lock.
# A complete directory is reused offline; a changed lock fetches what is missing.
wheels: check-suite
	mkdir -p $(WHEELS)
	$(PIP_ENV) $(PY) -m pip download --quiet --no-deps --require-hashes $(PIP_TARGET) \
		--no-index --find-links $(WHEELS) --dest $(WHEELS) --requirement $(LOCK) 2>/dev/null \
	|| $(PIP_ENV) $(PY) -m pip download --quiet --no-deps --require-hashes $(PIP_TARGET) \
		--dest $(WHEELS) --requirement $(LOCK)

# The suite's own lintian, run in its build root on the .deb built for it.
lintian: check-suite
	BUILDROOT_BIND=$(abspath $(DIST)):/dist packaging/buildroot $(SUITE) -- \
		lintian --fail-on error,warning --display-info /dist/$(notdir $(DEB))

debs:
	for suite in bookworm trixie forky; do $(MAKE) deb lintian SUITE=$$suite; done

clean:
	rm -rf $(BUILD) $(DIST)/nodemedic_*.deb
