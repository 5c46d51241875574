//! Static zones: RFC 1035 zone files from the `zones/` directory, parsed with hickory-proto's
//! zone-file parser and held in memory.
//!
//! Each `*.zone` file is one zone; its origin is `$ORIGIN` in the file, else the file name
//! without `.zone` (`zones/example.internal.zone` → `example.internal.`). A file for the served
//! domain itself adds static names beside the dynamic ones (and may replace the generated SOA
//! or add apex records); service registrations whose name would clash with one of its names
//! are refused. Loading happens once at start; a bad file stops the server with the file and
//! the parser's message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;

/// A zone file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("zone file {}: {message}", path.display())]
pub struct ZoneError {
    pub path: PathBuf,
    pub message: String,
}

/// One static zone.
#[derive(Debug, Clone)]
pub struct StaticZone {
    /// Lowercase, fully qualified.
    pub origin: Name,
    pub soa: Option<Record>,
    /// Records by lowercase owner name.
    pub records: HashMap<Name, Vec<Record>>,
    /// Names that own no records but have descendants that do (empty non-terminals): they
    /// answer NODATA, not NXDOMAIN (RFC 8020).
    pub nonterminals: HashSet<Name>,
    pub path: PathBuf,
}

impl StaticZone {
    /// Parses one zone file. `default_origin` is used when the file has no `$ORIGIN`.
    pub fn parse(path: &Path, text: &str, default_origin: Name) -> Result<Self, ZoneError> {
        let error = |message: String| ZoneError {
            path: path.to_owned(),
            message,
        };
        let (origin, sets) = Parser::new(text, Some(path.to_owned()), Some(default_origin))
            .parse()
            .map_err(|e| error(e.to_string()))?;
        let origin = origin.to_lowercase();
        let mut zone = Self {
            origin: origin.clone(),
            soa: None,
            records: HashMap::new(),
            nonterminals: HashSet::new(),
            path: path.to_owned(),
        };
        for set in sets.into_values() {
            for record in set.records_without_rrsigs() {
                let owner = record.name.to_lowercase();
                if !origin.zone_of(&owner) {
                    return Err(error(format!(
                        "record {} is outside the zone's origin {origin}",
                        record.name
                    )));
                }
                if record.record_type() == RecordType::SOA {
                    if owner != origin {
                        return Err(error(format!("SOA record at {owner}, not at the origin")));
                    }
                    zone.soa = Some(record.clone());
                    continue;
                }
                let mut parent = owner.base_name();
                while origin.zone_of(&parent) && parent != origin {
                    zone.nonterminals.insert(parent.clone());
                    parent = parent.base_name();
                }
                zone.records.entry(owner).or_default().push(record.clone());
            }
        }
        Ok(zone)
    }

    /// All records at `name` (lowercase), if the name owns any.
    pub fn at(&self, name: &Name) -> Option<&[Record]> {
        self.records.get(name).map(Vec::as_slice)
    }

    /// Does `name` (lowercase) exist in this zone: owns records, or has descendants that do?
    pub fn exists(&self, name: &Name) -> bool {
        *name == self.origin || self.records.contains_key(name) || self.nonterminals.contains(name)
    }

    /// The SOA's negative-caching TTL: min(SOA TTL, SOA MINIMUM), RFC 2308 §5.
    pub fn negative_ttl(soa: &Record) -> u32 {
        match &soa.data {
            RData::SOA(data) => soa.ttl.min(data.minimum),
            _ => soa.ttl,
        }
    }
}

/// All static zones, looked up by the longest origin that contains a name.
#[derive(Debug, Clone, Default)]
pub struct StaticZones {
    /// Sorted by origin length, longest first, so the first match is the closest enclosure.
    zones: Vec<StaticZone>,
}

