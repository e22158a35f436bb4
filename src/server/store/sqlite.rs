//! The default store: SQLite in WAL mode, one writer thread that commits batches
//! in groups (several batches per transaction, each acked only after its commit), and
//! read-only connections for queries.
//!
//! Events are keyed by their 16-byte id, so a batch that is sent again after a lost ack
//! stores nothing twice. Each event's row holds the indexed columns and where its bytes
//! are: the new events of a batch are stored together as one chunk (one blob per batch
//! rather than one per event: a third of the writer's time, `cargo bench --bench e2e`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    Batch, Committed, Error, EventQuery, OpenGroup, Result, Stats, Sync, effective_limit,
    from_sql_ts, to_sql_ts, upper_bound,
};
use crate::pb;

struct Job {
    batch: Batch,
    reply: oneshot::Sender<Result<Committed>>,
}

/// A handle to a SQLite store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Sqlite {
    path: Arc<PathBuf>,
    jobs: mpsc::Sender<Job>,
    committed: broadcast::Sender<Arc<Vec<pb::Event>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("batch_id", &self.batch.batch_id)
            .finish_non_exhaustive()
    }
}

/// Batches committed in one transaction at most.
const GROUP: usize = 64;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS events (
        id BLOB PRIMARY KEY,
        ts INTEGER NOT NULL,
        type TEXT NOT NULL,
        pod_namespace TEXT NOT NULL,
        pod_name TEXT NOT NULL,
        group_id BLOB,
        chunk INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS chunks (
        seq INTEGER PRIMARY KEY,
        bytes BLOB NOT NULL
    );

    CREATE INDEX IF NOT EXISTS events_by_group ON events(group_id) WHERE group_id IS NOT NULL;
    CREATE TABLE IF NOT EXISTS semantic_groups (
        group_id BLOB PRIMARY KEY,
        first_seen INTEGER NOT NULL,
        message BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS batches (
        collector_id TEXT NOT NULL,
        batch_id INTEGER NOT NULL,
        sequence INTEGER NOT NULL,
        events INTEGER NOT NULL,
        accepted INTEGER NOT NULL,
        stored_at INTEGER NOT NULL,
        PRIMARY KEY (collector_id, batch_id)
    ) WITHOUT ROWID;
    -- The newest event id of each chunk: a chunk older than every event kept holds none
    -- of them, so retention removes it.
    CREATE TABLE IF NOT EXISTS chunk_ages (
        seq INTEGER PRIMARY KEY,
        newest BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS chunk_ages_by_newest ON chunk_ages(newest);
    CREATE INDEX IF NOT EXISTS groups_by_first_seen ON semantic_groups(first_seen);
    CREATE TABLE IF NOT EXISTS retention (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        age_seconds INTEGER,
        max_bytes INTEGER,
        last_run INTEGER NOT NULL,
        removed_events INTEGER NOT NULL,
        removed_groups INTEGER NOT NULL,
        removed_batches INTEGER NOT NULL
    );
";

/// Rows one retention step deletes: each step holds the write lock for a few
/// milliseconds, so a commit waits at most that long.
const RETAIN_ROWS: i64 = 2_000;

/// Chunks (a batch's event bytes each) one retention step deletes.
const RETAIN_CHUNKS: i64 = 16;

/// Pause between retention steps, for the writer to take the lock.
const RETAIN_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

impl Sqlite {
    /// Opens (creating if needed) the store in `dir` and starts its writer thread.
    pub fn open(dir: &Path, sync: Sync) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("events.db");
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match sync {
                Sync::Full => "FULL",
                Sync::Normal => "NORMAL",
            },
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        // Checkpoints run on their own thread (`checkpoint_loop`): inside the writer they
        // were a fifth of its time, and the writer is the server's one serial stage.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES)?;
        let checkpointer = Connection::open(&path)?;
        checkpointer.busy_timeout(std::time::Duration::from_secs(5))?;
        let (jobs, rx) = mpsc::channel(GROUP * 4);
        let next_chunk: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM chunks", [], |row| {
                row.get(0)
            })?;
        let (committed, _) = broadcast::channel(1024);
        let fanout = committed.clone();
        std::thread::Builder::new()
            .name("tapio-store".into())
            .spawn(move || {
                let (written, wakeups) = std::sync::mpsc::sync_channel(1);
                let checkpoints = std::thread::Builder::new()
                    .name("tapio-checkpoint".into())
                    .spawn(move || checkpoint_loop(&checkpointer, &wakeups));
                write_loop(conn, rx, &fanout, next_chunk, &written);
                drop(written);
                if let Ok(handle) = checkpoints {
                    let _ = handle.join();
                }
            })
            .map_err(|source| Error::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        Ok(Self {
            path: Arc::new(path),
            jobs,
            committed,
        })
    }

    /// Stores a batch; resolves after the transaction holding it has committed.
    pub async fn write(&self, batch: Batch) -> Result<Committed> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { batch, reply })
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Newly stored events, in commit order, as they commit.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<pb::Event>>> {
        self.committed.subscribe()
    }

    /// A store another process (a running server) may be writing, opened to read it:
    /// `events.db` must be there already.
    pub fn open_existing(dir: &Path) -> Result<Self> {
        let path = dir.join("events.db");
        if !path.is_file() {
            return Err(Error::NoStore(dir.to_owned()));
        }
        // Never written through: a closed channel makes any write fail as `Closed`.
        let (jobs, _) = mpsc::channel(1);
        let (committed, _) = broadcast::channel(1);
        Ok(Self {
            path: Arc::new(path),
            jobs,
            committed,
        })
    }

    /// Bytes of the database file and its write-ahead log.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let mut path = self.path.as_os_str().to_owned();
                path.push(suffix);
                std::fs::metadata(path).ok()
            })
            .map(|m| m.len())
            .sum()
    }

    /// One retention pass (blocking): by age, events collected before `now - age` (their
    /// ids are time-ordered, so this is a range of the primary key), groups first seen
    /// then, and batch records stored then; by size, the oldest events until the pages in
    /// use fit. Chunks older than every event kept go with them. Each step is its own
    /// short transaction on a connection of its own, with a pause between steps.
    pub fn retain(&self, policy: super::Retention) -> Result<super::Removed> {
        let conn = Connection::open(self.path.as_path())?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut removed = super::Removed::default();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if let Some(age) = policy.age {
            let since = now_ms.saturating_sub(age.as_millis() as u64);
            let cutoff = id_floor(since);
            let cutoff_ns = to_sql_ts(since.saturating_mul(1_000_000));
            removed.events += retain_steps(&conn, |tx| {
                delete_events(tx, "WHERE id < ?1", params![&cutoff[..], RETAIN_ROWS])
            })?;
            retain_steps(&conn, delete_chunks)?;
            removed.groups += delete_groups_before(&conn, cutoff_ns)?;
            removed.batches += retain_steps(&conn, |tx| {
                Ok(tx.execute(
                    "DELETE FROM batches WHERE (collector_id, batch_id) IN
                       (SELECT collector_id, batch_id FROM batches WHERE stored_at < ?1 LIMIT ?2)",
                    params![cutoff_ns, RETAIN_ROWS],
                )? as u64)
            })?;
        }
        if let Some(max_bytes) = policy.max_bytes {
            // One step of the oldest events, then their chunks, then measure again.
            while used_bytes(&conn)? > max_bytes {
                let tx = immediate(&conn)?;
                let n = delete_events(&tx, "", params![RETAIN_ROWS])?;
                tx.commit()?;
                retain_steps(&conn, delete_chunks)?;
                if n == 0 {
                    break;
                }
                removed.events += n;
                std::thread::sleep(RETAIN_PAUSE);
            }
            // Groups first seen before the oldest event kept go too.
            if let Some(oldest) = oldest_id(&conn)? {
                let oldest_ns = to_sql_ts(id_millis(&oldest).saturating_mul(1_000_000));
                removed.groups += delete_groups_before(&conn, oldest_ns)?;
            }
        }
        record_retention(&conn, policy, now_ms, removed)?;
        Ok(removed)
    }

    /// Totals, read from a fresh read-only connection.
    pub fn stats(&self) -> Result<Stats> {
        stats_at(&self.path)
    }

    /// Stored events matching `query`, oldest first.
    pub fn events(&self, query: &EventQuery) -> Result<Vec<pb::Event>> {
        events_at(&self.path, query)
    }

    /// Closed groups first seen in [`start`, `end`), as sent, and the groups still open
    /// there, from their events (see [`super::Store::groups`]).
    pub fn groups(
        &self,
        start: u64,
        end: u64,
        limit: u32,
    ) -> Result<(Vec<pb::SemanticGroup>, Vec<OpenGroup>)> {
        let conn = open_read(&self.path)?;
        let mut closed = Vec::new();
        {
            let mut statement = conn.prepare(
                "SELECT message FROM semantic_groups WHERE first_seen >= ?1 AND first_seen <= ?2
                 ORDER BY first_seen LIMIT ?3",
            )?;
            let rows = statement.query_map(
                params![to_sql_ts(start), upper_bound(end), effective_limit(limit)],
                |row| row.get::<_, Vec<u8>>(0),
            )?;
            for bytes in rows {
                closed.push(pb::SemanticGroup::decode(bytes?.as_slice())?);
            }
        }
        let mut statement = conn.prepare(
            "SELECT group_id, MIN(ts), MAX(ts) FROM events
             WHERE group_id IS NOT NULL AND ts >= ?1 AND ts <= ?2
             GROUP BY group_id HAVING COUNT(*) > 1 ORDER BY MIN(ts) LIMIT ?3",
        )?;
        let rows = statement
            .query_map(
                params![to_sql_ts(start), upper_bound(end), effective_limit(limit)],
                |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let mut open = Vec::with_capacity(rows.len());
        for (group_id, first, last) in rows {
            let events = events_at(
                &self.path,
                &EventQuery {
                    group_id: group_id.clone(),
                    limit: 100_000,
                    ..EventQuery::default()
                },
            )?;
            open.push(OpenGroup {
                group_id,
                first: from_sql_ts(first),
                last: from_sql_ts(last),
                events,
            });
        }
        Ok((closed, open))
    }
}

