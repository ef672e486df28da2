# The two commands a newcomer needs: `make run` and `make test`. Everything else installs itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Commands the tests run that no wheel ships, as command:Debian-package pairs. A command given by its path is
# looked for there: sshd lives in /usr/sbin, which a non-root PATH often lacks.
SYSTEM_PACKAGES := zstd:zstd curl:curl /usr/sbin/sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client \
	ssh-keyscan:openssh-client sudo:sudo

.PHONY: venv run test lint format bench clean system-packages

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ahop needs Python 3.11 or newer; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,test,dev]'
	touch $(STAMP)

# `make run DEMO_HOSTS=3` also starts three local SSH hosts and adds them to the inventory (label demo).
run: venv
	$(BIN)/ahop dev$(if $(DEMO_HOSTS), --demo-hosts $(DEMO_HOSTS))

test: venv system-packages
	$(BIN)/python -m pytest

# Installs what is missing with apt-get when run as root (as CI is); otherwise names the command to run.
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
		program="$${pair%%:*}"; package="$${pair#*:}"; \
		case "$$program" in /*) test -x "$$program" ;; *) command -v "$$program" >/dev/null 2>&1 ;; esac \
			|| case "$$missing " in *" $$package "*) ;; *) missing="$$missing $$package" ;; esac; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing; \
		else \
			echo "the tests need:$$missing; install them with: sudo apt-get install -y$$missing" >&2; exit 1; \
		fi; \
	fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: venv
	$(BIN)/python -m bench.snapshot
	$(BIN)/python -m bench.imports
	$(BIN)/python -m bench.tasks
	$(BIN)/python -m bench.gc
	$(BIN)/python -m bench.verify
	$(BIN)/python -m bench.targets

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
