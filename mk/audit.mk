# Dependency audit: the packages resolved into .venv against PyPI's vulnerability advisories.
# Included by the Makefile (-include mk/*.mk); CACHE, UV, VENV, STAMP and PYTHON come from there.
#
#   audit   pip-audit (pinned, in its own venv under $(CACHE), not in .venv) over `uv pip freeze`
#           of .venv; exit 1 on any known vulnerability not in AUDIT_IGNORE. It needs PyPI only
#           (the JSON API; mk/audit.py explains how it copes with a PyPI that serves only the
#           project JSON). A clean result for the same frozen set is reused for AUDIT_MAX_AGE
#           minutes; `make audit AUDIT_MAX_AGE=0` asks PyPI again. AUDIT_REQUIREMENTS=FILE audits
#           a pinned requirements file instead of .venv (`name==version` lines).

PIP_AUDIT_VERSION ?= 2.10.1
PIP_AUDIT_ENV := $(CACHE)/pip-audit-v$(PIP_AUDIT_VERSION)
PIP_AUDIT := $(PIP_AUDIT_ENV)/bin/pip-audit
AUDIT_CACHE := $(CACHE)/audit
AUDIT_MAX_AGE ?= 720
AUDIT_REQUIREMENTS ?=

# Known vulnerabilities accepted on purpose: each with the reason, and removed once a fix exists.
#   GHSA-w8v5-vhqr-4h9v (PYSEC-2026-2447, CVE-2025-69872): diskcache <= 5.6.3, the latest, has no
#   fixed release. It unpickles cache entries, so whoever can write the cache directory can run
#   code in the reader. It comes in through dvc-data (DVC's own caches under .dvc/, written only
#   by the user running dvc); fissure itself does not use diskcache.
AUDIT_IGNORE := GHSA-w8v5-vhqr-4h9v

.PHONY: audit

$(PIP_AUDIT): | $(UV)
	@echo ">> installing pip-audit $(PIP_AUDIT_VERSION) into $(PIP_AUDIT_ENV)"
	@$(UV) venv -q --allow-existing -p $(PYTHON) $(PIP_AUDIT_ENV)
	@$(UV) pip install -q -p $(PIP_AUDIT_ENV)/bin/python "pip-audit==$(PIP_AUDIT_VERSION)"

audit: $(STAMP) $(PIP_AUDIT) ## audit the packages in .venv for known vulnerabilities (pip-audit, PyPI advisories)
	@set -eo pipefail; mkdir -p $(AUDIT_CACHE); \
	reqs="$(AUDIT_REQUIREMENTS)"; \
	if [ -z "$$reqs" ]; then \
	  reqs=$(AUDIT_CACHE)/requirements-$$$$.txt; trap 'rm -f "$$reqs"' EXIT; \
	  $(UV) pip freeze -q -p $(VENV)/bin/python --exclude-editable > "$$reqs"; \
	fi; \
	ok=$(AUDIT_CACHE)/ok-$$(cat "$$reqs" mk/audit.mk mk/audit.py | sha256sum | cut -c1-32); \
	if [ -n "$$(find "$$ok" -mmin -$(AUDIT_MAX_AGE) 2>/dev/null)" ]; then \
	  echo ">> audit: clean, the same $$(grep -c == "$$reqs") packages were audited less than $(AUDIT_MAX_AGE) min ago"; \
	  exit 0; \
	fi; \
	echo ">> audit: $$(grep -c == "$$reqs") packages against PyPI's advisories (pip-audit $(PIP_AUDIT_VERSION))"; \
	PIP_AUDIT_LOGLEVEL=error $(PIP_AUDIT_ENV)/bin/python mk/audit.py -r "$$reqs" --no-deps --disable-pip \
	  --vulnerability-service pypi --cache-dir $(AUDIT_CACHE)/http --progress-spinner off \
	  $(addprefix --ignore-vuln ,$(AUDIT_IGNORE)); \
	touch "$$ok"
