//! The server's durable store, behind one interface: SQLite in the data directory (the
//! embedded default, [`sqlite`]) or PostgreSQL shared by several servers ([`postgres`]).
//!
//! Both key events by their id, so a batch sent again after a lost ack (or redelivered by
//! JetStream after a server died) stores nothing twice, and both ack a batch only after
//! the transaction holding it has committed.

pub mod postgres;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::broadcast;

use super::wire::RawEvent;
use crate::pb;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating the data directory failed.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error, or could not be reached.
    #[error("PostgreSQL: {}", crate::tls::error_chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had from the pool.
    #[error("PostgreSQL: {0}")]
    Pool(String),
    /// `stats` or `events` was pointed at a directory without a store.
    #[error("{}: no tapio-server store here (events.db is missing)", .0.display())]
    NoStore(PathBuf),
    /// The `--store` URL is not one this server can use.
    #[error("--store {url:?}: {reason}")]
    Url {
        /// The URL, with any password left out.
        url: String,
        /// Why.
        reason: String,
    },
    /// A stored event no longer decodes.
    #[error("stored event does not decode: {0}")]
    Corrupt(#[from] prost::DecodeError),
    /// An event's row points outside its chunk.
    #[error("stored event at chunk {chunk}, offset {offset} is missing")]
    Missing {
        /// The chunk.
        chunk: i64,
        /// Where the event should start.
        offset: usize,
    },
    /// The writer thread has stopped.
    #[error("the store is closed")]
    Closed,
}

/// Result of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How hard a commit is pushed to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Sync {
    /// fsync on every commit: an acked batch survives power loss.
    #[default]
    Full,
    /// fsync at checkpoints: an acked batch survives a crash of the server, not of the OS.
    Normal,
}

/// One batch to store.
#[derive(Debug)]
pub struct Batch {
    /// The sending collector.
    pub collector_id: String,
    /// The batch's id.
    pub batch_id: u64,
    /// The batch's sequence number.
    pub sequence: u64,
    /// Its events, checked, as the bytes they arrived as.
    pub events: Vec<RawEvent>,
    /// Incident groups the collector closed, stored whole.
    pub groups: Vec<pb::SemanticGroup>,
}

/// What a commit did with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// Events stored for the first time.
    pub accepted: u32,
    /// Events that were already stored.
    pub duplicates: u32,
}

/// Totals over the whole store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Distinct events stored.
    pub events_total: u64,
    /// Distinct batches stored (a resent batch counts once).
    pub batches_total: u64,
    /// Bytes the stored data takes (SQLite: pages in use; PostgreSQL: the database).
    pub used_bytes: u64,
    /// The oldest event kept, in Unix milliseconds (SQLite: when it was collected, from
    /// its id; PostgreSQL: its timestamp).
    pub oldest_event_unix_ms: Option<u64>,
    /// What retention has done, once it has run.
    pub retention: Option<RetentionRecord>,
}

/// What to keep: events younger than `age`, and at most `max_bytes` of data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Remove what is older than this.
    pub age: Option<std::time::Duration>,
    /// Remove the oldest until the store takes at most this.
    pub max_bytes: Option<u64>,
}

impl Retention {
    /// Neither limit is set.
    #[must_use]
    pub fn is_off(&self) -> bool {
        self.age.is_none() && self.max_bytes.is_none()
    }
}

/// What one retention pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Events (PostgreSQL: the planner's row estimate of the dropped days).
    pub events: u64,
    /// Closed incident groups.
    pub groups: u64,
    /// Batch records (the dedup of resent batches).
    pub batches: u64,
}

/// Retention as the store records it, for `stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionRecord {
    /// `--retention-age` of the last pass, in seconds.
    pub age_seconds: Option<u64>,
    /// `--retention-bytes` of the last pass.
    pub max_bytes: Option<u64>,
    /// When the last pass ended, in Unix milliseconds.
    pub last_run_unix_ms: u64,
    /// Events removed over every pass.
    pub removed_events: u64,
    /// Groups removed over every pass.
    pub removed_groups: u64,
    /// Batch records removed over every pass.
    pub removed_batches: u64,
}

