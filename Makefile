# The two commands a newcomer needs: `make demo` and `make test`.
PY := .venv/bin/python
export HARDHAT_DISABLE_TELEMETRY_PROMPT := true

.PHONY: bootstrap demo test test-fast check devnet-up devnet-down bench clean

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	@$(PY) -m shardnet.demo

test: bootstrap
	@$(PY) -m pytest -q $(PYTEST_ARGS)

# every test that needs no devnet (no chain, IPFS daemon or node process) and is not a sweep: about a minute
test-fast: bootstrap
	@$(PY) -m pytest -q -m "not stack and not slow" $(PYTEST_ARGS)

# lint, format and type checks (CI runs them before the tests)
check: bootstrap
	@.venv/bin/ruff check .
	@.venv/bin/ruff format --check .
	@.venv/bin/mypy

devnet-up: bootstrap
	@.venv/bin/shardnet devnet up

devnet-down:
	@.venv/bin/shardnet devnet down

bench: bootstrap
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf build .devnet .pytest_cache
