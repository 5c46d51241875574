// Drives the npm `consul` client against srvdns, exactly as application code would.
//
// Usage: CONSUL_HTTP_ADDR=127.0.0.1:8500 [CONSUL_HTTP_TOKEN=…] node node_client.js SERVICE NET
//
// SERVICE is the service name to use; NET the first three octets of the instances' addresses
// (`10.0.5` registers 10.0.5.1, 10.0.5.2 and 10.0.5.3). On success, instances 1 (tag `v2`, a
// passing TTL check) and 2 (tag `v1`, no check) stay registered for the caller to find over
// DNS, and instance 3 has been deregistered. Any mismatch exits non-zero with a message.
//
// With HTTP_CHECK_URL set (a local HTTP server answering 200), it also registers
// `SERVICE-http` (127.0.0.1) with an HTTP check on that URL and waits until
// `health.service({passing: true})` lists it; that needs srvdns's active health engine.
"use strict";

const { EventEmitter } = require("node:events");
const Consul = require("consul");

function fail(message) {
  console.error(`MISMATCH: ${message}`);
  process.exit(1);
}

function expect(condition, message) {
  if (!condition) fail(message);
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Options that make a call answer `[response, body]`, for the X-Consul-Index header. */
function withResponse(opts) {
  const ctx = new EventEmitter();
  ctx.includeResponse = true;
  return { ...opts, ctx };
}

async function main() {
  const [service, net] = process.argv.slice(2);
  const [host, port] = process.env.CONSUL_HTTP_ADDR.split(":");
  const token = process.env.CONSUL_HTTP_TOKEN || undefined;
  const defaults = token ? { token } : undefined;
  const client = new Consul({ host, port, defaults });
  const watcher = new Consul({ host, port, defaults });
  console.log(`npm consul ${require("consul/package.json").version} against ${host}:${port}`);

  const ids = [1, 2, 3].map((n) => `${service}-${n}`);
  const addresses = [1, 2, 3].map((n) => `${net}.${n}`);
  const checkId = `service:${ids[0]}`;

  // Register with tags, a TTL check and DeregisterCriticalServiceAfter.
  await client.agent.service.register({
    name: service,
    id: ids[0],
    address: addresses[0],
    port: 8080,
    tags: ["v2", "primary"],
    meta: { version: "2.1.0" },
    check: { ttl: "30s", deregistercriticalserviceafter: "1m" },
  });
  for (const i of [1, 2]) {
    await client.agent.service.register({
      name: service,
      id: ids[i],
      address: addresses[i],
      port: 8080,
      tags: ["v1"],
    });
  }

  const services = await client.agent.service.list();
  const mine = services[ids[0]];
  expect(mine, `${ids[0]} in agent.service.list(): ${JSON.stringify(services)}`);
  expect(mine.Service === service, `Service: ${JSON.stringify(mine)}`);
  expect(same(mine.Tags, ["v2", "primary"]), `Tags: ${JSON.stringify(mine)}`);
  expect(same(mine.Meta, { version: "2.1.0" }), `Meta: ${JSON.stringify(mine)}`);
  expect(mine.Port === 8080 && mine.Address === addresses[0], `address: ${JSON.stringify(mine)}`);

  const passingIds = async () =>
    (await client.health.service({ service, passing: true })).map((e) => e.Service.ID).sort();

  // A TTL check starts critical, as in Consul, until its first update.
  expect(same(await passingIds(), ids.slice(1)), `before pass: ${await passingIds()}`);
  await client.agent.check.pass({ id: checkId, note: "ready" });
  expect(same(await passingIds(), ids), `after pass: ${await passingIds()}`);

  const tagged = await client.health.service({ service, passing: true, tag: "v2" });
  expect(tagged.length === 1, `tag=v2 selects one: ${JSON.stringify(tagged)}`);
  const entry = tagged[0];
  expect(entry.Service.ID === ids[0] && entry.Service.Port === 8080, `Service: ${JSON.stringify(entry)}`);
  expect(entry.Node.Datacenter === "dc1", `Node: ${JSON.stringify(entry.Node)}`);
  expect(
    same(entry.Checks.map((c) => [c.CheckID, c.Status, c.Output]), [[checkId, "passing", "ready"]]),
    `Checks: ${JSON.stringify(entry.Checks)}`,
  );
  expect(
    entry.Checks[0].Definition.DeregisterCriticalServiceAfter === "1m0s",
    `DeregisterCriticalServiceAfter kept: ${JSON.stringify(entry.Checks[0])}`,
  );

  // A second client's blocking query wakes within a second of a change.
  const [response] = await client.health.service(withResponse({ service }));
  const index = response.headers["x-consul-index"];
  expect(index && Number(index) > 0, `X-Consul-Index: ${index}`);
  let wokeAt;
  const blocking = watcher.health
    .service(withResponse({ service, index, wait: "30s" }))
    .then((answer) => {
      wokeAt = performance.now();
      return answer;
    });
  await sleep(500);
  expect(wokeAt === undefined, "the blocking query waits for a change");
  const changedAt = performance.now();
  await client.agent.check.fail({ id: checkId, note: "down" });
  const [woken, nodes] = await blocking;
  const latency = wokeAt - changedAt;
  expect(latency < 1000, `the blocking query woke ${latency.toFixed(0)} ms after the change`);
  expect(Number(woken.headers["x-consul-index"]) > Number(index), "the index moved");
  const status = nodes.find((n) => n.Service.ID === ids[0]).Checks[0].Status;
  expect(status === "critical", `the woken answer shows the change: ${status}`);
  expect(same(await passingIds(), ids.slice(1)), `after fail: ${await passingIds()}`);
  await client.agent.check.warn({ id: checkId, note: "slow" });
  expect(same(await passingIds(), ids.slice(1)), `warning is not passing: ${await passingIds()}`);
  await client.agent.check.pass(checkId);
  expect(same(await passingIds(), ids), `passing again: ${await passingIds()}`);

  // Maintenance on and off.
  await client.agent.service.maintenance({ id: ids[0], enable: true, reason: "deploy" });
  expect(same(await passingIds(), ids.slice(1)), `in maintenance: ${await passingIds()}`);
  const drained = await client.health.service({ service, tag: "v2" });
  const maintenance = drained[0].Checks.filter((c) => c.CheckID === `_service_maintenance:${ids[0]}`);
  expect(
    maintenance.length === 1 && maintenance[0].Notes === "deploy" && maintenance[0].Status === "critical",
    `the maintenance check: ${JSON.stringify(drained[0].Checks)}`,
  );
  await client.agent.service.maintenance({ id: ids[0], enable: false });
  expect(same(await passingIds(), ids), `out of maintenance: ${await passingIds()}`);

  // Deregister, and the instance leaves the HTTP views.
  await client.agent.service.deregister(ids[2]);
  expect(!(ids[2] in (await client.agent.service.list())), "gone from agent.service.list()");
  const all = await client.health.service(service);
  expect(!all.some((e) => e.Service.ID === ids[2]), "gone from health.service()");
  let error;
  try {
    await client.agent.service.deregister(ids[2]);
  } catch (e) {
    error = e;
  }
  expect(error && error.statusCode === 404, `deregistering again is a 404: ${error}`);

  // Validation errors reach the caller: a 400 whose JSON body names the field.
  try {
    await client.agent.service.register({ name: "not_a_dns_label", port: 1 });
    fail("a bad name is refused");
  } catch (e) {
    expect(e.statusCode === 400, `400 for a bad name: ${e}`);
    expect(e.response && e.response.body && e.response.body.field === "Name", `field: ${e}`);
  }

  const catalog = await client.catalog.service.nodes(service);
  const rows = catalog.map((r) => [r.ServiceID, r.ServiceAddress, r.ServicePort]).sort();
  expect(same(rows, [[ids[0], addresses[0], 8080], [ids[1], addresses[1], 8080]]), `catalog: ${JSON.stringify(rows)}`);
  const leader = await client.status.leader();
  expect(typeof leader === "string" && leader.length > 0, `a leader: ${leader}`);

  const httpUrl = process.env.HTTP_CHECK_URL;
  if (httpUrl) {
    const name = `${service}-http`;
    const id = `${name}-1`;
    const checkPort = Number(new URL(httpUrl).port);
    await client.agent.service.register({
      name,
      id,
      address: "127.0.0.1",
      port: checkPort,
      check: { http: httpUrl, interval: "1s", timeout: "1s" },
    });
    const deadline = performance.now() + 10000;
    let healthy = [];
    while (performance.now() < deadline && healthy.length === 0) {
      healthy = await client.health.service({ service: name, passing: true });
      await sleep(100);
    }
    expect(healthy.length === 1, "the HTTP check passes within 10 s");
    const e = healthy[0];
    expect(
      same([e.Service.ID, e.Service.Address, e.Service.Port], [id, "127.0.0.1", checkPort]),
      `Service fields: ${JSON.stringify(e.Service)}`,
    );
    expect(
      same(e.Checks.map((c) => [c.CheckID, c.Type, c.Status]), [[`service:${id}`, "http", "passing"]]),
      `Checks: ${JSON.stringify(e.Checks)}`,
    );
  }
  console.log(`OK npm consul: ${service} registered, checked, blocked, drained and deregistered`);
}

main().catch((e) => fail(`${e.stack || e}`));
