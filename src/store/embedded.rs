//! The embedded store: one redb file, `<data-dir>/registry.redb`.
//!
//! redb gives crash-safe, atomic, durable transactions (copy-on-write B-trees with checksummed
//! commits) and an exclusive file lock, so a second srvdns on the same data directory is
//! refused. Values are JSON (readable with any redb tool, and tolerant of added fields); the
//! format version lives in the `meta` table and is checked before anything is written.

use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Change, FORMAT_VERSION, Restored, Store, StoreError, StoredInstance};

/// `"<service>/<id>"` → JSON of a [`StoredInstance`].
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
/// `"format"` → [`FORMAT_VERSION`], `"index"` → the registry index of the last write.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The file name inside the data directory.
pub const FILE_NAME: &str = "registry.redb";

pub struct EmbeddedStore {
    db: Database,
    file: PathBuf,
}

fn key(service: &str, id: &str) -> String {
    format!("{service}/{id}")
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, checking its format version.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_file(dir, FILE_NAME)
    }

    /// Opens (or creates) the store in the file `name` of `dir` (the cluster store keeps its
    /// local copy of the etcd registry in a file of its own, apart from `registry.redb`).
    pub fn open_file(dir: &Path, name: &str) -> Result<Self, StoreError> {
        let file = dir.join(name);
        let open_error = |detail: String| StoreError::Open {
            file: file.clone(),
            detail,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        if file.exists() {
            // Look before writing: redb's read-write open touches the file header, and a store
            // srvdns must refuse (newer format, corrupt) has to be left exactly as it was.
            match Database::builder().open_read_only(&file) {
                Ok(db) => {
                    check_format(&db, &file)?;
                }
                Err(DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(StoreError::InUse {
                        dir: dir.to_owned(),
                        file,
                    });
                }
                Err(DatabaseError::Storage(storage)) => {
                    return Err(StoreError::Corrupt {
                        file,
                        detail: storage.to_string(),
                    });
                }
                // Needs recovery after a crash: the read-write open below repairs it.
                Err(_) => {}
            }
        }
        let db = Database::create(&file).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                dir: dir.to_owned(),
                file: file.clone(),
            },
            DatabaseError::Storage(storage) => StoreError::Corrupt {
                file: file.clone(),
                detail: storage.to_string(),
            },
            other => open_error(other.to_string()),
        })?;
        let store = Self { db, file };
        store.stamp_format()?;
        Ok(store)
    }

    fn write_error(&self, detail: impl ToString) -> StoreError {
        StoreError::Write {
            file: self.file.clone(),
            detail: detail.to_string(),
        }
    }

    /// Refuses a store written by a newer format; stamps a new one with ours.
    fn stamp_format(&self) -> Result<(), StoreError> {
        if check_format(&self.db, &self.file)?.is_some() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.write_error(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.write_error(e))?;
            meta.insert("format", u64::from(FORMAT_VERSION))
                .map_err(|e| self.write_error(e))?;
            txn.open_table(INSTANCES).map_err(|e| self.write_error(e))?;
        }
        txn.commit().map_err(|e| self.write_error(e))
    }
}

/// The stored format version, if any; an error if it is newer than this build's.
fn check_format(db: &impl ReadableDatabase, file: &Path) -> Result<Option<u64>, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        file: file.to_owned(),
        detail,
    };
    let read = db.begin_read().map_err(|e| corrupt(e.to_string()))?;
    let found = match read.open_table(META) {
        Ok(meta) => meta
            .get("format")
            .map_err(|e| corrupt(e.to_string()))?
            .map(|v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(corrupt(e.to_string())),
    };
    match found {
        Some(found) if found > u64::from(FORMAT_VERSION) => Err(StoreError::NewerFormat {
            file: file.to_owned(),
            found: u32::try_from(found).unwrap_or(u32::MAX),
            supported: FORMAT_VERSION,
        }),
        found => Ok(found),
    }
}

/// What [`inspect`] finds in a data directory.
#[derive(Debug)]
pub enum Inspection {
    /// No store yet: the server will create it.
    Absent { file: PathBuf },
    /// A store the server can open, with what it holds.
    Readable { file: PathBuf, restored: Restored },
    /// A running srvdns holds the store; it was not read.
    InUse { file: PathBuf },
    /// The store was not closed cleanly; the server repairs it when it opens it.
    NeedsRecovery { file: PathBuf },
}

/// Looks at the store in `dir` without changing anything (for `serve --check-config`): reads
/// it when no one else holds it, and refuses what [`EmbeddedStore::open`] would refuse.
pub fn inspect(dir: &Path) -> Result<Inspection, StoreError> {
    let file = dir.join(FILE_NAME);
    if !file.exists() {
        return Ok(Inspection::Absent { file });
    }
    match Database::builder().open_read_only(&file) {
        Ok(db) => {
            check_format(&db, &file)?;
            let restored = load_from(&db, &file)?;
            Ok(Inspection::Readable { file, restored })
        }
        Err(DatabaseError::DatabaseAlreadyOpen) => Ok(Inspection::InUse { file }),
        Err(DatabaseError::Storage(storage)) => Err(StoreError::Corrupt {
            file,
            detail: storage.to_string(),
        }),
        Err(_) => Ok(Inspection::NeedsRecovery { file }),
    }
}

/// Reads every stored instance and the index.
fn load_from(db: &impl ReadableDatabase, file: &Path) -> Result<Restored, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        file: file.to_owned(),
        detail,
    };
    let read = db.begin_read().map_err(|e| corrupt(e.to_string()))?;
    let index = match read.open_table(META) {
        Ok(meta) => meta
            .get("index")
            .map_err(|e| corrupt(e.to_string()))?
            .map_or(0, |v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(corrupt(e.to_string())),
    };
    let table = match read.open_table(INSTANCES) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Ok(Restored {
                index,
                instances: Vec::new(),
            });
        }
        Err(e) => return Err(corrupt(e.to_string())),
    };
    let mut instances = Vec::new();
    for entry in table.iter().map_err(|e| corrupt(e.to_string()))? {
        let (key, value) = entry.map_err(|e| corrupt(e.to_string()))?;
        let instance: StoredInstance = serde_json::from_slice(value.value())
            .map_err(|e| corrupt(format!("instance {:?}: {e}", key.value())))?;
        instances.push(instance);
    }
    Ok(Restored { index, instances })
}

impl Store for EmbeddedStore {
    fn load(&self) -> Result<Restored, StoreError> {
        load_from(&self.db, &self.file)
    }

    fn write(&self, index: u64, changes: &[Change]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.write_error(e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.write_error(e))?;
        {
            let mut table = txn.open_table(INSTANCES).map_err(|e| self.write_error(e))?;
            for change in changes {
                match change {
                    Change::Put(instance) => {
                        let reg = &instance.registration;
                        let value =
                            serde_json::to_vec(instance).map_err(|e| self.write_error(e))?;
                        table
                            .insert(
                                key(reg.service.as_str(), reg.id.as_str()).as_str(),
                                value.as_slice(),
                            )
                            .map_err(|e| self.write_error(e))?;
                    }
                    Change::Delete { service, id } => {
                        table
                            .remove(key(service.as_str(), id.as_str()).as_str())
                            .map_err(|e| self.write_error(e))?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(|e| self.write_error(e))?;
            meta.insert("index", index)
                .map_err(|e| self.write_error(e))?;
        }
        txn.commit().map_err(|e| self.write_error(e))
    }
}
