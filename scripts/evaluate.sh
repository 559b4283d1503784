#!/usr/bin/env bash
# The evaluator moved to evaluator/evaluate.sh; this name keeps working.
exec "$(dirname "$0")/../evaluator/evaluate.sh" "$@"
