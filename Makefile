# The two commands a fresh machine needs; each does its own set-up.
#   make demo   run the main job on the embedded default (no servers to install)
#   make test   run every test tier (unit, service, end-to-end)
.PHONY: setup demo serve test lint bench

VENV := .venv/bin

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/tailsynth demo

serve: setup
	$(VENV)/tailsynth serve

test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(VENV)/python -m pytest -q -p no:cacheprovider --durations=15

lint: setup
	$(VENV)/ruff check shared services tests benchmarks
	$(VENV)/mypy --follow-imports=silent shared services/api services/trainer services/ood_filter \
		services/generator/service.py services/generator/tasks.py \
		services/cli.py services/client services/demo.py

bench: setup
	$(VENV)/python benchmarks/ingest_throughput.py
