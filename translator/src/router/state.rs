//! The router's registrations on disk (`router.state_file`), so a restart loses none.
//!
//! A registrant refreshes its lease every 20 s by default. A router that restarts with an
//! empty table would refuse every new flow for up to that long, and the client translator's
//! connect would fail. With a state file, the router writes its leases (with the time each
//! has left) and each registrant's newest sequence number while it runs and when it stops,
//! and the next process takes them over before it answers anything: forwarding goes on
//! after a restart, and registrations captured before it cannot be replayed after it.
//!
//! The file is JSON, written to a temporary file in the same folder and renamed over the
//! old one, so a crash leaves either the old or the new state, never half of one. Times
//! are kept as "left at `saved_at_unix_ms`" and aged by the wall clock at load (a clock
//! that went backwards ages nothing). A missing file is a first start; an unreadable or
//! malformed one is logged and ignored (the registrants' next refreshes rebuild the
//! table), since refusing to start would turn a damaged cache into an outage.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serval_stack::control::{RegistrySnapshot, RestoreReport, SavedLease, SavedRegistrant};
use serval_stack::driver::Endpoint;
use serval_stack::wire::ServicePrefix;

/// Format version written in the file; a file with another version is ignored.
const VERSION: u32 = 1;
/// Largest state file read back (4096 leases and registrants take well under 2 MiB).
const MAX_FILE: u64 = 8 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    saved_at_unix_ms: u64,
    leases: Vec<Lease>,
    registrants: Vec<Registrant>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lease {
    prefix: String,
    instance: SocketAddr,
    remaining_ms: u64,
    key_id: u32,
    source: IpAddr,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Registrant {
    key_id: u32,
    addr: Option<SocketAddr>,
    newest: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    crate::clock::unix_micros(t) / 1000
}

fn encode(snapshot: &RegistrySnapshot, now: SystemTime) -> Vec<u8> {
    let file = File {
        version: VERSION,
        saved_at_unix_ms: unix_ms(now),
        leases: snapshot
            .leases
            .iter()
            .map(|l| Lease {
                prefix: l.prefix.to_string(),
                instance: l.instance,
                remaining_ms: u64::try_from(l.remaining.as_millis()).unwrap_or(u64::MAX),
                key_id: l.key_id,
                source: l.source,
            })
            .collect(),
        registrants: snapshot
            .registrants
            .iter()
            .map(|r| Registrant {
                key_id: r.key_id,
                addr: r.addr,
                newest: r.newest,
            })
            .collect(),
    };
    // Serialising plain numbers, strings and addresses cannot fail.
    serde_json::to_vec(&file).unwrap_or_default()
}

/// Parses a state file written at some time and read at `now`: leases aged by the time in
/// between. Malformed entries (a prefix that does not parse) are dropped.
fn decode(bytes: &[u8], now: SystemTime) -> Result<RegistrySnapshot, String> {
    let file: File = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if file.version != VERSION {
        return Err(format!(
            "version {} (this build reads {VERSION})",
            file.version
        ));
    }
    let age = Duration::from_millis(unix_ms(now).saturating_sub(file.saved_at_unix_ms));
    let leases = file
        .leases
        .iter()
        .filter_map(|l| {
            let prefix: ServicePrefix = l.prefix.parse().ok()?;
            let remaining = Duration::from_millis(l.remaining_ms).checked_sub(age)?;
            Some(SavedLease {
                prefix,
                instance: l.instance,
                remaining,
                key_id: l.key_id,
                source: l.source,
            })
        })
        .collect();
    let registrants = file
        .registrants
        .iter()
        .map(|r| SavedRegistrant {
            key_id: r.key_id,
            addr: r.addr,
            newest: r.newest,
        })
        .collect();
    Ok(RegistrySnapshot {
        leases,
        registrants,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, renamed over.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// The router's state file: loads it at start, saves the registry into it.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file at `path` (already resolved against the policy's folder).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands the saved registrations to `endpoint`'s router role. Logs what it restored;
    /// a missing file restores nothing, a damaged one is logged and ignored.
    pub fn restore(&self, endpoint: &Endpoint) -> Option<RestoreReport> {
        let bytes = match read_bounded(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "router state not read; starting empty");
                return None;
            }
        };
        let snapshot = match decode(&bytes, crate::clock::wall()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "router state ignored; starting empty");
                return None;
            }
        };
        let report = endpoint.restore_registry(&snapshot)?;
        tracing::info!(
            file = %self.path.display(),
            leases = report.leases,
            leases_skipped = report.leases_skipped,
            registrants = report.registrants,
            registrants_skipped = report.registrants_skipped,
            "router state restored"
        );
        Some(report)
    }

    /// Writes `endpoint`'s registrations now. Errors are logged (and returned): the router
    /// keeps routing whether or not its state reaches the disk.
    pub fn save(&self, endpoint: &Endpoint) -> io::Result<()> {
        let Some(snapshot) = endpoint.registry_snapshot() else {
            return Ok(());
        };
        let result = write_atomically(&self.path, &encode(&snapshot, crate::clock::wall()));
        if let Err(e) = &result {
            tracing::warn!(file = %self.path.display(), error = %e, "router state not saved");
        }
        result
    }
}

