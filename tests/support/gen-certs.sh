#!/bin/sh
# gen-certs.sh DIR: make throw-away TLS material for tests, with openssl.
#
# Writes into DIR (created if missing):
#   ca.pem, ca.key              a test CA
#   server.pem, server.key      a certificate for "localhost" and IP 127.0.0.1,
#                               signed by that CA (the leaf alone: a client
#                               must trust ca.pem to accept it)
#   other-ca.pem, other-ca.key  a second CA that signed nothing of ours, for
#                               "unknown CA" tests
#   NAME.pem, NAME.key          for each further argument NAME, a certificate
#                               for the DNS name NAME signed by ca.pem (an MX
#                               host's, say)
# EC P-256 keys keep generation well under a second. Nothing here is secret.
set -eu

dir=${1:?usage: gen-certs.sh DIR [NAME...]}
shift
mkdir -p "$dir"
cd "$dir"

# Quiet on success; on failure show what openssl said.
ossl() {
    if ! openssl "$@" 2>openssl.err; then
        cat openssl.err >&2
        exit 1
    fi
    rm -f openssl.err
}

mkca() { # name, common name
    ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$1.key" -out "$1.pem" -days 3650 -subj "/CN=$2" \
        -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign
}

mkca ca "volley test CA"
mkca other-ca "volley unrelated CA"

ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout server.key -out server.csr -subj "/CN=localhost"
cat > server.ext <<'EXT'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
EXT
ossl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out server.pem -days 3650 -extfile server.ext
rm -f server.csr server.ext ca.srl
chmod 600 ca.key other-ca.key server.key

for name in "$@"; do
    ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$name.key" -out "$name.csr" -subj "/CN=$name"
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:%s\n' \
        "$name" >"$name.ext"
    ossl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out "$name.pem" -days 3650 -extfile "$name.ext"
    rm -f "$name.csr" "$name.ext" ca.srl
    chmod 600 "$name.key"
done
