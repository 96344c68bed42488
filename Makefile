# Tests on a fresh machine (Python 3.11 and root): `make test`. See CONTRIBUTING.md, "Tests".
PYTEST := .venv/bin/pytest -p no:cacheprovider -q
ARGS ?=

.PHONY: test bootstrap sanity unit integration docker-up docker-down clean demo molecule test-matrix

test:                   ## everything: bootstrap, sanity, unit, integration; one summary line
	@scripts/test.sh

bootstrap:              ## system packages, .venv, the collection symlink (idempotent)
	@scripts/bootstrap.sh

sanity: bootstrap       ## ansible-test sanity on a snapshot of the working tree (ARGS="--test pylint")
	@scripts/sanity.sh $(ARGS)

unit: bootstrap         ## pytest tests/unit (ARGS="-k name")
	@$(PYTEST) tests/unit $(ARGS)

integration: bootstrap  ## pytest tests/integration against real services (ARGS="-k name")
	@$(PYTEST) tests/integration $(ARGS)

docker-up: bootstrap    ## start a Docker Engine if none answers, build the test image
	@scripts/docker-engine.sh up && scripts/docker-engine.sh image

docker-down:            ## stop the Docker Engine if the harness started it
	@scripts/docker-engine.sh down

clean:                  ## remove test outputs (keeps .venv and the symlink)
	rm -rf .build/sanity .build/test-results

demo:                   ## the one-command demo: sample PostgreSQL (+ Docker volume), daily.yml, dr_drill.yml
	@scripts/demo.sh

molecule: bootstrap     ## molecule scenarios of the roles against the harness's real services
	@$(PYTEST) tests/integration/test_roles_molecule.py $(ARGS)

test-matrix: bootstrap  ## the second version leg, not in `make test`: sanity, unit, ansible-lint on ansible-core 2.21 / Python 3.12
	@scripts/matrix.sh $(ARGS)