/// The smallest id minted at `millis`: every id below it was minted earlier.
fn id_floor(millis: u64) -> [u8; 16] {
    (u128::from(millis) << 80).to_be_bytes()
}

/// The millisecond an id was minted in.
fn id_millis(id: &[u8]) -> u64 {
    let mut bytes = [0u8; 16];
    let n = id.len().min(16);
    bytes[..n].copy_from_slice(&id[..n]);
    (u128::from_be_bytes(bytes) >> 80) as u64
}

fn oldest_id(conn: &Connection) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .query_row("SELECT id FROM events ORDER BY id LIMIT 1", [], |row| {
            row.get(0)
        })
        .optional()?)
}

/// Pages in use (not free) times the page size.
fn used_bytes(conn: &Connection) -> Result<u64> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |row| row.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
    Ok((pages - free).max(0).unsigned_abs() * size.unsigned_abs())
}

/// Runs `step` in its own write transaction until it removes nothing, pausing between
/// steps; returns the rows it removed.
fn retain_steps(
    conn: &Connection,
    mut step: impl FnMut(&rusqlite::Transaction<'_>) -> Result<u64>,
) -> Result<u64> {
    let mut total = 0;
    loop {
        let tx = immediate(conn)?;
        let n = step(&tx)?;
        tx.commit()?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
        std::thread::sleep(RETAIN_PAUSE);
    }
}

/// Deletes the groups first seen before `ns`, a step at a time.
fn delete_groups_before(conn: &Connection, ns: i64) -> Result<u64> {
    retain_steps(conn, |tx| {
        Ok(tx.execute(
            "DELETE FROM semantic_groups WHERE group_id IN
               (SELECT group_id FROM semantic_groups WHERE first_seen < ?1 LIMIT ?2)",
            params![ns, RETAIN_ROWS],
        )? as u64)
    })
}

/// A write transaction that takes the lock at once (waiting out the writer's commit).
fn immediate(conn: &Connection) -> Result<rusqlite::Transaction<'_>> {
    Ok(rusqlite::Transaction::new_unchecked(
        conn,
        rusqlite::TransactionBehavior::Immediate,
    )?)
}

