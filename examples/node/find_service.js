#!/usr/bin/env node
// Finds the instances of a service through plain DNS: Node's dns.promises.Resolver, pointed
// at srvdns with setServers, and resolveSrv.
//
//   node examples/node/find_service.js [SERVICE] [DNS_SERVER:PORT]
//
// SERVICE defaults to $SRVDNS_SERVICE or "payment"; the server to $SRVDNS_DNS or
// 127.0.0.1:8600; the domain is $SRVDNS_DOMAIN or "service.local". Prints one line per
// instance: target, port, priority, weight, address.
'use strict';

const { Resolver } = require('node:dns').promises;

async function main() {
  const service = process.argv[2] || process.env.SRVDNS_SERVICE || 'payment';
  const server = process.argv[3] || process.env.SRVDNS_DNS || '127.0.0.1:8600';
  const domain = (process.env.SRVDNS_DOMAIN || 'service.local').replace(/\.$/, '');

  const resolver = new Resolver({ timeout: 2000, tries: 2 });
  resolver.setServers([server]);

  const records = await resolver.resolveSrv(`_${service}._tcp.${domain}`);
  // Lowest priority first; within a priority, heavier first.
  records.sort((a, b) => a.priority - b.priority || b.weight - a.weight);
  for (const srv of records) {
    let addresses;
    try {
      addresses = await resolver.resolve4(srv.name);
    } catch {
      addresses = await resolver.resolve6(srv.name);
    }
    console.log(`${srv.name} ${srv.port} ${srv.priority} ${srv.weight} ${addresses[0]}`);
  }
}

main().catch((err) => {
  console.error(`find_service: ${err.message}`);
  process.exit(1);
});