impl StaticZones {
    /// Loads every `*.zone` file in `dir`, in name order.
    pub fn load_dir(dir: &Path) -> Result<Self, ZoneError> {
        let error = |message: String| ZoneError {
            path: dir.to_owned(),
            message,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| error(format!("cannot read: {e}")))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "zone"))
            .collect();
        paths.sort();
        let mut zones = Vec::with_capacity(paths.len());
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| ZoneError {
                path: path.clone(),
                message: format!("cannot read: {e}"),
            })?;
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            let origin =
                Name::from_ascii(format!("{}.", stem.trim_end_matches('.'))).map_err(|e| {
                    ZoneError {
                        path: path.clone(),
                        message: format!("file name is not a zone name: {e}"),
                    }
                })?;
            zones.push(StaticZone::parse(&path, &text, origin)?);
        }
        Self::from_zones(zones)
    }

    pub fn from_zones(mut zones: Vec<StaticZone>) -> Result<Self, ZoneError> {
        let mut seen: BTreeMap<Name, PathBuf> = BTreeMap::new();
        for zone in &zones {
            if let Some(first) = seen.insert(zone.origin.clone(), zone.path.clone()) {
                return Err(ZoneError {
                    path: zone.path.clone(),
                    message: format!(
                        "zone {} is also defined in {}",
                        zone.origin,
                        first.display()
                    ),
                });
            }
        }
        zones.sort_by_key(|zone| std::cmp::Reverse(zone.origin.num_labels()));
        Ok(Self { zones })
    }

    /// The zone with exactly this origin (lowercase).
    pub fn get(&self, origin: &Name) -> Option<&StaticZone> {
        self.zones.iter().find(|zone| zone.origin == *origin)
    }

    /// The closest zone containing `name` (lowercase).
    pub fn find(&self, name: &Name) -> Option<&StaticZone> {
        self.zones.iter().find(|zone| zone.origin.zone_of(name))
    }

    pub fn iter(&self) -> impl Iterator<Item = &StaticZone> {
        self.zones.iter()
    }

    /// Checks that every zone other than `domain` has an SOA (the served domain gets a
    /// generated one when its file has none).
    pub fn require_soa(&self, domain: &Name) -> Result<(), ZoneError> {
        match self
            .zones
            .iter()
            .find(|zone| zone.soa.is_none() && zone.origin != *domain)
        {
            Some(zone) => Err(ZoneError {
                path: zone.path.clone(),
                message: format!("zone {} has no SOA record", zone.origin),
            }),
            None => Ok(()),
        }
    }

    /// Drops the zones other than `domain` that have no SOA, returning their files. Used for
    /// the default `zones/` directory, whose example `service.local.zone` must not stop a
    /// server started with another `--domain`.
    pub fn drop_incomplete(&mut self, domain: &Name) -> Vec<PathBuf> {
        let (keep, drop): (Vec<StaticZone>, Vec<StaticZone>) = std::mem::take(&mut self.zones)
            .into_iter()
            .partition(|zone| zone.soa.is_some() || zone.origin == *domain);
        self.zones = keep;
        drop.into_iter().map(|zone| zone.path).collect()
    }

    /// Service labels that static names under `domain` take, each with the name taking it:
    /// `db.service.local.` takes the service label `db`.
    pub fn service_labels_taken(&self, domain: &Name) -> BTreeMap<String, String> {
        let mut taken = BTreeMap::new();
        let depth = usize::from(domain.num_labels());
        for zone in self
            .zones
            .iter()
            .filter(|zone| domain.zone_of(&zone.origin))
        {
            for name in zone.records.keys().chain(zone.nonterminals.iter()) {
                if !domain.zone_of(name) || *name == *domain {
                    continue;
                }
                let labels: Vec<String> = name
                    .iter()
                    .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
                    .collect();
                let relative = &labels[..labels.len() - depth];
                // `<x>.D` and anything below it take `x`; `_<x>._<y>.D` (an SRV name of
                // service x) takes `x` too.
                let label = match relative {
                    [first, second] if first.starts_with('_') && second.starts_with('_') => {
                        first[1..].to_owned()
                    }
                    [.., last] => last.clone(),
                    [] => continue,
                };
                taken.entry(label).or_insert_with(|| name.to_string());
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: &str = "$TTL 300
@       IN SOA ns.example.internal. hostmaster.example.internal. 1 3600 600 86400 60
@       IN NS  ns
ns      IN A   192.0.2.53
www     IN A   192.0.2.10
a.b.c   IN TXT \"deep\"
";

    #[test]
    fn parses_records_and_nonterminals() {
        let zone = StaticZone::parse(
            Path::new("example.internal.zone"),
            ZONE,
            Name::from_ascii("example.internal.").unwrap(),
        )
        .unwrap();
        assert!(zone.soa.is_some());
        let www = Name::from_ascii("www.example.internal.").unwrap();
        assert_eq!(zone.at(&www).unwrap().len(), 1);
        assert!(zone.exists(&Name::from_ascii("b.c.example.internal.").unwrap()));
        assert!(zone.exists(&Name::from_ascii("c.example.internal.").unwrap()));
        assert!(!zone.exists(&Name::from_ascii("d.example.internal.").unwrap()));
        assert_eq!(StaticZone::negative_ttl(zone.soa.as_ref().unwrap()), 60);
    }

    #[test]
    fn reports_bad_files_with_their_path() {
        let err = StaticZone::parse(
            Path::new("zones/bad.zone"),
            "www IN A not-an-ip\n",
            Name::from_ascii("bad.").unwrap(),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("zone file zones/bad.zone:"),
            "{err}"
        );
    }

    #[test]
    fn static_names_take_service_labels() {
        let zone = StaticZone::parse(
            Path::new("service.local.zone"),
            "$TTL 60\ndb IN A 10.0.0.9\nx.legacy IN A 10.0.0.8\n_pg._tcp IN SRV 0 1 5432 db\n",
            Name::from_ascii("service.local.").unwrap(),
        )
        .unwrap();
        let zones = StaticZones::from_zones(vec![zone]).unwrap();
        let taken = zones.service_labels_taken(&Name::from_ascii("service.local.").unwrap());
        assert_eq!(
            taken.keys().map(String::as_str).collect::<Vec<_>>(),
            ["_tcp", "db", "legacy", "pg"]
        );
    }
}
