//! A Consul service definition (`PUT /v1/agent/service/register`) into a [`Registration`].
//!
//! The instance-level fields go through the native API's validation ([`RegistrationBody`]),
//! so both APIs follow one set of rules; only the field names in errors are translated to
//! Consul's (`port` → `Port`). Checks are read here, because Consul's defaults differ from the
//! native ones and srvdns honours Consul's for registrations made through this API:
//!
//! - a check with no thresholds turns critical on its first failure and passing on its first
//!   success (`FailuresBeforeCritical` and `SuccessBeforePassing` default to 1);
//! - every check, TTL checks included, starts `critical` unless `Status` says otherwise;
//! - `DeregisterCriticalServiceAfter` has no default (the native API removes a `ttl` instance
//!   after 10 minutes critical);
//! - `Timeout` defaults to 10 s; `Interval` is required for HTTP and TCP checks.
//!
//! Check IDs are Consul's: the `CheckID` given, else `service:<id>` for a service with one
//! check and `service:<id>:<n>` (n from 1) for several. The ID is stored as the check's
//! `name` in the registry, so TTL updates by check ID find it.
//!
//! Kinds of check srvdns cannot run (script, gRPC, Docker, alias…) and service kinds it cannot
//! serve (Connect proxies, gateways) are refused with a 400 naming the field: registering them
//! and silently never checking them would report health srvdns does not have.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use super::decode::Fields;
use crate::http::registration::{CheckBody, DurationValue, Limits, RegistrationBody, WeightsBody};
use crate::registry::model::{
    CheckSpec, InstanceId, Registration, ServiceName, Status, ValidationError,
};

/// Consul's timeout for HTTP and TCP checks that give none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Check fields of kinds srvdns does not run, with what to call them in the error.
const UNSUPPORTED_CHECK_FIELDS: &[(&str, &str)] = &[
    ("ScriptArgs", "script checks"),
    ("Args", "script checks"),
    ("Script", "script checks"),
    ("DockerContainerID", "Docker checks"),
    ("GRPC", "gRPC checks"),
    ("H2PING", "HTTP/2 ping checks"),
    ("UDP", "UDP checks"),
    ("AliasService", "alias checks"),
    ("AliasNode", "alias checks"),
    ("OSService", "OS service checks"),
];

/// Validates a service definition (the body, or the config-file form `{"service": {…}}`);
/// `source` is the requester's address, used when `Address` is omitted or empty.
pub fn parse(
    body: &Value,
    source: IpAddr,
    limits: &Limits,
) -> Result<Registration, ValidationError> {
    let top = Fields::new(body, "")?;
    // The config-file form wraps the definition; errors name fields inside it all the same.
    let service = match top.get("Service") {
        Some(inner @ Value::Object(_)) if top.get("Name").is_none() => Fields::new(inner, "")?,
        _ => top,
    };

    if let Some(kind) = service.non_empty_string("Kind")? {
        return Err(ValidationError::new(
            "Kind",
            format!(
                "Kind {kind:?} is not supported: srvdns registers typical services only \
                 (no Connect proxies or gateways)"
            ),
        ));
    }
    if let Some(connect) = service.object("Connect")?
        && connect.get("SidecarService").is_some()
    {
        return Err(ValidationError::new(
            "Connect.SidecarService",
            "Connect sidecar services are not supported by srvdns",
        ));
    }

    let raw_name = service
        .string("Name")?
        .filter(|name| !name.is_empty())
        .ok_or_else(|| ValidationError::new("Name", "Name is required"))?;
    let name = ServiceName::try_from(raw_name).map_err(|e| rename(e, "Name"))?;
    let raw_id = service.non_empty_string("ID")?.unwrap_or(raw_name);
    let id = InstanceId::try_from(raw_id).map_err(|e| rename(e, "ID"))?;

    let port = service.int("Port")?.ok_or_else(|| {
        ValidationError::new(
            "Port",
            "Port is required (1-65535): srvdns serves it in SRV answers",
        )
    })?;
    let (passing, warning) = match service.object("Weights")? {
        Some(weights) => {
            let passing = weights.int("Passing")?.unwrap_or(1);
            if passing < 1 {
                return Err(ValidationError::new(
                    "Weights.Passing",
                    format!("Weights.Passing must be at least 1, not {passing}"),
                ));
            }
            (passing, weights.int("Warning")?)
        }
        None => (1, None),
    };
    let native = RegistrationBody {
        address: service.non_empty_string("Address")?.map(str::to_owned),
        port: Some(port),
        weight: Some(passing),
        weights: Some(WeightsBody { warning }),
        tags: service.strings("Tags")?,
        meta: service.string_map("Meta")?,
        ..RegistrationBody::default()
    };
    let mut registration = native.validate(name, id, source, limits).map_err(|e| {
        let field = consul_field(&e.field);
        rename(e, &field)
    })?;
    registration.checks = checks(&service, registration.id.as_str(), limits)?;
    Ok(registration)
}

