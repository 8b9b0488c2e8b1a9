#!/usr/bin/env bash
# An auditor checks a signed report with public tools only (poppler, NSS, openssl, coreutils,
# python3's json module), trusting nothing but the CA certificate: no reef-forensics code runs.
#
#   bash examples/auditor.sh REPORT.pdf CA_CERT.pem [WORKDIR]
# The same steps, explained one by one: docs/verify.md, sections 7 and 9.
set -euo pipefail
REPORT=${1:?usage: auditor.sh REPORT.pdf CA_CERT.pem [WORKDIR]}
CA=${2:?usage: auditor.sh REPORT.pdf CA_CERT.pem [WORKDIR]}
WORK=${3:-$(mktemp -d)}
mkdir -p "$WORK" && rm -rf "$WORK/nss" "$WORK/attached" "$WORK/findings"
json() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); [v:=v[int(k) if k.isdigit() else k] for k in sys.argv[2].split(".")]; print(v)' "$@"; }

echo "== 1. the PDF signature (pdfsig, with the CA in an NSS database)"
mkdir "$WORK/nss" && certutil -N -d "sql:$WORK/nss" --empty-password
certutil -A -d "sql:$WORK/nss" -n auditor-ca -t "CT,C,C" -i "$CA"
pdfsig -nssdir "sql:$WORK/nss" "$REPORT" | tee "$WORK/pdfsig.txt"
for expected in "Signature is Valid." "Total document signed" "Certificate is Trusted."; do
  grep -q "$expected" "$WORK/pdfsig.txt" || { echo "FAILED: pdfsig does not say: $expected"; exit 1; }
done

echo "== 2. the attached findings and their signature bundle"
mkdir "$WORK/attached" "$WORK/findings" && pdfdetach -saveall -o "$WORK/attached" "$REPORT"
cp "$WORK/attached/findings.json" "$WORK/findings/findings.json"
bundle="$WORK/attached/findings.model.sig"
json "$bundle" dsseEnvelope.payload | base64 -d > "$WORK/payload.json"
json "$bundle" dsseEnvelope.signatures.0.sig | base64 -d > "$WORK/sig.der"

echo "== 3. the signer's certificate chains to the CA, and its key signed the statement"
json "$bundle" verificationMaterial.x509CertificateChain.certificates.0.rawBytes | base64 -d > "$WORK/leaf.der"
openssl x509 -inform DER -in "$WORK/leaf.der" -out "$WORK/leaf.pem"
openssl verify -CAfile "$CA" -purpose smimesign "$WORK/leaf.pem"
openssl x509 -in "$WORK/leaf.pem" -noout -pubkey > "$WORK/leaf.pub.pem"
PT=application/vnd.in-toto+json
{ printf 'DSSEv1 %d %s %d ' "${#PT}" "$PT" "$(stat -c %s "$WORK/payload.json")"; cat "$WORK/payload.json"; } > "$WORK/pae.bin"
openssl dgst -sha256 -verify "$WORK/leaf.pub.pem" -signature "$WORK/sig.der" "$WORK/pae.bin"

echo "== 4. findings.json is the file that was signed"
python3 -c 'import json,sys; [print(r["digest"] + "  " + r["name"]) for r in json.load(open(sys.argv[1]))["predicate"]["resources"]]' "$WORK/payload.json" > "$WORK/SHA256SUMS"
(cd "$WORK/findings" && sha256sum --check --strict "$WORK/SHA256SUMS")

echo "== 5. what the findings say"
echo "verdict: $(json "$WORK/findings/findings.json" verdict), score $(json "$WORK/findings/findings.json" score), p-value $(json "$WORK/findings/findings.json" p_value)"
echo "AUDIT PASSED: $REPORT"
