//! Snapshots of the engine's state: written to a temporary file, checksummed, fsynced, then
//! renamed into place, so a crash leaves either the old snapshot or the new one, never half.
//!
//! Layout: `VIGILSNP` magic, format version (u32 LE), body length (u64 LE), CRC-32 of the body
//! (u32 LE), then the body in postcard: a header (counters, watermark, pack hash, the caller's
//! metadata such as the Kafka offsets the state covers, the secret the ids were hashed under)
//! followed by every store.
//!
//! Format 1 (before the secret) is still read: its state keeps the unkeyed hash it was made
//! with ([`IdSecret::Unkeyed`]), and a warning says so. Format 2 (the secret, but not yet the
//! transaction-id entries of [`crate::state::seen`]) is read too. The entries of both are
//! taken as their event time alone: no first action kept.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::Ordering;

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};

use crate::engine::Engine;
use crate::state::window::Windows;
use crate::state::{AccountState, FxBuild, IdSecret};

const MAGIC: &[u8; 8] = b"VIGILSNP";
const FORMAT: u32 = 3;
const HEADER_LEN: usize = 8 + 4 + 8 + 4;

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The file is not a snapshot this version can read, or is damaged.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The header of format 1: counters, watermark, pack hash, the caller's metadata.
#[derive(Serialize, Deserialize)]
struct HeaderV1 {
    created_by: String,
    rules_version: String,
    events: u64,
    watermark: i64,
    late: u64,
    future: u64,
    duplicate: u64,
    meta: Vec<u8>,
}

/// The header from format 2 on: format 1's, then the secret ids are hashed under (postcard
/// writes a nested struct's fields in place, so the first part reads as format 1's did).
#[derive(Serialize, Deserialize)]
struct Header {
    base: HeaderV1,
    ids: IdSecret,
}

/// Serializes a DashMap as a sequence of (key, value) without copying it.
struct MapSeq<'a, V>(&'a dashmap::DashMap<u64, V, FxBuild>);

impl<V: Serialize> Serialize for MapSeq<'_, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Snapshots are taken between events, so the length cannot change underneath; collect
        // the entries first anyway so a wrong length can never be written.
        let entries: Vec<_> = self.0.iter().collect();
        let mut seq = s.serialize_seq(Some(entries.len()))?;
        for e in &entries {
            seq.serialize_element(&(*e.key(), e.value()))?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct BodyOut<'a> {
    header: &'a Header,
    accounts: MapSeq<'a, AccountState>,
    keyed: [MapSeq<'a, Windows>; 3],
    seen_tx: MapSeq<'a, i64>,
}

#[derive(Deserialize)]
struct BodyIn<H> {
    header: H,
    accounts: Vec<(u64, AccountState)>,
    keyed: [Vec<(u64, Windows)>; 3],
    seen_tx: Vec<(u64, i64)>,
}

/// A writer that counts bytes and checksums them.
struct Crc<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a snapshot restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The caller's metadata, as given to [`Engine::save_snapshot`].
    pub meta: Vec<u8>,
    /// Accounts restored.
    pub accounts: usize,
    /// Hash of the rule pack that was active when it was taken.
    pub rules_version: String,
}

