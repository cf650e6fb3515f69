# The two commands of the README: `make demo` and `make test`. Both install what is
# missing first (Debian packages, the .venv), idempotently.
.PHONY: setup demo test test-fast lint bench clean-demo

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	.venv/bin/pytest -q

test-fast: setup
	.venv/bin/pytest -q -m "not slow"

lint: setup
	.venv/bin/ruff check vpshost tests
	.venv/bin/mypy vpshost

bench: setup
	.venv/bin/vps bench lifecycle

clean-demo:
	.venv/bin/vps delete --force demo-small demo-big