fn rename(error: ValidationError, field: &str) -> ValidationError {
    ValidationError::new(field, error.message)
}

/// A native field path as Consul names it: `weights.warning` → `Weights.Warning`.
fn consul_field(native: &str) -> String {
    let (head, rest) = match native.find(['.', '[']) {
        Some(i) => native.split_at(i),
        None => (native, ""),
    };
    let head = match head {
        "port" => "Port",
        "address" => "Address",
        "weight" => "Weights.Passing",
        "weights" if rest == ".warning" => return "Weights.Warning".into(),
        "tags" => "Tags",
        "meta" => "Meta",
        "id" => "ID",
        "service" => "Name",
        other => other,
    };
    format!("{head}{rest}")
}

/// The checks of a definition: `Check`, then `Checks`, as Consul combines them.
fn checks(
    service: &Fields<'_>,
    id: &str,
    limits: &Limits,
) -> Result<Vec<CheckSpec>, ValidationError> {
    let mut all: Vec<Fields<'_>> = Vec::new();
    // An empty `Check` object is ignored, as Consul ignores it (the Go client sends one).
    if let Some(check) = service.object("Check")?
        && !check.is_empty()
    {
        all.push(check);
    }
    all.extend(service.objects("Checks")?.unwrap_or_default());
    if all.len() > limits.max_checks {
        return Err(ValidationError::new(
            "Checks",
            format!("at most {} checks per service", limits.max_checks),
        ));
    }
    let several = all.len() > 1;
    let mut specs: Vec<CheckSpec> = Vec::with_capacity(all.len());
    for (i, fields) in all.iter().enumerate() {
        let check_id = match fields.non_empty_string("CheckID")? {
            Some(given) => given.to_owned(),
            None if several => format!("service:{id}:{}", i + 1),
            None => format!("service:{id}"),
        };
        if specs.iter().any(|spec| spec.name == check_id) {
            return Err(ValidationError::new(
                fields.path_of("CheckID"),
                format!("check ID {check_id:?} is used twice"),
            ));
        }
        specs.push(check(fields, check_id)?);
    }
    Ok(specs)
}

/// One check, validated by the native rules after Consul's defaults are filled in.
fn check(fields: &Fields<'_>, check_id: String) -> Result<CheckSpec, ValidationError> {
    let path = fields.path();
    for (key, what) in UNSUPPORTED_CHECK_FIELDS {
        if fields.get(key).is_some() {
            return Err(ValidationError::new(
                fields.path_of(key),
                format!("srvdns does not run {what}: use an HTTP, TCP or TTL check"),
            ));
        }
    }
    // Type-checked even though srvdns keeps neither (see docs/consul-compat.md).
    fields.string("Name")?;
    fields.string("Notes")?;

    let http = fields.non_empty_string("HTTP")?;
    let tcp = fields.non_empty_string("TCP")?;
    let ttl = fields.duration("TTL")?;
    let kind = match (http, tcp, ttl) {
        (Some(_), None, None) => "http",
        (None, Some(_), None) => "tcp",
        (None, None, Some(_)) => "ttl",
        (None, None, None) => {
            return Err(ValidationError::new(
                path,
                format!("{path} needs one of HTTP, TCP or TTL"),
            ));
        }
        _ => {
            return Err(ValidationError::new(
                path,
                format!("{path} has more than one of HTTP, TCP and TTL"),
            ));
        }
    };
    let positive = |name: &str, value: Option<Duration>| match value {
        Some(d) if d.is_zero() => Err(ValidationError::new(
            fields.path_of(name),
            format!("{} must be more than 0", fields.path_of(name)),
        )),
        other => Ok(other),
    };
    let ttl = positive("TTL", ttl)?;
    let interval = positive("Interval", fields.duration("Interval")?)?;
    if kind != "ttl" && interval.is_none() {
        return Err(ValidationError::new(
            fields.path_of("Interval"),
            format!(
                "{} is required for HTTP and TCP checks",
                fields.path_of("Interval")
            ),
        ));
    }
    let timeout = fields
        .duration("Timeout")?
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_TIMEOUT);
    let deregister_after = fields
        .duration("DeregisterCriticalServiceAfter")?
        .filter(|d| !d.is_zero());
    let threshold = |name: &str| -> Result<i64, ValidationError> {
        match fields.int(name)? {
            None | Some(0) => Ok(1),
            Some(n) if n > 0 => Ok(n),
            Some(n) => Err(ValidationError::new(
                fields.path_of(name),
                format!("{} must not be negative, not {n}", fields.path_of(name)),
            )),
        }
    };
    let headers = fields.string_lists("Header")?.map(|headers| {
        headers
            .into_iter()
            .map(|(name, values)| (name, values.join(", ")))
            .collect()
    });
    let text = |d: Duration| DurationValue::Text(humantime::format_duration(d).to_string());
    let native = CheckBody {
        name: Some(check_id),
        kind: Some(kind.to_owned()),
        url: http.map(str::to_owned),
        method: fields.non_empty_string("Method")?.map(str::to_owned),
        headers,
        tls_skip_verify: fields.bool("TLSSkipVerify")?,
        target: tcp.map(str::to_owned),
        ttl: ttl.map(text),
        interval: interval.map(text),
        timeout: Some(text(timeout)),
        failures_before_critical: Some(threshold("FailuresBeforeCritical")?),
        successes_before_passing: Some(threshold("SuccessBeforePassing")?),
        deregister_after: None,
        status: Some(
            fields
                .non_empty_string("Status")?
                .unwrap_or(Status::Critical.as_str())
                .to_owned(),
        ),
    };
    let mut spec = native.validate(path).map_err(|e| {
        let field = consul_check_field(&e.field, path);
        rename(e, &field)
    })?;
    spec.deregister_after = deregister_after;
    Ok(spec)
}