impl Engine {
    /// Writes the whole state to `path` (atomically: temp file, fsync, rename, fsync of the
    /// directory), with `meta` stored beside it. Call it between events: decisions made while
    /// it runs may or may not be included. Returns the file's size.
    pub fn save_snapshot(&self, path: &Path, meta: &[u8]) -> io::Result<u64> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(d) = dir {
            fs::create_dir_all(d)?;
        }
        let tmp = path.with_extension("tmp");
        // Readable by the owner alone: the snapshot holds the secret ids are hashed under. (A
        // temporary file left by a crash is made again, with this mode.)
        let _ = fs::remove_file(&tmp);
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut file = opts.open(&tmp)?;
        file.write_all(&[0; HEADER_LEN])?;
        let header = Header {
            base: HeaderV1 {
                created_by: concat!("vigil ", env!("CARGO_PKG_VERSION")).to_string(),
                rules_version: self.active().version.to_string(),
                events: self.events.load(Ordering::Relaxed),
                watermark: self.watermark.load(Ordering::Relaxed),
                late: self.late_events.load(Ordering::Relaxed),
                future: self.future_events.load(Ordering::Relaxed),
                duplicate: self.duplicate_events.load(Ordering::Relaxed),
                meta: meta.to_vec(),
            },
            ids: self.state.ids.secret(),
        };
        let body = BodyOut {
            header: &header,
            accounts: MapSeq(&self.state.accounts),
            keyed: [
                MapSeq(&self.state.keyed[0]),
                MapSeq(&self.state.keyed[1]),
                MapSeq(&self.state.keyed[2]),
            ],
            seen_tx: MapSeq(&self.state.seen_tx),
        };
        let mut w = Crc {
            inner: BufWriter::with_capacity(1 << 20, file.try_clone()?),
            crc: crc32fast::Hasher::new(),
            len: 0,
        };
        postcard::to_io(&body, &mut w).map_err(|e| io::Error::other(e.to_string()))?;
        w.flush()?;
        let Crc { inner, crc, len } = w;
        let crc = crc.finalize();
        drop(inner);
        let mut head = Vec::with_capacity(HEADER_LEN);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&FORMAT.to_le_bytes());
        head.extend_from_slice(&len.to_le_bytes());
        head.extend_from_slice(&crc.to_le_bytes());
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&head)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        if let Some(d) = dir {
            File::open(d)?.sync_all()?;
        }
        Ok(HEADER_LEN as u64 + len)
    }

    /// Replaces the state with the snapshot at `path`. The engine should be new (nothing
    /// decided yet); its rule pack is kept, whatever pack the snapshot was taken under.
    pub fn load_snapshot(&self, path: &Path) -> Result<Restored, SnapshotError> {
        let p = path.display().to_string();
        let invalid = |message: String| SnapshotError::Invalid {
            path: p.clone(),
            message,
        };
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|source| SnapshotError::Io {
                path: p.clone(),
                source,
            })?;
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(invalid("not a Vigil snapshot (bad magic)".into()));
        }
        let word = |r: std::ops::Range<usize>| {
            bytes[r]
                .iter()
                .rev()
                .fold(0u64, |a, b| a << 8 | u64::from(*b))
        };
        let format = word(8..12);
        if !(1..=u64::from(FORMAT)).contains(&format) {
            return Err(invalid(format!(
                "snapshot format {format}; this build reads format {FORMAT}"
            )));
        }
        let len = word(12..20);
        let crc = word(20..24);
        let body = &bytes[HEADER_LEN..];
        if body.len() as u64 != len {
            return Err(invalid(format!(
                "truncated: the header says {len} bytes of state, the file has {}",
                body.len()
            )));
        }
        if u64::from(crc32fast::hash(body)) != crc {
            return Err(invalid("checksum mismatch: the file is damaged".into()));
        }
        let decode_err = |e: postcard::Error| invalid(format!("cannot decode: {e}"));
        let b: BodyIn<Header> = if format == 1 {
            let b: BodyIn<HeaderV1> = postcard::from_bytes(body).map_err(decode_err)?;
            BodyIn {
                header: Header {
                    base: b.header,
                    ids: IdSecret::Unkeyed,
                },
                accounts: b.accounts,
                keyed: b.keyed,
                seen_tx: b.seen_tx,
            }
        } else {
            postcard::from_bytes(body).map_err(decode_err)?
        };
        let Header { base: h, ids } = b.header;
        if ids == IdSecret::Unkeyed {
            tracing::warn!(
                snapshot = %p,
                "the snapshot's state keys are unkeyed hashes (snapshot format 1, written before \
                 ids were hashed under a secret): crafted ids can share an account's or a \
                 device's history; start from an empty state directory to key them"
            );
        }
        self.state.ids.set(ids);
        let accounts = b.accounts.len();
        self.state.accounts.clear();
        for (k, v) in b.accounts {
            self.state.accounts.insert(k, v);
        }
        for (store, entries) in self.state.keyed.iter().zip(b.keyed) {
            store.clear();
            for (k, v) in entries {
                store.insert(k, v);
            }
        }
        self.state.seen_tx.clear();
        for (k, v) in b.seen_tx {
            // Before format 3 an entry's low 56 bits were its time, and what lay above them
            // is not what `seen` keeps there now.
            let v = if format < 3 {
                crate::state::seen::pack(v & ((1 << 56) - 1), None, 0)
            } else {
                v
            };
            self.state.seen_tx.insert(k, v);
        }
        self.events.store(h.events, Ordering::Relaxed);
        self.watermark.store(h.watermark, Ordering::Relaxed);
        self.late_events.store(h.late, Ordering::Relaxed);
        self.future_events.store(h.future, Ordering::Relaxed);
        self.duplicate_events.store(h.duplicate, Ordering::Relaxed);
        Ok(Restored {
            meta: h.meta,
            accounts,
            rules_version: h.rules_version,
        })
    }
}
