#!/usr/bin/env bash
# The quick start: build three small models, fingerprint them, compare the suspects with the
# victim. Run through `make demo` (which installs everything first), or directly with
# reef-forensics on the PATH:  bash examples/quickstart.sh [DIR]
set -euo pipefail
DIR=${1:-demo-output}
mkdir -p "$DIR"
here=$(cd "$(dirname "$0")" && pwd)

echo "== 1. build a victim model, a derivative of it, and an unrelated model"
python "$here/make_toy_models.py" "$DIR/models"

echo "== 2. fingerprint each model on the built-in probe set"
for model in victim suspect-derived suspect-unrelated; do
  reef-forensics fingerprint "$DIR/models/$model" --out "$DIR/fingerprints/$model" --overwrite
done

echo "== 3. compare each suspect with the victim"
for suspect in suspect-derived suspect-unrelated; do
  echo
  echo "--- victim vs $suspect"
  reef-forensics compare "$DIR/fingerprints/victim" "$DIR/fingerprints/$suspect" \
    --json "$DIR/compare-$suspect.json"
done

echo
echo "Done. Fingerprints are in $DIR/fingerprints/, comparison records in $DIR/compare-*.json"
