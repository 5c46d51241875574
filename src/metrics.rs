//! `GET /metrics`: the server's metrics in the Prometheus (OpenMetrics) text format.
//!
//! Nothing here is on the DNS query path. The DNS side counts into its own striped atomics
//! ([`DnsMetrics`]), the health engine into [`CheckStats`], the store's commit thread into
//! [`CommitStats`]; registry sizes are counted from the current snapshot. All of them are
//! read when Prometheus scrapes, by one [`Collector`]. Only HTTP requests are counted here,
//! as they complete ([`Metrics::count_http`]), by route template (`/v1/services/{service}`,
//! never the raw path, so the number of series stays bounded).
//!
//! One [`Metrics`] per server, no global recorder: tests run several servers in one process.
//! Metric names and meanings are listed in the README ("Metrics").
//!
//! [`CommitStats`]: crate::store::commit::CommitStats

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet, text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as PromRegistry;

use crate::dns::metrics::{DnsMetrics, LATENCY_BOUNDS_NS, TRANSPORTS};
use crate::health::engine::CheckStats;
use crate::registry::Registry;
use crate::registry::model::InstanceStatus;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bucket bounds of `srvdns_check_lateness_seconds`, in milliseconds.
const LATENESS_BOUNDS_MS: [usize; 8] = [1, 5, 10, 50, 100, 250, 500, 1000];