/// Deletes up to `RETAIN_ROWS` of the oldest events matching `filter` (over `id`): one
/// step.
fn delete_events(
    tx: &rusqlite::Transaction<'_>,
    filter: &str,
    values: impl rusqlite::Params,
) -> Result<u64> {
    let limit = if filter.is_empty() { "?1" } else { "?2" };
    let n = tx.execute(
        &format!(
            "DELETE FROM events WHERE id IN
               (SELECT id FROM events {filter} ORDER BY id LIMIT {limit})"
        ),
        values,
    )? as u64;
    Ok(n)
}

/// Deletes up to `RETAIN_CHUNKS` chunks whose newest event is older than the oldest event
/// kept (so they hold none of them); all chunks when no event is kept: one step.
fn delete_chunks(tx: &rusqlite::Transaction<'_>) -> Result<u64> {
    let floor = oldest_id(tx)?;
    let seqs: Vec<i64> = tx
        .prepare_cached(
            "SELECT seq FROM chunk_ages WHERE (?1 IS NULL OR newest < ?1) ORDER BY newest LIMIT ?2",
        )?
        .query_map(params![floor, RETAIN_CHUNKS], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for seq in &seqs {
        tx.execute("DELETE FROM chunks WHERE seq = ?1", params![seq])?;
        tx.execute("DELETE FROM chunk_ages WHERE seq = ?1", params![seq])?;
    }
    Ok(seqs.len() as u64)
}

fn record_retention(
    conn: &Connection,
    policy: super::Retention,
    now_ms: u64,
    removed: super::Removed,
) -> Result<()> {
    conn.execute(
        "INSERT INTO retention (id, age_seconds, max_bytes, last_run, removed_events,
                                removed_groups, removed_batches)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (id) DO UPDATE SET
           age_seconds = excluded.age_seconds, max_bytes = excluded.max_bytes,
           last_run = excluded.last_run,
           removed_events = removed_events + excluded.removed_events,
           removed_groups = removed_groups + excluded.removed_groups,
           removed_batches = removed_batches + excluded.removed_batches",
        params![
            policy.age.map(|a| a.as_secs().cast_signed()),
            policy.max_bytes.map(u64::cast_signed),
            now_ms.cast_signed(),
            removed.events.cast_signed(),
            removed.groups.cast_signed(),
            removed.batches.cast_signed(),
        ],
    )?;
    Ok(())
}

