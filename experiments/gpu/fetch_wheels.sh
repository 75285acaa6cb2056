#!/usr/bin/env bash
# The device machine has no package index: it lacks hydra-core, omegaconf and antlr4-python3-runtime, so
# their pure-Python wheels (about 400 KB) are fetched here first, into experiments/gpu/wheels (git-ignored),
# and travel with the working tree (the device tool's `carry: ["experiments/gpu/wheels"]`).
#     bash experiments/gpu/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
mkdir -p wheels
"$PY" -m pip download --quiet --no-deps -d wheels hydra-core==1.3.8 omegaconf==2.3.1
"$PY" -m pip wheel --quiet --no-deps -w wheels antlr4-python3-runtime==4.9.3   # only an sdist is published
ls wheels
