//! The spool: extracted windows that the destination cannot take right now, kept durably in
//! the data directory until it can, then delivered oldest first.
//!
//! One file per window (`spool/<pipeline>/<stream>/<window start>.spool`): a first line with
//! an HMAC-SHA-256 of the payload under a key derived from the master key (so only gapless
//! writes a file that passes), then the payload (JSON). Files are written to a temporary
//! name, fsync'd, renamed and the directory fsync'd, so a crash leaves either the old state
//! or the whole file. A file is accepted only when its MAC matches and the pipeline, stream
//! and window written inside it are those of its path; otherwise it is moved aside
//! (`.corrupt`) and its window extracted again while the provider still serves it.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Duration, Utc};
use gapless_core::{ColumnKind, PipelineId, Row, StreamSchema, Value, Window};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How the first line of a spool file begins.
const MAC_PREFIX: &str = "hmac-sha256:";

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("spool file {path} is corrupt ({detail})")]
    Corrupt { path: String, detail: String },
    #[error("the spool is full ({used} of {max} bytes); the window stays missing")]
    Full { used: u64, max: u64 },
}

/// One spooled window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpooledWindow {
    pub pipeline: PipelineId,
    pub stream: String,
    pub window: Window,
    pub extracted_at: DateTime<Utc>,
    pub rows: Vec<Row>,
}

/// A spooled window as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpoolEntry {
    pub pipeline: PipelineId,
    pub stream: String,
    pub window_start: DateTime<Utc>,
    pub bytes: u64,
    pub path: PathBuf,
}

/// The spool directory, its bounds and the key of its files' MACs.
#[derive(Clone)]
pub struct Spool {
    dir: PathBuf,
    pub max_bytes: u64,
    pub max_age: Duration,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Bring a value read back from JSON to the column's type (JSON cannot tell a date from
/// text).
fn coerce(value: Value, kind: ColumnKind) -> Value {
    match (value, kind) {
        (Value::Date(d), ColumnKind::Text | ColumnKind::Decimal) => {
            Value::Text(d.format("%Y-%m-%d").to_string())
        }
        (Value::Integer(i), ColumnKind::Text | ColumnKind::Decimal) => Value::Text(i.to_string()),
        (Value::Text(t), ColumnKind::Date) => chrono::NaiveDate::parse_from_str(&t, "%Y-%m-%d")
            .map(Value::Date)
            .unwrap_or(Value::Text(t)),
        (v, _) => v,
    }
}

impl SpooledWindow {
    /// The rows with each value in its column's type.
    pub fn typed_rows(&self, schema: &StreamSchema) -> Vec<Row> {
        self.rows
            .iter()
            .map(|row| {
                row.iter()
                    .cloned()
                    .zip(schema.columns.iter())
                    .map(|(v, c)| coerce(v, c.kind))
                    .collect()
            })
            .collect()
    }
}

impl Spool {
    /// `key` authenticates the files (derive it from the master key).
    pub fn new(dir: PathBuf, max_bytes: u64, max_age: Duration, key: Zeroizing<[u8; 32]>) -> Self {
        Self {
            dir,
            max_bytes,
            max_age,
            key,
        }
    }

