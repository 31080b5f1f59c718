#!/bin/sh
# One-shot demo (run by docker compose): create a key, submit the example tickets, wait for
# them, and print the first results and the batch's cost.
set -e
until curl -sf "${SLUICE_API_URL:-http://127.0.0.1:8080}/readyz" >/dev/null; do sleep 1; done
SLUICE_API_KEY=$(sluice keys create --tenant demo)
export SLUICE_API_KEY
sluice submit examples/tickets.jsonl --wait | tee /tmp/submit.out
BATCH=$(head -n 1 /tmp/submit.out)
sluice results "$BATCH" -o /tmp/results.jsonl
echo "first results of $BATCH:"
head -n 3 /tmp/results.jsonl