/// A native check field path (`Check.url`) as Consul names it (`Check.HTTP`).
fn consul_check_field(native: &str, path: &str) -> String {
    let Some(name) = native
        .strip_prefix(path)
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return native.to_owned();
    };
    let consul = match name {
        "url" => "HTTP",
        "method" => "Method",
        "headers" => "Header",
        "target" => "TCP",
        "ttl" => "TTL",
        "interval" => "Interval",
        "timeout" => "Timeout",
        "failures_before_critical" => "FailuresBeforeCritical",
        "successes_before_passing" => "SuccessBeforePassing",
        "deregister_after" => "DeregisterCriticalServiceAfter",
        "status" => "Status",
        "name" => "CheckID",
        "type" => return path.to_owned(),
        other => other,
    };
    format!("{path}.{consul}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::{Address, CheckKind};
    use serde_json::json;

    fn parse_json(body: Value) -> Result<Registration, ValidationError> {
        parse(&body, "192.0.2.7".parse().unwrap(), &Limits::default())
    }

    #[test]
    fn defaults_are_consuls() {
        let reg = parse_json(json!({"Name": "Payment", "Port": 8080})).unwrap();
        assert_eq!(reg.service.as_str(), "payment");
        assert_eq!(reg.id.as_str(), "Payment", "ID defaults to Name as given");
        assert_eq!(reg.address, Address::Ip("192.0.2.7".parse().unwrap()));
        assert_eq!((reg.weight, reg.warning_weight), (1, 1));
        assert!(reg.checks.is_empty());
    }

    #[test]
    fn check_ids_and_consul_check_defaults() {
        let reg = parse_json(json!({
            "name": "web", "id": "web-1", "port": 80,
            "check": {"ttl": "10s"},
            "checks": [
                {"http": "http://127.0.0.1:80/health", "interval": "1s"},
                {"TCP": "127.0.0.1:80", "Interval": "2s", "CheckID": "tcp-probe",
                 "FailuresBeforeCritical": 3, "Status": "passing",
                 "DeregisterCriticalServiceAfter": "1m"}
            ]
        }))
        .unwrap();
        let ids: Vec<&str> = reg.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(ids, ["service:web-1:1", "service:web-1:2", "tcp-probe"]);
        let ttl = &reg.checks[0];
        assert_eq!(
            ttl.kind,
            CheckKind::Ttl {
                ttl: Duration::from_secs(10)
            }
        );
        assert_eq!(ttl.initial_status, Status::Critical);
        assert_eq!(
            ttl.deregister_after, None,
            "no default, unlike the native API"
        );
        let http = &reg.checks[1];
        assert_eq!(
            (http.failures_before_critical, http.successes_before_passing),
            (1, 1)
        );
        assert_eq!(http.timeout, DEFAULT_TIMEOUT);
        let tcp = &reg.checks[2];
        assert_eq!(tcp.failures_before_critical, 3);
        assert_eq!(tcp.initial_status, Status::Passing);
        assert_eq!(tcp.deregister_after, Some(Duration::from_secs(60)));

        let one = parse_json(json!({"Name": "web", "Port": 80, "Check": {"TTL": "5s"}})).unwrap();
        assert_eq!(one.checks[0].name, "service:web");
    }

    #[test]
    fn the_config_file_form_and_go_nulls() {
        let reg = parse_json(json!({"service": {"name": "db", "port": 5432,
            "address": "db.example.com", "check": null, "checks": null}}))
        .unwrap();
        assert_eq!(reg.service.as_str(), "db");
        assert_eq!(reg.address, Address::Host("db.example.com".into()));
        let reg = parse_json(json!({"Name": "db", "Port": 1, "Check": {}, "Address": ""})).unwrap();
        assert!(reg.checks.is_empty(), "an empty Check is ignored");
        assert_eq!(reg.address, Address::Ip("192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn errors_name_consul_fields() {
        for (body, field) in [
            (json!({"Port": 1}), "Name"),
            (json!({"Name": "my_service", "Port": 1}), "Name"),
            (json!({"Name": "a", "ID": "a/b", "Port": 1}), "ID"),
            (json!({"Name": "a"}), "Port"),
            (json!({"Name": "a", "Port": 70000}), "Port"),
            (json!({"Name": "a", "Port": "80"}), "Port"),
            (
                json!({"Name": "a", "Port": 1, "Address": "10.0.1.999"}),
                "Address",
            ),
            (
                json!({"Name": "a", "Port": 1, "Tags": ["x", ""]}),
                "Tags[1]",
            ),
            (
                json!({"Name": "a", "Port": 1, "Meta": {"a b": "c"}}),
                "Meta.a b",
            ),
            (
                json!({"Name": "a", "Port": 1, "Weights": {"Passing": 0}}),
                "Weights.Passing",
            ),
            (
                json!({"Name": "a", "Port": 1, "Weights": {"Passing": 1, "Warning": -1}}),
                "Weights.Warning",
            ),
            (
                json!({"Name": "a", "Port": 1, "Kind": "connect-proxy"}),
                "Kind",
            ),
            (
                json!({"Name": "a", "Port": 1, "Check": {"Interval": "1s"}}),
                "Check",
            ),
            (
                json!({"Name": "a", "Port": 1, "Check": {"HTTP": "http://x"}}),
                "Check.Interval",
            ),
            (
                json!({"Name": "a", "Port": 1, "Check": {"HTTP": "ftp://x", "Interval": "1s"}}),
                "Check.HTTP",
            ),
            (
                json!({"Name": "a", "Port": 1, "Check": {"TTL": "soon"}}),
                "Check.TTL",
            ),
            (
                json!({"Name": "a", "Port": 1, "Check": {"TTL": "0s"}}),
                "Check.TTL",
            ),
            (
                json!({"Name": "a", "Port": 1, "Check": {"TTL": "1s", "Status": "ok"}}),
                "Check.Status",
            ),
            (
                json!({"Name": "a", "Port": 1, "Checks": [{"TTL": "1s"}, {"Args": ["true"], "Interval": "1s"}]}),
                "Checks[1].Args",
            ),
            (
                json!({"Name": "a", "Port": 1, "Checks": [
                    {"TTL": "1s", "CheckID": "x"}, {"TTL": "2s", "CheckID": "x"}]}),
                "Checks[1].CheckID",
            ),
            (
                json!({"Name": "a", "Port": 1, "Check": {"TCP": "nohost", "Interval": "1s"}}),
                "Check.TCP",
            ),
        ] {
            let err = parse_json(body.clone()).unwrap_err();
            assert_eq!(err.field, field, "{body}: {}", err.message);
        }
    }

    #[test]
    fn headers_are_lists_joined_for_the_probe() {
        let reg = parse_json(json!({"Name": "a", "Port": 1, "Check": {
            "HTTP": "http://127.0.0.1:1/", "Interval": "1s", "Method": "post",
            "Header": {"X-A": ["1", "2"], "X-B": ["3"]}, "TLSSkipVerify": true}}))
        .unwrap();
        let CheckKind::Http {
            method,
            headers,
            tls_skip_verify,
            ..
        } = &reg.checks[0].kind
        else {
            panic!("an http check");
        };
        assert_eq!(method, "POST");
        assert_eq!(headers["X-A"], "1, 2");
        assert!(tls_skip_verify);
    }
}
