#!/usr/bin/env python3
"""Find the instances of a service through plain DNS, with dnspython, and pick one by weight.

One SRV query to srvdns (`_<service>._tcp.<domain>`) gives every healthy instance: its port,
priority, weight and a target name, whose address comes as glue in the same answer. No srvdns
library, no HTTP: any DNS client works the same way.

    python3 examples/python/find_service.py [SERVICE] [DNS_SERVER:PORT]

SERVICE defaults to $SRVDNS_SERVICE or "payment"; the server to $SRVDNS_DNS or
127.0.0.1:8600; the domain is $SRVDNS_DOMAIN or "service.local". Prints one line per instance
(target, port, priority, weight, address), then the instance a client would pick.
"""

import os
import random
import sys

import dns.rdatatype
import dns.resolver


def weighted_pick(records):
    """RFC 2782: the lowest priority wins; within it, pick at random in proportion to weight
    (weight 0 only when nothing else is left)."""
    best = min(r.priority for r in records)
    group = [r for r in records if r.priority == best]
    weights = [r.weight for r in group]
    if sum(weights) == 0:
        return random.choice(group)
    return random.choices(group, weights=weights)[0]


def main():
    service = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SRVDNS_SERVICE", "payment")
    server = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("SRVDNS_DNS", "127.0.0.1:8600")
    domain = os.environ.get("SRVDNS_DOMAIN", "service.local").rstrip(".")
    host, _, port = server.rpartition(":")

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host.strip("[]")]
    resolver.port = int(port)
    resolver.lifetime = 5.0

    name = f"_{service}._tcp.{domain}."
    try:
        answer = resolver.resolve(name, "SRV")
    except dns.resolver.NXDOMAIN:
        print(f"find_service: no service {service!r} ({name} does not exist)", file=sys.stderr)
        return 1
    except dns.resolver.NoAnswer:
        print(f"find_service: {service!r} has no healthy instance right now", file=sys.stderr)
        return 1

    # The targets' addresses come as glue in the additional section.
    glue = {}
    for rrset in answer.response.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            glue.setdefault(rrset.name.to_text(), []).extend(r.address for r in rrset)

    records = list(answer)
    addresses = {}
    for srv in records:
        target = srv.target.to_text()
        found = glue.get(target)
        if not found:  # no glue (a large answer): ask for it
            found = [r.address for r in resolver.resolve(target, "A")]
        addresses[target] = found[0]
        print(f"{target.rstrip('.')} {srv.port} {srv.priority} {srv.weight} {found[0]}")

    pick = weighted_pick(records)
    print(f"picked: {addresses[pick.target.to_text()]}:{pick.port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