/// Filter of a stored-event query.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    /// Inclusive lower bound on the timestamp, in Unix nanoseconds; 0 = none.
    pub start: u64,
    /// Exclusive upper bound; 0 = none.
    pub end: u64,
    /// Only these types; empty = all.
    pub types: Vec<String>,
    /// Only this namespace; empty = all.
    pub pod_namespace: String,
    /// Only this pod name; empty = all.
    pub pod_name: String,
    /// Only this group; empty = all.
    pub group_id: Vec<u8>,
    /// At most this many, oldest first.
    pub limit: u32,
    /// Only events after this (timestamp, id): where the previous page ended.
    pub after: Option<(u64, [u8; 16])>,
}

/// Where a server keeps what it stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// SQLite in this directory.
    Sqlite(PathBuf),
    /// PostgreSQL at this URL (`postgres://user:password@host:port/db`).
    Postgres(String),
}

impl Location {
    /// `--store URL` when given (only `postgres://` and `postgresql://` URLs), else
    /// `--data-dir DIR`.
    pub fn from_flags(store: Option<&str>, data_dir: &Path) -> Result<Self> {
        match store {
            None => Ok(Self::Sqlite(data_dir.to_owned())),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres(url.to_owned()))
            }
            Some(url) => Err(Error::Url {
                url: postgres::redact(url),
                reason: "expected postgres://user:password@host:port/database; without --store \
                         the store is SQLite in --data-dir"
                    .into(),
            }),
        }
    }

    /// How the location shows in logs: the directory, or the URL without its password.
    #[must_use]
    pub fn display(&self) -> String {
        match self {
            Self::Sqlite(dir) => dir.display().to_string(),
            Self::Postgres(url) => postgres::redact(url),
        }
    }
}

/// A handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub enum Store {
    /// SQLite in the data directory.
    Sqlite(sqlite::Sqlite),
    /// PostgreSQL, shared with other servers.
    Postgres(postgres::Postgres),
}

impl Store {
    /// Opens (creating what is missing) the store at `location`; a shared store records
    /// `server` as the one that stored each batch.
    pub async fn open(
        location: &Location,
        sync: Sync,
        connections: usize,
        server: &str,
    ) -> Result<Self> {
        match location {
            Location::Sqlite(dir) => Ok(Self::Sqlite(sqlite::Sqlite::open(dir, sync)?)),
            Location::Postgres(url) => Ok(Self::Postgres(
                postgres::Postgres::connect(url, connections, server).await?,
            )),
        }
    }

    /// Opens an existing store to read it (`stats`, `events`): SQLite must already be there.
    pub async fn open_existing(location: &Location) -> Result<Self> {
        match location {
            Location::Sqlite(dir) => Ok(Self::Sqlite(sqlite::Sqlite::open_existing(dir)?)),
            Location::Postgres(url) => Ok(Self::Postgres(
                postgres::Postgres::connect(url, 2, "tapio-server (read-only)").await?,
            )),
        }
    }

    /// Stores a batch; resolves after the transaction holding it has committed.
    pub async fn write(&self, batch: Batch) -> Result<Committed> {
        match self {
            Self::Sqlite(s) => s.write(batch).await,
            Self::Postgres(p) => p.write(batch).await,
        }
    }

