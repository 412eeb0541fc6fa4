# The two commands of the README. Both install what they need first.
.PHONY: discover test bench

discover:
	@bash scripts/setup.sh
	@.venv/bin/kndkit discover

test:
	@bash scripts/test.sh

bench:
	@bash scripts/setup.sh
	@bash benches/run.sh