fn open_read(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn stats_at(path: &Path) -> Result<Stats> {
    let conn = open_read(path)?;
    let count = |table: &str| -> Result<u64> {
        let n: Option<i64> = conn
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .optional()?;
        Ok(n.map_or(0, i64::unsigned_abs))
    };
    let retention = conn
        .query_row(
            "SELECT age_seconds, max_bytes, last_run, removed_events, removed_groups,
                    removed_batches FROM retention WHERE id = 1",
            [],
            |row| {
                Ok(super::RetentionRecord {
                    age_seconds: row.get::<_, Option<i64>>(0)?.map(i64::unsigned_abs),
                    max_bytes: row.get::<_, Option<i64>>(1)?.map(i64::unsigned_abs),
                    last_run_unix_ms: row.get::<_, i64>(2)?.unsigned_abs(),
                    removed_events: row.get::<_, i64>(3)?.unsigned_abs(),
                    removed_groups: row.get::<_, i64>(4)?.unsigned_abs(),
                    removed_batches: row.get::<_, i64>(5)?.unsigned_abs(),
                })
            },
        )
        .optional()
        // A store written before retention existed has no such table until it is opened
        // for writing.
        .unwrap_or(None);
    Ok(Stats {
        events_total: count("events")?,
        batches_total: count("batches")?,
        used_bytes: used_bytes(&conn)?,
        oldest_event_unix_ms: oldest_id(&conn)?.map(|id| id_millis(&id)),
        retention,
    })
}

fn events_at(path: &Path, query: &EventQuery) -> Result<Vec<pb::Event>> {
    let conn = open_read(path)?;
    let mut sql =
        String::from("SELECT chunk, offset, length FROM events WHERE ts >= ? AND ts <= ?");
    let mut values: Vec<rusqlite::types::Value> =
        vec![to_sql_ts(query.start).into(), upper_bound(query.end).into()];
    if !query.types.is_empty() {
        sql.push_str(" AND type IN (");
        sql.push_str(&vec!["?"; query.types.len()].join(","));
        sql.push(')');
        values.extend(query.types.iter().cloned().map(Into::into));
    }
    if !query.pod_namespace.is_empty() {
        sql.push_str(" AND pod_namespace = ?");
        values.push(query.pod_namespace.clone().into());
    }
    if !query.pod_name.is_empty() {
        sql.push_str(" AND pod_name = ?");
        values.push(query.pod_name.clone().into());
    }
    if !query.group_id.is_empty() {
        sql.push_str(" AND group_id = ?");
        values.push(query.group_id.clone().into());
    }
    if let Some((ts, id)) = query.after {
        sql.push_str(" AND (ts > ? OR (ts = ? AND id > ?))");
        values.push(to_sql_ts(ts).into());
        values.push(to_sql_ts(ts).into());
        values.push(id.to_vec().into());
    }
    sql.push_str(" ORDER BY ts, id LIMIT ?");
    values.push(effective_limit(query.limit).into());
    let mut statement = conn.prepare(&sql)?;
    let places = statement
        .query_map(rusqlite::params_from_iter(values), |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, u32>(1)? as usize,
                row.get::<_, u32>(2)? as usize,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    // Events of one batch share a chunk: read each chunk once.
    let mut chunks: std::collections::HashMap<i64, Vec<u8>> = std::collections::HashMap::new();
    let mut read_chunk = conn.prepare("SELECT bytes FROM chunks WHERE seq = ?1")?;
    let mut events = Vec::with_capacity(places.len());
    for (chunk, offset, length) in places {
        let stored = match chunks.entry(chunk) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(read_chunk.query_row([chunk], |row| row.get(0))?)
            }
        };
        let bytes = stored
            .get(offset..offset + length)
            .ok_or(Error::Missing { chunk, offset })?;
        events.push(pb::Event::decode(bytes)?);
    }
    Ok(events)
}

