#!/bin/sh
# Registers an instance with curl (the HTTP API), then finds the service's instances with dig
# (plain DNS).
#
#   sh examples/shell/register_and_find.sh [SERVICE] [DNS_SERVER:PORT]
#
# SERVICE defaults to $SRVDNS_SERVICE or "payment"; the server to $SRVDNS_DNS or
# 127.0.0.1:8600; the domain is $SRVDNS_DOMAIN or "service.local". The instance registered is
# <SERVICE>-shell at $SRVDNS_ADDRESS:$SRVDNS_PORT (default 10.0.1.99:8080) on the registry at
# $SRVDNS_REGISTRY (default http://127.0.0.1:8500); SRVDNS_REGISTER=0 skips it. Prints one
# line per instance: target, port, priority, weight, address.
set -eu

service=${1:-${SRVDNS_SERVICE:-payment}}
server=${2:-${SRVDNS_DNS:-127.0.0.1:8600}}
domain=${SRVDNS_DOMAIN:-service.local}
domain=${domain%.}
registry=${SRVDNS_REGISTRY:-http://127.0.0.1:8500}
host=${server%:*}
port=${server##*:}

if [ "${SRVDNS_REGISTER:-1}" != 0 ]; then
  curl -fsS -X PUT "$registry/v1/services/$service/instances/$service-shell" \
    -H 'content-type: application/json' \
    -d "{\"address\": \"${SRVDNS_ADDRESS:-10.0.1.99}\", \"port\": ${SRVDNS_PORT:-8080}}" \
    >/dev/null
fi

# +short SRV lines are "priority weight port target".
dig @"$host" -p "$port" +short "_$service._tcp.$domain" SRV |
  while read -r priority weight srv_port target; do
    address=$(dig @"$host" -p "$port" +short "$target" A | head -n 1)
    [ -n "$address" ] || address=$(dig @"$host" -p "$port" +short "$target" AAAA | head -n 1)
    echo "${target%.} $srv_port $priority $weight $address"
  done