/// What the metrics are read from.
pub struct Sources {
    pub dns: Arc<DnsMetrics>,
    pub registry: Arc<Registry>,
    pub checks: Arc<CheckStats>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

fn http_duration_histogram() -> Histogram {
    // 100 µs to ~6.5 min: blocking reads wait up to 5 min.
    Histogram::new(exponential_buckets(0.0001, 4.0, 12))
}

/// The metrics of one server.
pub struct Metrics {
    registry: PromRegistry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(sources: Sources) -> Self {
        let mut registry = PromRegistry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "srvdns_http_requests",
            "HTTP requests answered, by method, route template and status",
            http_requests.clone(),
        );
        let http_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                http_duration_histogram,
            );
        registry.register(
            "srvdns_http_request_duration_seconds",
            "Time to answer HTTP requests (blocking reads included), by method and route template",
            http_duration.clone(),
        );
        if let Some(commits) = sources.registry.commit_stats() {
            registry.register(
                "srvdns_store_commit_duration_seconds",
                "Time to write and fsync one store transaction (a group commit)",
                commits.duration.clone(),
            );
            registry.register(
                "srvdns_store_commit_batch_size",
                "Changes written per store transaction",
                commits.batch_size.clone(),
            );
            registry.register(
                "srvdns_store_commit_failures",
                "Store transactions that failed (the registry reverted to the store)",
                commits.failures.clone(),
            );
        }
        registry.register_collector(Box::new(Scraped(sources)));
        Self {
            registry,
            http_requests,
            http_duration,
        }
    }

    /// Counts one answered HTTP request; `route` is the matched route template.
    pub fn count_http(
        &self,
        method: &axum::http::Method,
        route: &str,
        status: u16,
        took: Duration,
    ) {
        let method = method_label(method);
        self.http_requests
            .get_or_create(&HttpLabels {
                method,
                route: route.to_owned(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                method,
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Every metric, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail, and no collector here returns an error.
        let _ = text::encode(&mut out, &self.registry);
        out
    }
}

/// A bounded set of method labels: a client sending odd methods must not add series.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The metrics read at scrape time.
struct Scraped(Sources);

impl fmt::Debug for Scraped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scraped").finish_non_exhaustive()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    buckets: &[(f64, u64)],
    sum: f64,
) -> Result<(), fmt::Error> {
    let count = buckets.iter().map(|(_, count)| count).sum();
    encoder
        .encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(sum, count, buckets, None)
}

fn saturating_i64(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Sources {
            dns,
            registry,
            checks,
        } = &self.0;

        let info = ConstGauge::new(1i64);
        let labels = [("version", env!("CARGO_PKG_VERSION"))];
        info.encode(
            encoder
                .encode_descriptor(
                    "srvdns_build_info",
                    "The running srvdns version",
                    None,
                    MetricType::Gauge,
                )?
                .encode_family(&labels)?,
        )?;

        // DNS.
        let totals = dns.totals();
        {
            let mut family = encoder.encode_descriptor(
                "srvdns_dns_queries",
                "DNS queries answered, by transport, query type and response code",
                None,
                MetricType::Counter,
            )?;
            for (transport, qtype, rcode, count) in totals.answers() {
                let labels = [("transport", transport), ("qtype", qtype), ("rcode", rcode)];
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
        let latency: Vec<(f64, u64)> = LATENCY_BOUNDS_NS
            .iter()
            .map(|&ns| ns as f64 / 1e9)
            .chain([f64::INFINITY])
            .zip(totals.latency)
            .collect();
        histogram(
            &mut encoder,
            "srvdns_dns_answer_duration_seconds",
            "Time to build one DNS answer (parse, look up, encode; socket I/O excluded)",
            &latency,
            totals.latency_sum.as_secs_f64(),
        )?;
        for (name, help, values) in [
            (
                "srvdns_dns_truncated",
                "UDP answers cut short with TC set (the client retries over TCP)",
                totals.truncated,
            ),
            (
                "srvdns_dns_dropped",
                "DNS packets that got no reply (shorter than a header, or responses)",
                totals.dropped,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (transport, value) in TRANSPORTS.iter().zip(values) {
                ConstCounter::new(value)
                    .encode(family.encode_family(&[("transport", *transport)])?)?;
            }
        }
        counter(
            &mut encoder,
            "srvdns_dns_refused",
            "DNS queries refused: outside the served domain and the static zones",
            totals.refused(),
        )?;

        // Registry, from the current snapshot.
        let snapshot = registry.snapshot();
        gauge(
            &mut encoder,
            "srvdns_registry_index",
            "The registry index (bumped by every committed change)",
            saturating_i64(snapshot.index),
        )?;
        gauge(
            &mut encoder,
            "srvdns_registry_services",
            "Services with at least one registered instance",
            saturating_i64(snapshot.services.len()),
        )?;
        let mut by_status = [0usize; 4];
        for entry in snapshot.services.values() {
            for instance in &entry.instances {
                by_status[instance.status as usize] += 1;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "srvdns_registry_instances",
                "Registered instances by status (passing and warning are served in DNS)",
                None,
                MetricType::Gauge,
            )?;
            for status in [
                InstanceStatus::Passing,
                InstanceStatus::Warning,
                InstanceStatus::Critical,
                InstanceStatus::Maintenance,
            ] {
                ConstGauge::new(saturating_i64(by_status[status as usize]))
                    .encode(family.encode_family(&[("status", status.as_str())])?)?;
            }
        }

        // Health checks.
        use std::sync::atomic::Ordering::Relaxed;
        counter(
            &mut encoder,
            "srvdns_check_runs",
            "Active health check probes run (http and tcp)",
            checks.runs.load(Relaxed),
        )?;
        counter(
            &mut encoder,
            "srvdns_check_failures",
            "Active health check probes that failed",
            checks.failures.load(Relaxed),
        )?;
        gauge(
            &mut encoder,
            "srvdns_check_probed_instances",
            "Instances with active health checks scheduled",
            saturating_i64(checks.scheduled_instances.load(Relaxed)),
        )?;
        let (buckets, _, sum) = checks.lateness_histogram(&LATENESS_BOUNDS_MS);
        let lateness: Vec<(f64, u64)> = LATENESS_BOUNDS_MS
            .iter()
            .map(|&ms| ms as f64 / 1e3)
            .chain([f64::INFINITY])
            .zip(buckets)
            .collect();
        histogram(
            &mut encoder,
            "srvdns_check_lateness_seconds",
            "How late probes start after their scheduled time",
            &lateness,
            sum,
        )?;
        Ok(())
    }
}
