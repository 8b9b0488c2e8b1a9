#!/usr/bin/env bash
# Screening on registration with a real MLflow server: the server loads the reef-forensics
# registry-store plugin (reef+sqlite), every registration is queued, the worker fingerprints,
# signs and screens each version, and the verdicts appear as tags on the model versions.
#
#   bash examples/mlflow_server.sh DIR [PORT]      (reef-forensics and mlflow on the PATH)
set -euo pipefail
DIR=$(mkdir -p "${1:?usage: mlflow_server.sh DIR [PORT]}" && cd "$1" && pwd)
PORT=${2:-5917}
here=$(cd "$(dirname "$0")" && pwd)
export REEF_KEY_PASSPHRASE=${REEF_KEY_PASSPHRASE:-example-only-passphrase}
export REEF_QUEUE="$DIR/queue.sqlite" HF_HUB_OFFLINE=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
rm -rf "$DIR/mlflow.db" "$DIR/artifacts" "$DIR/queue.sqlite"* "$DIR/work"

echo "== models and keys"
[ -d "$DIR/models/victim" ] || python "$here/make_toy_models.py" "$DIR/models"
[ -f "$DIR/keys/signing-key.pem" ] || reef-forensics keys generate --out "$DIR/keys"

echo "== the MLflow server, with the store plugin for its model registry"
mlflow server --backend-store-uri "sqlite:///$DIR/mlflow.db" \
  --registry-store-uri "reef+sqlite:///$DIR/mlflow.db" \
  --default-artifact-root "$DIR/artifacts" --host 127.0.0.1 --port "$PORT" --workers 1 \
  > "$DIR/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
URL="http://127.0.0.1:$PORT"
for _ in $(seq 1 120); do curl -sf "$URL/health" > /dev/null && break; sleep 0.5; done
curl -sf "$URL/health" > /dev/null || { echo "the server did not start:"; tail "$DIR/server.log"; exit 1; }

cat > "$DIR/reef.toml" <<TOML
tracking_uri = "$URL"
queue = "queue.sqlite"
work_dir = "work"
[signing]
key = "keys/signing-key.pem"
cert = "keys/signer-cert.pem"
TOML
reef-forensics config check --config "$DIR/reef.toml"

echo "== register the protected victim and the references, then let the worker fingerprint them"
python "$here/mlflow_registry.py" register "$DIR" --tracking-uri "$URL" --role victim victim
python "$here/mlflow_registry.py" register "$DIR" --tracking-uri "$URL" --role reference \
  reference-11 reference-12 reference-13
reef-forensics worker --config "$DIR/reef.toml" --until-empty

echo "== register two suspects: each is queued at registration, fingerprinted and screened"
python "$here/mlflow_registry.py" register "$DIR" --tracking-uri "$URL" suspect-derived suspect-unrelated
reef-forensics worker --config "$DIR/reef.toml" --until-empty
python "$here/mlflow_registry.py" show "$DIR" --tracking-uri "$URL"
