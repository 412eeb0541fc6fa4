# The two commands of the README. Both install what they need first.
.PHONY: demo discover test bench

# The main job: a simulated node end to end with the bundled netdev driver
# (builds the Go peers on first use, with progress; needs root).
demo:
	@bash scripts/setup.sh
	@.venv/bin/kndkit demo

discover:
	@bash scripts/setup.sh
	@.venv/bin/kndkit discover

test:
	@bash scripts/test.sh

bench:
	@bash scripts/setup.sh
	@bash benches/run.sh
