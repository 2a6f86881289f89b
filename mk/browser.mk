# The web UI's browser test (tests/api/test_ui_browser.py) drives Debian's headless Chromium with
# Playwright for Python (executable_path=/usr/bin/chromium); never `playwright install`, which
# downloads a browser build. Included by the Makefile (-include mk/*.mk).
#   make chromium        make sure /usr/bin/chromium is there (installs it with apt-get when root)

.PHONY: chromium

chromium: ## make sure Chromium is there for the web UI's browser test (installs it with apt-get when root)
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo ">> installing Chromium for the web UI's browser test (Debian's chromium)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; \
	else \
		echo "the web UI's browser test needs /usr/bin/chromium: apt-get install chromium (it skips with a message without it)" >&2; \
	fi

# `make test` gets Chromium too (a prerequisite added here, beside the Makefile's venv and java)
test: chromium
