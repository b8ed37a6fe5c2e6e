#!/usr/bin/env bash
# Re-record peft's answers for the tests that use the `peft_oracle` fixture (see tests/oracle.py).
# peft 0.21.2 works only on transformers releases whose MIN_PEFT_VERSION it meets (<= 5.23), so this
# builds a separate environment pinned to transformers 5.23.0 and runs those tests in record mode.
# Usage: tests/peft_reference/record.sh [environment folder, default .venv-record]
set -euo pipefail
cd "$(dirname "$0")/../.."
env_dir="${1:-.venv-record}"
python3 -m venv "$env_dir"
"$env_dir/bin/pip" install -q torch==2.13.0 -e ".[test]" "transformers==5.23.0"
mapfile -t files < <(grep -rl --include='test_*.py' peft_oracle tests | sort)
# one process: parallel workers would write the same reference files
PEFTKIT_RECORD_PEFT_REFERENCES=1 "$env_dir/bin/python" -m pytest -q -n 0 "${files[@]}"
# The recorded answers must also be what a live run on the same environment compares equal to.
"$env_dir/bin/python" -m pytest -q "${files[@]}"
git status --short tests/peft_reference
