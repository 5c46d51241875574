"""Drives a Consul Python client against srvdns, exactly as application code would.

Works with both PyPI packages that provide the `consul` module: py-consul and python-consul
(the older one: no `meta`/`weights`, and no token on TTL updates or deregistration).

Usage: CONSUL_HTTP_ADDR=127.0.0.1:8500 [CONSUL_HTTP_TOKEN=…] python python_client.py SERVICE NET

SERVICE is the service name to use; NET the first three octets of the instances' addresses
(`10.0.3` registers 10.0.3.1, 10.0.3.2 and 10.0.3.3). On success, instances 1 (tag `v2`, a
passing TTL check) and 2 (tag `v1`, no check) stay registered for the caller to find over DNS,
and instance 3 has been deregistered. Any mismatch exits non-zero with a message.

With HTTP_CHECK_URL set (a local HTTP server answering 200), it also registers
`SERVICE-http` (127.0.0.1) with an HTTP check on that URL and waits until
`health.service(..., passing=True)` lists it; that needs srvdns's active health engine.
"""

import os
import sys
from importlib import metadata
import threading
import time

import consul


def fail(message):
    print(f"MISMATCH: {message}", file=sys.stderr)
    sys.exit(1)


def expect(condition, message):
    if not condition:
        fail(message)