fn write_loop(
    mut conn: Connection,
    mut jobs: mpsc::Receiver<Job>,
    committed: &broadcast::Sender<Arc<Vec<pb::Event>>>,
    mut next_chunk: i64,
    written: &std::sync::mpsc::SyncSender<()>,
) {
    let mut group = Vec::with_capacity(GROUP);
    while let Some(first) = jobs.blocking_recv() {
        group.push(first);
        while group.len() < GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let watching = committed.receiver_count() > 0;
        match commit(&mut conn, &group, watching, &mut next_chunk) {
            Ok((results, fresh)) => {
                if let Some(fresh) = fresh.filter(|f| !f.is_empty()) {
                    let _ = committed.send(Arc::new(fresh));
                }
                for (job, result) in group.drain(..).zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
                // Full means a wake-up is already pending; one is enough.
                let _ = written.try_send(());
            }
            Err(error) => {
                tracing::error!(error = %error, batches = group.len(), "Commit failed; the batches are not acked.");
                for job in group.drain(..) {
                    let _ = job.reply.send(Err(Error::Sqlite(clone_error(&error))));
                }
            }
        }
    }
}

/// Database page size: 16 KiB pages stored 40% more events/s than 4 KiB (`cargo bench --bench store`).
const PAGE_SIZE: i64 = 16384;

/// WAL size above which a checkpoint waits for the writer rather than running beside it.
const WAL_LIMIT_BYTES: i64 = 256 << 20;

/// Copies committed WAL frames into the database after each commit, beside the writer.
///
/// A passive checkpoint never blocks the writer, but under sustained load it may never
/// catch up with it, and the WAL would grow without bound; past `WAL_LIMIT_BYTES` the
/// checkpoint restarts the log, which holds the writer for one copy.
fn checkpoint_loop(conn: &Connection, wakeups: &std::sync::mpsc::Receiver<()>) {
    let mut mode = "PASSIVE";
    while wakeups.recv().is_ok() {
        let outcome = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            row.get::<_, i64>(1)
        });
        match outcome {
            Ok(frames) => {
                mode = if frames * PAGE_SIZE > WAL_LIMIT_BYTES {
                    "RESTART"
                } else {
                    "PASSIVE"
                };
            }
            Err(error) => {
                tracing::warn!(error = %error, "WAL checkpoint failed; the next commit retries it.");
            }
        }
    }
}