    fn mac(&self) -> HmacSha256 {
        // Any key length is accepted by HMAC.
        <HmacSha256 as KeyInit>::new_from_slice(self.key.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
    }

    fn stream_dir(&self, pipeline: PipelineId, stream: &str) -> PathBuf {
        self.dir.join(pipeline.to_string()).join(stream)
    }

    /// Durably store a window (replacing an older extraction of the same window).
    pub fn put(&self, window: &SpooledWindow) -> Result<PathBuf, SpoolError> {
        let payload = serde_json::to_vec(window).map_err(|e| SpoolError::Corrupt {
            path: "new spool file".into(),
            detail: e.to_string(),
        })?;
        let used = self.usage()?.1;
        if used + payload.len() as u64 > self.max_bytes {
            return Err(SpoolError::Full {
                used,
                max: self.max_bytes,
            });
        }
        let dir = self.stream_dir(window.pipeline, &window.stream);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let name = format!("{}.spool", window.window.start.timestamp());
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut mac = self.mac();
        mac.update(&payload);
        let digest = hex::encode(mac.finalize().into_bytes());
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(format!("{MAC_PREFIX}{digest}\n").as_bytes())
            .and_then(|()| file.write_all(&payload))
            .and_then(|()| file.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&dir);
        Ok(path)
    }

    /// The spooled windows of a pipeline (all when None), oldest first.
    pub fn list(&self, pipeline: Option<PipelineId>) -> Result<Vec<SpoolEntry>, SpoolError> {
        let mut out = Vec::new();
        let pipelines: Vec<PathBuf> = match pipeline {
            Some(p) => vec![self.dir.join(p.to_string())],
            None => match std::fs::read_dir(&self.dir) {
                Ok(entries) => entries.filter_map(Result::ok).map(|e| e.path()).collect(),
                Err(_) => vec![],
            },
        };
        for pdir in pipelines {
            let Some(pid) = pdir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<PipelineId>().ok())
            else {
                continue;
            };
            let Ok(streams) = std::fs::read_dir(&pdir) else {
                continue;
            };
            for sdir in streams.filter_map(Result::ok).map(|e| e.path()) {
                let stream = sdir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                let Ok(files) = std::fs::read_dir(&sdir) else {
                    continue;
                };
                for file in files.filter_map(Result::ok) {
                    let path = file.path();
                    let Some(ts) = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_suffix(".spool"))
                        .and_then(|n| n.parse::<i64>().ok())
                    else {
                        continue;
                    };
                    let Some(window_start) = DateTime::from_timestamp(ts, 0) else {
                        continue;
                    };
                    out.push(SpoolEntry {
                        pipeline: pid,
                        stream: stream.clone(),
                        window_start,
                        bytes: file.metadata().map(|m| m.len()).unwrap_or(0),
                        path,
                    });
                }
            }
        }
        out.sort_by(|a, b| (a.window_start, &a.stream).cmp(&(b.window_start, &b.stream)));
        Ok(out)
    }

    /// Read and verify a spooled window; a corrupt file is moved aside.
    pub fn read(&self, entry: &SpoolEntry) -> Result<SpooledWindow, SpoolError> {
        self.inspect(entry).inspect_err(|error| {
            if matches!(error, SpoolError::Corrupt { .. }) {
                let _ = std::fs::rename(&entry.path, entry.path.with_extension("corrupt"));
            }
        })
    }