/// When to write the state file: soon after the leases change, and every few seconds while
/// any exist (refreshes move expiries on; a stale file restores leases with less time left
/// than they have, never more).
#[derive(Debug)]
pub struct Saver {
    file: StateFile,
    last: Option<tokio::time::Instant>,
    dirty: bool,
}

/// Least time between two writes.
const SAVE_AFTER_CHANGE: Duration = Duration::from_secs(1);
/// Most time between two writes while leases exist.
const SAVE_EVERY: Duration = Duration::from_secs(5);

impl Saver {
    /// Writes `file`.
    pub fn new(file: StateFile) -> Self {
        Self {
            file,
            last: None,
            dirty: true,
        }
    }

    /// Called on every event poll: `changed` when a lease event was seen since the last.
    pub fn tick(&mut self, endpoint: &Endpoint, changed: bool, now: tokio::time::Instant) {
        self.dirty |= changed;
        let since = self.last.map(|t| now.saturating_duration_since(t));
        let due = match since {
            None => true,
            Some(s) if self.dirty => s >= SAVE_AFTER_CHANGE,
            Some(s) => s >= SAVE_EVERY,
        };
        if due {
            self.last = Some(now);
            self.dirty = self.file.save(endpoint).is_err();
        }
    }
}

fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE} bytes"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::UNIX_EPOCH;

    use super::*;

    fn snapshot() -> RegistrySnapshot {
        RegistrySnapshot {
            leases: vec![SavedLease {
                prefix: "0x0000d9:24".parse().unwrap(),
                instance: "192.0.2.10:54325".parse().unwrap(),
                remaining: Duration::from_secs(30),
                key_id: 7,
                source: "192.0.2.10".parse().unwrap(),
            }],
            registrants: vec![SavedRegistrant {
                key_id: 7,
                addr: None,
                newest: 1_700_000_000_000_000,
            }],
        }
    }

    #[test]
    fn round_trip_ages_leases_by_the_wall_clock() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let bytes = encode(&snapshot(), t0);
        let back = decode(&bytes, t0 + Duration::from_secs(10)).unwrap();
        let mut want = snapshot();
        want.leases[0].remaining = Duration::from_secs(20);
        assert_eq!(back, want);
        // Read after the lease ran out: gone. Read "before" it was written: not aged.
        assert!(
            decode(&bytes, t0 + Duration::from_secs(31))
                .unwrap()
                .leases
                .is_empty()
        );
        assert_eq!(
            decode(&bytes, t0 - Duration::from_secs(5)).unwrap(),
            snapshot()
        );
    }

    #[test]
    fn damaged_files_are_refused_not_half_read() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let bytes = encode(&snapshot(), t0);
        assert!(decode(&bytes[..bytes.len() / 2], t0).is_err());
        assert!(
            decode(
                b"{\"version\":2,\"saved_at_unix_ms\":0,\"leases\":[],\"registrants\":[]}",
                t0
            )
            .is_err()
        );
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace("0x0000d9:24", "nonsense");
        assert!(decode(text.as_bytes(), t0).unwrap().leases.is_empty());
    }

    #[test]
    fn saves_atomically_and_restores_into_a_new_router() {
        let dir = std::env::temp_dir().join(format!("serval-router-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("router.json");
        write_atomically(&path, b"old").unwrap();
        write_atomically(&path, &encode(&snapshot(), crate::clock::wall())).unwrap();
        let back = decode(&std::fs::read(&path).unwrap(), crate::clock::wall()).unwrap();
        assert_eq!(back.leases.len(), 1);
        assert!(!dir.join("router.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