/// rusqlite errors are not Clone; every waiter gets an equivalent one.
fn clone_error(error: &rusqlite::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(error.to_string().into())
}

type CommitOutcome = (Vec<Committed>, Option<Vec<pb::Event>>);

fn commit(
    conn: &mut Connection,
    group: &[Job],
    watching: bool,
    next_chunk: &mut i64,
) -> rusqlite::Result<CommitOutcome> {
    let tx = conn.transaction()?;
    let mut results = Vec::with_capacity(group.len());
    let mut fresh = watching.then(Vec::new);
    {
        let mut insert_event = tx.prepare_cached(
            "INSERT OR IGNORE INTO events
                 (id, ts, type, pod_namespace, pod_name, group_id, chunk, offset, length)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut insert_chunk =
            tx.prepare_cached("INSERT INTO chunks (seq, bytes) VALUES (?1, ?2)")?;
        let mut insert_age =
            tx.prepare_cached("INSERT INTO chunk_ages (seq, newest) VALUES (?1, ?2)")?;
        // A resent batch carries the same groups: the first copy stays.
        let mut insert_group = tx.prepare_cached(
            "INSERT OR IGNORE INTO semantic_groups (group_id, first_seen, message) VALUES (?1, ?2, ?3)",
        )?;
        let mut insert_batch = tx.prepare_cached(
            "INSERT OR IGNORE INTO batches (collector_id, batch_id, sequence, events, accepted, stored_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let mut chunk = Vec::new();
        for job in group {
            let mut accepted = 0u32;
            let seq = *next_chunk;
            *next_chunk += 1;
            chunk.clear();
            let mut newest: &[u8] = &[];
            for event in &job.batch.events {
                let inserted = insert_event.execute(params![
                    &event.id[..],
                    to_sql_ts(event.timestamp),
                    event.kind(),
                    event.pod_namespace(),
                    event.pod_name(),
                    event.group_id.as_ref().map(|g| &g[..]),
                    seq,
                    // Messages are capped far below 4 GiB (--max-message-bytes).
                    chunk.len() as u32,
                    event.bytes.len() as u32,
                ])?;
                if inserted > 0 {
                    newest = newest.max(&event.id[..]);
                    chunk.extend_from_slice(&event.bytes);
                    accepted += 1;
                    if let Some(fresh) = fresh.as_mut() {
                        // Only the live tail wants structs; it is the one place that decodes.
                        if let Ok(decoded) = event.decode() {
                            fresh.push(decoded);
                        }
                    }
                }
            }
            if !chunk.is_empty() {
                insert_chunk.execute(params![seq, chunk])?;
                insert_age.execute(params![seq, newest])?;
            }
            for group in &job.batch.groups {
                insert_group.execute(params![
                    group.group_id,
                    to_sql_ts(group.first_seen_unix_nano),
                    group.encode_to_vec(),
                ])?;
            }
            let total = job.batch.events.len() as u32;
            insert_batch.execute(params![
                job.batch.collector_id,
                // SQLite integers are signed; the bits round-trip.
                job.batch.batch_id.cast_signed(),
                job.batch.sequence.cast_signed(),
                total,
                accepted,
                now,
            ])?;
            results.push(Committed {
                accepted,
                duplicates: total - accepted,
            });
        }
    }
    tx.commit()?;
    Ok((results, fresh))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventId};
    use crate::server::wire::RawEvent;

    fn event(n: u128, kind: &str, namespace: &str) -> pb::Event {
        let mut e = Event::new(EventId::from_u128(n), n as u64, kind.to_owned(), "test");
        e.entities.pod_namespace = namespace.into();
        e.into()
    }

    fn batch(id: u64, events: Vec<pb::Event>) -> Batch {
        Batch {
            collector_id: "node-a".into(),
            batch_id: id,
            sequence: id,
            events: events
                .into_iter()
                .map(|e| RawEvent::from_message(&e).expect("valid event"))
                .collect(),
            groups: Vec::new(),
        }
    }

    /// An event collected `days_ago` days ago (its id says when), number `n` of that day.
    fn aged(days_ago: u64, n: u128) -> pb::Event {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let ms = now_ms - days_ago * 86_400_000;
        event((u128::from(ms) << 80) | n, "a.b", "x")
    }

    fn chunks(store: &Sqlite) -> i64 {
        Connection::open(store.path.as_path())
            .expect("opens")
            .query_row("SELECT COUNT(*) FROM chunks", [], |row| row.get(0))
            .expect("counts")
    }

    #[tokio::test]
    async fn retention_by_age_removes_old_events_with_their_chunks_and_groups_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Sqlite::open(dir.path(), Sync::Normal).expect("opens");
        for id in 0..10u64 {
            let days = if id < 6 { 10 } else { 0 };
            let events = (0..300u128).map(|n| aged(days, n)).collect();
            let mut write = batch(id, events);
            write.groups.push(pb::SemanticGroup {
                group_id: vec![id as u8; 16],
                trace_id: vec![1; 16],
                first_seen_unix_nano: id_millis(&aged(days, 0).id) * 1_000_000,
                ..pb::SemanticGroup::default()
            });
            store.write(write).await.expect("commits");
        }
        assert_eq!(chunks(&store), 10);
        let before = store.stats().expect("stats");
        assert_eq!(before.events_total, 3000);
        let policy = crate::server::store::Retention {
            age: Some(std::time::Duration::from_hours(24 * 7)),
            max_bytes: None,
        };
        let removed = store.retain(policy).expect("retains");
        assert_eq!(
            (removed.events, removed.groups, removed.batches),
            (1800, 6, 0)
        );
        assert_eq!(chunks(&store), 4, "the old batches' chunks went with them");
        let stats = store.stats().expect("stats");
        assert_eq!(stats.events_total, 1200);
        let all = EventQuery {
            limit: 100_000,
            ..EventQuery::default()
        };
        let kept = store.events(&all).expect("queries");
        assert_eq!(kept.len(), 1200, "every event kept still reads");
        let oldest = stats.oldest_event_unix_ms.expect("an oldest event");
        assert!(
            oldest + 86_400_000 > before.oldest_event_unix_ms.expect("oldest") + 9 * 86_400_000
        );
        let record = stats.retention.expect("the pass is recorded");
        assert_eq!(record.age_seconds, Some(7 * 86_400));
        assert_eq!(record.removed_events, 1800);
        // A second pass finds nothing and adds nothing.
        assert_eq!(
            store.retain(policy).expect("retains"),
            super::super::Removed::default()
        );
        assert_eq!(
            store
                .stats()
                .expect("stats")
                .retention
                .expect("record")
                .removed_events,
            1800
        );
    }

    #[tokio::test]
    async fn retention_by_size_removes_the_oldest_until_the_store_fits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Sqlite::open(dir.path(), Sync::Normal).expect("opens");
        for id in 0..40u64 {
            let events = (0..500u128).map(|n| aged(40 - id, n)).collect();
            store.write(batch(id, events)).await.expect("commits");
        }
        let full = store.stats().expect("stats");
        let cap = full.used_bytes / 2;
        let policy = crate::server::store::Retention {
            age: None,
            max_bytes: Some(cap),
        };
        let removed = store.retain(policy).expect("retains");
        let stats = store.stats().expect("stats");
        assert!(stats.used_bytes <= cap, "{} > {cap}", stats.used_bytes);
        assert_eq!(stats.events_total + removed.events, 20_000);
        assert!(removed.events > 0 && stats.events_total > 0);
        // The oldest went first: what is left is the newest days.
        let all = EventQuery {
            limit: 100_000,
            ..EventQuery::default()
        };
        let kept = store.events(&all).expect("queries");
        assert_eq!(
            kept.len() as u64,
            stats.events_total,
            "every event kept still reads"
        );
        let yesterday = id_millis(&aged(1, 0).id) - 3_600_000;
        assert!(
            kept.iter().any(|e| id_millis(&e.id) > yesterday),
            "the newest day is kept"
        );
        assert!(stats.oldest_event_unix_ms > full.oldest_event_unix_ms);
    }

    #[tokio::test]
    async fn committed_frames_reach_the_database_file_while_the_store_is_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Sqlite::open(dir.path(), Sync::Normal).expect("opens");
        let db = dir.path().join("events.db");
        let before = std::fs::metadata(&db).expect("database file").len();
        for id in 0..20u64 {
            let events = (0..200u128)
                .map(|n| event(u128::from(id) * 1000 + n + 1, "a.b", "x"))
                .collect();
            store.write(batch(id, events)).await.expect("commits");
        }
        // The writer never checkpoints; only the checkpoint thread moves pages out of
        // the WAL into the database file.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut after = before;
        while after <= before && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            after = std::fs::metadata(&db).expect("database file").len();
        }
        assert!(
            after > before,
            "the database file stayed at {before} bytes: nothing was checkpointed"
        );
        assert_eq!(store.stats().expect("stats").events_total, 4000);
    }

    #[tokio::test]
    async fn a_resent_batch_stores_nothing_twice() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Sqlite::open(dir.path(), Sync::Normal).expect("opens");
        let first = store
            .write(batch(1, vec![event(1, "a.b", "x"), event(2, "a.b", "x")]))
            .await
            .expect("commits");
        assert_eq!(
            first,
            Committed {
                accepted: 2,
                duplicates: 0
            }
        );
        let again = store
            .write(batch(1, vec![event(1, "a.b", "x"), event(2, "a.b", "x")]))
            .await
            .expect("commits");
        assert_eq!(
            again,
            Committed {
                accepted: 0,
                duplicates: 2
            }
        );
        let overlap = store
            .write(batch(2, vec![event(2, "a.b", "x"), event(3, "c.d", "y")]))
            .await
            .expect("commits");
        assert_eq!(
            overlap,
            Committed {
                accepted: 1,
                duplicates: 1
            }
        );
        // A chunk holds only the new events; every row still finds its own bytes.
        let stored: Vec<u64> = store
            .events(&EventQuery::default())
            .expect("queries")
            .iter()
            .map(|e| e.timestamp_unix_nano)
            .collect();
        assert_eq!(stored, [1, 2, 3]);
        let stats = store.stats().expect("stats");
        assert_eq!((stats.events_total, stats.batches_total), (3, 2));
        assert_eq!(stats.retention, None);
    }

    #[tokio::test]
    async fn queries_filter_by_type_namespace_time_and_limit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Sqlite::open(dir.path(), Sync::Normal).expect("opens");
        let events = (1..=10)
            .map(|n| {
                event(
                    n,
                    if n % 2 == 0 { "even.x" } else { "odd.x" },
                    if n <= 5 { "a" } else { "b" },
                )
            })
            .collect();
        store.write(batch(1, events)).await.expect("commits");
        let found = |query: EventQuery| -> Vec<u64> {
            store
                .events(&query)
                .expect("queries")
                .iter()
                .map(|e| e.timestamp_unix_nano)
                .collect()
        };
        assert_eq!(
            found(EventQuery {
                types: vec!["even.x".into()],
                ..EventQuery::default()
            }),
            [2, 4, 6, 8, 10]
        );
        assert_eq!(
            found(EventQuery {
                pod_namespace: "b".into(),
                limit: 2,
                ..EventQuery::default()
            }),
            [6, 7]
        );
        assert_eq!(
            found(EventQuery {
                start: 3,
                end: 5,
                ..EventQuery::default()
            }),
            [3, 4]
        );
    }

    #[tokio::test]
    async fn subscribers_see_only_new_events_after_commit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Sqlite::open(dir.path(), Sync::Normal).expect("opens");
        let mut live = store.subscribe();
        store
            .write(batch(1, vec![event(1, "a.b", "x")]))
            .await
            .expect("commits");
        store
            .write(batch(2, vec![event(1, "a.b", "x"), event(2, "a.b", "x")]))
            .await
            .expect("commits");
        let first = live.recv().await.expect("first commit");
        let second = live.recv().await.expect("second commit");
        assert_eq!(first.len(), 1);
        assert_eq!(second.len(), 1, "the duplicate is not announced again");
    }
}