    /// Events this server stored for the first time, in commit order, as they commit.
    /// Several servers on one PostgreSQL each announce only their own commits.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<pb::Event>>> {
        match self {
            Self::Sqlite(s) => s.subscribe(),
            Self::Postgres(p) => p.subscribe(),
        }
    }

    /// Totals over the whole store.
    pub async fn stats(&self) -> Result<Stats> {
        match self {
            Self::Sqlite(s) => {
                let s = s.clone();
                off_thread(move || s.stats()).await
            }
            Self::Postgres(p) => p.stats().await,
        }
    }

    /// Removes what `policy` does not keep, in small steps so that ingest waits at most
    /// one step at a time; records the pass for `stats`.
    pub async fn retain(&self, policy: Retention) -> Result<Removed> {
        match self {
            Self::Sqlite(s) => {
                let s = s.clone();
                off_thread(move || s.retain(policy)).await
            }
            Self::Postgres(p) => p.retain(policy).await,
        }
    }

    /// Bytes the store takes: SQLite's database and journal files, or the PostgreSQL
    /// database's size.
    pub async fn size_bytes(&self) -> Result<u64> {
        match self {
            Self::Sqlite(s) => Ok(s.size_bytes()),
            Self::Postgres(p) => p.size_bytes().await,
        }
    }

    /// Stored events matching `query`, oldest first.
    pub async fn events(&self, query: EventQuery) -> Result<Vec<pb::Event>> {
        match self {
            Self::Sqlite(s) => {
                let s = s.clone();
                off_thread(move || s.events(&query)).await
            }
            Self::Postgres(p) => p.events(&query).await,
        }
    }

    /// Semantic groups first seen in [`start`, `end`) with at least `min_impact`, oldest
    /// first: the groups collectors closed and sent, as sent (root cause, predictions,
    /// summary), then groups still open on a collector, derived from their events'
    /// correlation fields.
    pub async fn groups(
        &self,
        start: u64,
        end: u64,
        min_impact: f64,
        limit: u32,
    ) -> Result<Vec<pb::SemanticGroup>> {
        let (closed, open) = match self {
            Self::Sqlite(s) => {
                let s = s.clone();
                off_thread(move || s.groups(start, end, limit)).await?
            }
            Self::Postgres(p) => p.groups(start, end, limit).await?,
        };
        Ok(merge_groups(closed, open, min_impact, limit))
    }
}

/// Runs a SQLite call off the async threads.
async fn off_thread<T: Send + 'static>(
    read: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| Error::Pool(format!("store read failed: {e}")))?
}

/// A group still open on a collector, as its stored events show it.
#[derive(Debug)]
pub struct OpenGroup {
    /// The group.
    pub group_id: Vec<u8>,
    /// Its first and last event's timestamps.
    pub first: u64,
    /// See `first`.
    pub last: u64,
    /// Its events, oldest first.
    pub events: Vec<pb::Event>,
}

/// Closed groups as sent, and open groups derived from their events (skipping those a
/// closed one covers), above `min_impact`, oldest first, at most `limit`.
fn merge_groups(
    closed: Vec<pb::SemanticGroup>,
    open: Vec<OpenGroup>,
    min_impact: f64,
    limit: u32,
) -> Vec<pb::SemanticGroup> {
    let mut groups: Vec<pb::SemanticGroup> = open
        .into_iter()
        .filter(|g| !closed.iter().any(|c| c.group_id == g.group_id))
        .filter_map(|g| {
            let impact = g
                .events
                .iter()
                .filter_map(|e| e.correlation.as_ref().map(|c| c.impact))
                .fold(0.0, f64::max);
            (impact >= min_impact).then(|| pb::SemanticGroup {
                trace_id: g
                    .events
                    .first()
                    .map(|e| e.trace_id.clone())
                    .unwrap_or_default(),
                event_ids: g.events.iter().map(|e| e.id.clone()).collect(),
                impact,
                causal_chain: g
                    .events
                    .iter()
                    .filter_map(|e| e.correlation.as_ref())
                    .flat_map(|c| c.causal_links.iter().cloned())
                    .collect(),
                first_seen_unix_nano: g.first,
                last_seen_unix_nano: g.last,
                group_id: g.group_id,
                ..pb::SemanticGroup::default()
            })
        })
        .collect();
    groups.extend(closed.into_iter().filter(|g| g.impact >= min_impact));
    groups.sort_by_key(|g| g.first_seen_unix_nano);
    groups.truncate(effective_limit(limit).try_into().unwrap_or(usize::MAX));
    groups
}

/// 0 means the default of 1000; at most 100 000.
fn effective_limit(limit: u32) -> i64 {
    match limit {
        0 => 1000,
        n => i64::from(n.min(100_000)),
    }
}

/// Timestamps are stored as signed 64-bit integers (both databases); they fit until 2262.
fn to_sql_ts(ts: u64) -> i64 {
    i64::try_from(ts).unwrap_or(i64::MAX)
}

fn from_sql_ts(ts: i64) -> u64 {
    u64::try_from(ts).unwrap_or(0)
}

/// The last timestamp below the exclusive bound `end` (0: none), so that the largest
/// timestamp stored is found too.
fn upper_bound(end: u64) -> i64 {
    if end == 0 {
        i64::MAX
    } else {
        to_sql_ts(end - 1)
    }
}