    /// Read and verify a spooled window, changing nothing.
    pub fn inspect(&self, entry: &SpoolEntry) -> Result<SpooledWindow, SpoolError> {
        let bytes = std::fs::read(&entry.path).map_err(io(&entry.path))?;
        let corrupt = |detail: &str| SpoolError::Corrupt {
            path: entry.path.display().to_string(),
            detail: detail.to_string(),
        };
        let Some(newline) = bytes.iter().position(|b| *b == b'\n') else {
            return Err(corrupt("no checksum line"));
        };
        let (head, payload) = (&bytes[..newline], &bytes[newline + 1..]);
        let expected = std::str::from_utf8(head)
            .ok()
            .and_then(|h| h.strip_prefix(MAC_PREFIX))
            // Exactly as written: lowercase hex.
            .filter(|h| {
                h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| {
                corrupt("its checksum line is not written by this installation (no MAC of its key)")
            })?;
        let mut mac = self.mac();
        mac.update(payload);
        if mac.verify_slice(&expected).is_err() {
            return Err(corrupt(
                "the checksum does not match (truncated, altered, or not written by this installation)",
            ));
        }
        let window: SpooledWindow =
            serde_json::from_slice(payload).map_err(|e| corrupt(&e.to_string()))?;
        // What the file says it is must be where it lies.
        if window.pipeline != entry.pipeline
            || window.stream != entry.stream
            || window.window.start != entry.window_start
            || window.window.end <= window.window.start
        {
            return Err(corrupt(&format!(
                "it holds {} {} from {}, not the window of its place",
                window.pipeline, window.stream, window.window.start
            )));
        }
        Ok(window)
    }

    /// Forget a delivered window.
    pub fn remove(&self, entry: &SpoolEntry) -> Result<(), SpoolError> {
        std::fs::remove_file(&entry.path).map_err(io(&entry.path))?;
        if let Some(dir) = entry.path.parent() {
            sync_dir(dir);
        }
        Ok(())
    }

    /// (files, bytes, oldest window) in the spool.
    pub fn usage(&self) -> Result<(usize, u64, Option<DateTime<Utc>>), SpoolError> {
        let list = self.list(None)?;
        Ok((
            list.len(),
            list.iter().map(|e| e.bytes).sum(),
            list.iter().map(|e| e.window_start).min(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn window() -> SpooledWindow {
        let start = Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).unwrap();
        SpooledWindow {
            pipeline: PipelineId::new(),
            stream: "insights".into(),
            window: Window::new(start, start + Duration::days(1)),
            extracted_at: start + Duration::days(1),
            rows: vec![vec![
                Value::Date(start.date_naive()),
                Value::Text("2026-01-05".into()),
                Value::Integer(3),
            ]],
        }
    }

    fn schema() -> StreamSchema {
        StreamSchema {
            name: "insights".into(),
            columns: vec![
                gapless_core::Column {
                    name: "date".into(),
                    kind: ColumnKind::Date,
                },
                gapless_core::Column {
                    name: "label".into(),
                    kind: ColumnKind::Text,
                },
                gapless_core::Column {
                    name: "n".into(),
                    kind: ColumnKind::Integer,
                },
            ],
            primary_key: vec![],
        }
    }

    #[test]
    fn a_window_round_trips_with_its_column_types() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(
            dir.path().to_path_buf(),
            1 << 20,
            Duration::days(7),
            Zeroizing::new([3; 32]),
        );
        let w = window();
        spool.put(&w).unwrap();
        let listed = spool.list(Some(w.pipeline)).unwrap();
        assert_eq!(listed.len(), 1);
        let back = spool.read(&listed[0]).unwrap();
        assert_eq!(
            back.typed_rows(&schema()),
            w.rows,
            "text that looks like a date stays text"
        );
        spool.remove(&listed[0]).unwrap();
        assert!(spool.list(None).unwrap().is_empty());
    }

    #[test]
    fn a_truncated_or_altered_file_is_refused_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(
            dir.path().to_path_buf(),
            1 << 20,
            Duration::days(7),
            Zeroizing::new([3; 32]),
        );
        let w = window();
        let path = spool.put(&w).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let entry = spool.list(None).unwrap().remove(0);
        let err = spool.read(&entry).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(spool.list(None).unwrap().is_empty(), "moved aside");
        assert!(path.with_extension("corrupt").exists());
    }

    #[test]
    fn a_file_not_written_by_this_installation_or_not_of_its_place_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(
            dir.path().to_path_buf(),
            1 << 20,
            Duration::days(7),
            Zeroizing::new([3; 32]),
        );
        // Another key (another installation, or someone who computed a plain checksum).
        let other = Spool::new(
            dir.path().to_path_buf(),
            1 << 20,
            Duration::days(7),
            Zeroizing::new([4; 32]),
        );
        let w = window();
        other.put(&w).unwrap();
        let entry = spool.list(None).unwrap().remove(0);
        let err = spool.read(&entry).unwrap_err();
        assert!(
            err.to_string().contains("not written by this installation"),
            "{err}"
        );
        // A valid file of one window copied to the place of another.
        let path = spool.put(&w).unwrap();
        let elsewhere = path.with_file_name(format!(
            "{}.spool",
            (w.window.start + Duration::days(3)).timestamp()
        ));
        std::fs::copy(&path, &elsewhere).unwrap();
        let entry = spool
            .list(None)
            .unwrap()
            .into_iter()
            .find(|e| e.path == elsewhere)
            .unwrap();
        let err = spool.read(&entry).unwrap_err();
        assert!(
            err.to_string().contains("not the window of its place"),
            "{err}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 128,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5b001),
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Bytes changed anywhere, or the file cut anywhere: the file is refused (never a
        /// panic, never another window) unless it is byte for byte the one written.
        #[test]
        fn a_spool_file_changed_anywhere_is_refused(
            at in 0_usize..4_096,
            xor in 1_u8..=255,
            cut in proptest::prelude::any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::new(
                dir.path().to_path_buf(),
                1 << 20,
                Duration::days(7),
                Zeroizing::new([3; 32]),
            );
            let w = window();
            let path = spool.put(&w).unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            let at = at % bytes.len();
            if cut {
                bytes.truncate(at);
            } else {
                bytes[at] ^= xor;
            }
            std::fs::write(&path, &bytes).unwrap();
            let entry = spool.list(None).unwrap().remove(0);
            proptest::prop_assert!(spool.read(&entry).is_err());
        }
    }

    #[test]
    fn a_full_spool_refuses_more() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(
            dir.path().to_path_buf(),
            100,
            Duration::days(7),
            Zeroizing::new([3; 32]),
        );
        let err = spool.put(&window()).unwrap_err();
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    }
}