def main():
    service, net = sys.argv[1], sys.argv[2]
    host, port = os.environ["CONSUL_HTTP_ADDR"].rsplit(":", 1)
    token = os.environ.get("CONSUL_HTTP_TOKEN") or None
    client = consul.Consul(host=host, port=int(port), token=token)
    watcher = consul.Consul(host=host, port=int(port), token=token)
    try:
        version = metadata.version("py-consul")
        flavour, modern = "py-consul", True
    except metadata.PackageNotFoundError:
        version = metadata.version("python-consul")
        flavour, modern = "python-consul", False
    print(f"{flavour} {version} against {host}:{port}")

    ids = [f"{service}-{n}" for n in (1, 2, 3)]
    addresses = [f"{net}.{n}" for n in (1, 2, 3)]
    check_id = f"service:{ids[0]}"

    # Register with tags, a TTL check and DeregisterCriticalServiceAfter.
    check = consul.Check.ttl("30s")
    check["DeregisterCriticalServiceAfter"] = "1m"
    extra = {"meta": {"version": "2.1.0"}} if modern else {}
    expect(
        client.agent.service.register(
            service,
            service_id=ids[0],
            address=addresses[0],
            port=8080,
            tags=["v2", "primary"],
            check=check,
            **extra,
        )
        is True,
        "register answered True",
    )
    for i in (1, 2):
        expect(
            client.agent.service.register(
                service, service_id=ids[i], address=addresses[i], port=8080, tags=["v1"]
            )
            is True,
            f"register {ids[i]}",
        )

    services = client.agent.services()
    mine = services.get(ids[0])
    expect(mine is not None, f"{ids[0]} in agent.services(): {services}")
    expect(mine["Service"] == service, f"Service field: {mine}")
    expect(mine["Tags"] == ["v2", "primary"], f"Tags field: {mine}")
    expect(mine["Port"] == 8080 and mine["Address"] == addresses[0], f"address: {mine}")
    if modern:
        expect(mine["Meta"] == {"version": "2.1.0"}, f"Meta field: {mine}")

    def passing_ids():
        _, nodes = client.health.service(service, passing=True)
        return sorted(node["Service"]["ID"] for node in nodes)

    # A TTL check starts critical, as in Consul, until its first update.
    expect(passing_ids() == ids[1:], f"before ttl_pass only {ids[1:]} pass: {passing_ids()}")
    expect(client.agent.check.ttl_pass(check_id, "ready") is True, "ttl_pass")
    expect(passing_ids() == ids, f"after ttl_pass all pass: {passing_ids()}")

    _, nodes = client.health.service(service, passing=True, tag="v2")
    expect(len(nodes) == 1, f"tag=v2 selects one instance: {nodes}")
    entry = nodes[0]
    expect(entry["Service"]["ID"] == ids[0], f"Service.ID: {entry}")
    expect(entry["Service"]["Port"] == 8080, f"Service.Port: {entry}")
    expect(entry["Service"]["Address"] == addresses[0], f"Service.Address: {entry}")
    expect(entry["Node"]["Datacenter"] == "dc1", f"Node.Datacenter: {entry}")
    checks = entry["Checks"]
    expect(
        [(c["CheckID"], c["Status"], c["Output"]) for c in checks]
        == [(check_id, "passing", "ready")],
        f"Checks: {checks}",
    )
    expect(
        checks[0]["Definition"].get("DeregisterCriticalServiceAfter") == "1m0s",
        f"DeregisterCriticalServiceAfter kept: {checks[0]}",
    )

    # A second client's blocking query wakes within a second of a change.
    index, _ = client.health.service(service)
    woke = {}

    def block():
        new_index, result = watcher.health.service(service, index=index, wait="30s")
        woke["at"] = time.monotonic()
        woke["index"] = new_index
        woke["nodes"] = result

    thread = threading.Thread(target=block)
    thread.start()
    time.sleep(0.5)
    expect("at" not in woke, "the blocking query waits for a change")
    changed_at = time.monotonic()
    expect(client.agent.check.ttl_fail(check_id, "down") is True, "ttl_fail")
    thread.join(10)
    expect("at" in woke, "the blocking query returned")
    latency = woke["at"] - changed_at
    expect(latency < 1.0, f"the blocking query woke {latency:.3f}s after the change")
    expect(int(woke["index"]) > int(index), f"index moved: {index} -> {woke['index']}")
    statuses = {n["Service"]["ID"]: n["Checks"][0]["Status"] for n in woke["nodes"] if n["Checks"]}
    expect(statuses.get(ids[0]) == "critical", f"the woken answer shows the change: {statuses}")
    expect(passing_ids() == ids[1:], f"after ttl_fail: {passing_ids()}")
    expect(client.agent.check.ttl_warn(check_id, "slow") is True, "ttl_warn")
    expect(passing_ids() == ids[1:], f"warning is not passing: {passing_ids()}")
    expect(client.agent.check.ttl_pass(check_id) is True, "ttl_pass again")
    expect(passing_ids() == ids, f"passing again: {passing_ids()}")

    # Maintenance on and off.
    expect(client.agent.service.maintenance(ids[0], "true", "deploy") is True, "maintenance on")
    expect(passing_ids() == ids[1:], f"in maintenance: {passing_ids()}")
    _, nodes = client.health.service(service, tag="v2")
    maintenance = [c for c in nodes[0]["Checks"] if c["CheckID"] == f"_service_maintenance:{ids[0]}"]
    expect(
        len(maintenance) == 1 and maintenance[0]["Notes"] == "deploy"
        and maintenance[0]["Status"] == "critical",
        f"the maintenance check: {nodes[0]['Checks']}",
    )
    expect(client.agent.service.maintenance(ids[0], "false") is True, "maintenance off")
    expect(passing_ids() == ids, f"out of maintenance: {passing_ids()}")

    # Deregister, and the instance leaves the HTTP views.
    expect(client.agent.service.deregister(ids[2]) is True, "deregister")
    expect(ids[2] not in client.agent.services(), "deregistered: gone from agent.services()")
    _, nodes = client.health.service(service)
    expect(ids[2] not in [n["Service"]["ID"] for n in nodes], "gone from health.service()")
    # The Python clients take a 404 as False, not as an exception.
    expect(client.agent.service.deregister(ids[2]) is False, "deregistering again answers False")

    _, catalog = client.catalog.service(service)
    rows = sorted((r["ServiceID"], r["ServiceAddress"], r["ServicePort"]) for r in catalog)
    expect(rows == [(ids[0], addresses[0], 8080), (ids[1], addresses[1], 8080)], f"catalog: {rows}")
    _, services = client.catalog.services()
    expect(sorted(services.get(service, [])) == ["primary", "v1", "v2"], f"catalog.services: {services}")
    expect(client.status.leader(), "a leader")

    http_url = os.environ.get("HTTP_CHECK_URL")
    if http_url:
        name, http_id = f"{service}-http", f"{service}-http-1"
        port = int(http_url.rsplit(":", 1)[1].split("/", 1)[0])
        check = consul.Check.http(http_url, "1s", timeout="1s")
        expect(
            client.agent.service.register(name, service_id=http_id, address="127.0.0.1", port=port, check=check)
            is True,
            "register with an HTTP check",
        )
        deadline = time.monotonic() + 10
        nodes = []
        while time.monotonic() < deadline and not nodes:
            _, nodes = client.health.service(name, passing=True)
            time.sleep(0.1)
        expect(len(nodes) == 1, f"the HTTP check passes within 10 s: {client.health.service(name)}")
        entry = nodes[0]
        expect(
            (entry["Service"]["ID"], entry["Service"]["Address"], entry["Service"]["Port"])
            == (http_id, "127.0.0.1", port),
            f"Service fields: {entry['Service']}",
        )
        expect(
            [(c["CheckID"], c["Type"], c["Status"]) for c in entry["Checks"]]
            == [(f"service:{http_id}", "http", "passing")],
            f"Checks: {entry['Checks']}",
        )
    print(f"OK {flavour}: {service} registered, checked, blocked, drained and deregistered")


if __name__ == "__main__":
    main()
