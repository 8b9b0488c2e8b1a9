#!/usr/bin/env bash
# The command-line walkthrough: build small models, fingerprint and sign them, compare, check the suspects
# against the victim with a calibrated verdict and a signed PDF report, and verify the signed
# evidence as an auditor.
# Run through `make quickstart` (which installs everything first), or directly with reef-forensics on
# the PATH:  bash examples/quickstart.sh [DIR]
set -euo pipefail
DIR=${1:-quickstart-output}
mkdir -p "$DIR"
here=$(cd "$(dirname "$0")" && pwd)
# A passphrase for the demo's throw-away keys only; real keys take yours (never on a command line).
export REEF_KEY_PASSPHRASE=${REEF_KEY_PASSPHRASE:-demo-only-passphrase}

echo "== 1. build a victim, a derivative of it, an unrelated model and three reference models"
python "$here/make_toy_models.py" "$DIR/models"

echo "== 2. make signing keys (P-256, with a development CA)"
[ -f "$DIR/keys/signing-key.pem" ] || reef-forensics keys generate --out "$DIR/keys"

echo "== 3. fingerprint and sign each model on the built-in probe set"
for model in victim suspect-derived suspect-unrelated reference-11 reference-12 reference-13; do
  reef-forensics fingerprint "$DIR/models/$model" --out "$DIR/fingerprints/$model" --overwrite \
    --key "$DIR/keys/signing-key.pem" --cert "$DIR/keys/signer-cert.pem"
done

echo "== 4. compare the derived suspect with the victim, layer by layer"
reef-forensics compare "$DIR/fingerprints/victim" "$DIR/fingerprints/suspect-derived" \
  --json "$DIR/compare-suspect-derived.json"

echo
echo "== 5. check each suspect: calibrated verdict against the reference panel, signed findings"
for suspect in suspect-derived suspect-unrelated; do
  echo "--- $suspect"
  reef-forensics check --victim "$DIR/fingerprints/victim" --suspect "$DIR/fingerprints/$suspect" \
    --victim-model "$DIR/models/victim" \
    --reference "$DIR/fingerprints/reference-11" --reference "$DIR/fingerprints/reference-12" \
    --reference "$DIR/fingerprints/reference-13" \
    --out "$DIR/findings-$suspect" --overwrite --key "$DIR/keys/signing-key.pem" --cert "$DIR/keys/signer-cert.pem" \
    --report "$DIR/report-$suspect.pdf"
done

echo
echo "== 6. verify the signed evidence as an auditor would (trusting only the CA certificate)"
reef-forensics verify "$DIR/fingerprints/victim" --trust "$DIR/keys/ca-cert.pem"
reef-forensics verify "$DIR/findings-suspect-derived" --trust "$DIR/keys/ca-cert.pem"
echo "--- the signed PDF report, every number recomputed from the signed fingerprints"
reef-forensics verify "$DIR/report-suspect-derived.pdf" --trust "$DIR/keys/ca-cert.pem" \
  --evidence "$DIR"/fingerprints/{victim,suspect-derived,reference-11,reference-12,reference-13}

echo
echo "Done. Look in $DIR/: fingerprints/ (signed), findings-*/findings.json (signed verdicts),"
echo "report-*.pdf (signed reports), compare-*.json. The model registry: examples/mlflow_server.sh and"
echo "reef-forensics demo. docs/verify.md shows how to check the evidence with"
echo "openssl alone, and each report's last section how to check it with pdfsig and pyHanko."
