#!/usr/bin/env bash
# The quick start: build small models, fingerprint and sign them, compare, check the suspects
# against the victim with a calibrated verdict and a signed PDF report, and verify the signed
# evidence as an auditor.
# Run through `make demo` (which installs everything first), or directly with reef-forensics on
# the PATH:  bash examples/quickstart.sh [DIR]
set -euo pipefail
DIR=${1:-demo-output}
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
echo "== 7. the model registry: MLflow on a local SQLite store, no server; the reef+sqlite store"
echo "      plugin queues each registration, the worker fingerprints, signs and screens it"
rm -rf "$DIR/mlflow.db" "$DIR/artifacts" "$DIR/queue.sqlite"* "$DIR/registry-work"
export REEF_QUEUE="$DIR/queue.sqlite"
cat > "$DIR/reef.toml" <<EOF
tracking_uri = "sqlite:///$(cd "$DIR" && pwd)/mlflow.db"
queue = "queue.sqlite"
probes = "builtin:default"
work_dir = "registry-work"
[signing]
key = "keys/signing-key.pem"
cert = "keys/signer-cert.pem"
EOF
reef-forensics config check --config "$DIR/reef.toml"
python "$here/mlflow_registry.py" register "$DIR" --role victim victim
python "$here/mlflow_registry.py" register "$DIR" --role reference reference-11 reference-12 reference-13
reef-forensics worker --config "$DIR/reef.toml" --until-empty
python "$here/mlflow_registry.py" register "$DIR" suspect-derived suspect-unrelated
reef-forensics worker --config "$DIR/reef.toml" --until-empty
python "$here/mlflow_registry.py" show "$DIR"

echo
echo "Done. Look in $DIR/: fingerprints/ (signed), findings-*/findings.json (signed verdicts),"
echo "report-*.pdf (signed reports), compare-*.json, mlflow.db and artifacts/ (the registry: each"
echo "version's signed fingerprint and screening under reef/); docs/verify.md shows how to check them with"
echo "openssl alone, and each report's last section how to check it with pdfsig and pyHanko."
