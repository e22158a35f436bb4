//! PostgreSQL, the store several servers share: every server writes through its own small
//! connection pool, and any server answers queries over all of it.
//!
//! - Events are keyed by (timestamp, id). An event never changes, so a resent or
//!   redelivered copy has the same key and `ON CONFLICT DO NOTHING` stores it once.
//!   PostgreSQL wants the partition key inside every unique key, hence the timestamp.
//! - `events` is partitioned by day on the timestamp (native range partitioning), so
//!   retention drops whole partitions ([`Postgres::drop_before`]) rather than deleting rows.
//!   Partitions are created on first use, under an advisory lock shared by all servers.
//! - A batch is one transaction: its events go in as one multi-row insert of arrays
//!   (`unnest`), sorted by key so two servers writing the same events lock them in the same
//!   order; the ack waits for the commit.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use prost::Message;
use tokio::sync::broadcast;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use super::{
    Batch, Committed, Error, EventQuery, OpenGroup, Result, Stats, effective_limit, from_sql_ts,
    to_sql_ts, upper_bound,
};
use crate::pb;

/// Width of one partition of `events`: a day, in nanoseconds.
const DAY: i64 = 86_400 * 1_000_000_000;

/// The advisory lock that serialises schema changes between servers ("tapio" in ASCII).
const SCHEMA_LOCK: i64 = 0x0074_6170_696f;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS events (
        ts bigint NOT NULL,
        id bytea NOT NULL,
        type text NOT NULL,
        pod_namespace text NOT NULL,
        pod_name text NOT NULL,
        group_id bytea,
        body bytea NOT NULL,
        PRIMARY KEY (ts, id)
    ) PARTITION BY RANGE (ts);
    CREATE INDEX IF NOT EXISTS events_by_group ON events (group_id) WHERE group_id IS NOT NULL;
    CREATE TABLE IF NOT EXISTS semantic_groups (
        group_id bytea PRIMARY KEY,
        first_seen bigint NOT NULL,
        message bytea NOT NULL
    );
    CREATE INDEX IF NOT EXISTS semantic_groups_by_time ON semantic_groups (first_seen);
    CREATE TABLE IF NOT EXISTS batches (
        collector_id text NOT NULL,
        batch_id bigint NOT NULL,
        sequence bigint NOT NULL,
        events integer NOT NULL,
        accepted integer NOT NULL,
        stored_at bigint NOT NULL,
        stored_by text NOT NULL,
        PRIMARY KEY (collector_id, batch_id)
    );
    CREATE TABLE IF NOT EXISTS retention (
        id integer PRIMARY KEY CHECK (id = 1),
        age_seconds bigint,
        max_bytes bigint,
        last_run bigint NOT NULL,
        removed_events bigint NOT NULL,
        removed_groups bigint NOT NULL,
        removed_batches bigint NOT NULL
    );
";

const INSERT_EVENTS: &str = "
    INSERT INTO events (ts, id, type, pod_namespace, pod_name, group_id, body)
    SELECT * FROM unnest($1::int8[], $2::bytea[], $3::text[], $4::text[], $5::text[],
                         $6::bytea[], $7::bytea[])
    ON CONFLICT DO NOTHING";

/// A handle to the shared PostgreSQL store; cheap to clone.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    url: Arc<str>,
    /// This server's name, recorded with each batch it stores.
    server: Arc<str>,
    committed: broadcast::Sender<Arc<Vec<pb::Event>>>,
    /// Days whose partition this server knows exists, so each is created once.
    partitions: Arc<Mutex<HashSet<i64>>>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.url)
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// Connects with a pool of at most `connections`, and creates the schema if it is
    /// missing. A bad URL, an unreachable server or refused credentials fail here, named.
    pub async fn connect(url: &str, connections: usize, server: &str) -> Result<Self> {
        let shown = redact(url);
        let config: tokio_postgres::Config = url.parse().map_err(|e| Error::Url {
            url: shown.clone(),
            reason: crate::tls::error_chain(&e),
        })?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(connections.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(5)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| Error::Url {
                url: shown.clone(),
                reason: e.to_string(),
            })?;
        let store = Self {
            pool,
            url: Arc::from(shown.as_str()),
            server: Arc::from(server),
            committed: broadcast::channel(1024).0,
            partitions: Arc::default(),
        };
        let mut client = store.pool.get().await.map_err(|e| Error::Url {
            url: shown.clone(),
            reason: format!("cannot connect: {}", pool_reason(&e)),
        })?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        tx.batch_execute(SCHEMA).await?;
        tx.commit().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => Error::Postgres(e),
            other => Error::Pool(format!("{}: {}", self.url, pool_reason(&other))),
        })
    }

    /// Newly stored events, in commit order, as this server commits them.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<pb::Event>>> {
        self.committed.subscribe()
    }

    /// Stores a batch in one transaction; resolves after it has committed.
    pub async fn write(&self, batch: Batch) -> Result<Committed> {
        let mut client = self.client().await?;
        let days: BTreeSet<i64> = batch
            .events
            .iter()
            .map(|e| to_sql_ts(e.timestamp).div_euclid(DAY))
            .collect();
        self.ensure_partitions(&mut client, days).await?;

        let mut order: Vec<usize> = (0..batch.events.len()).collect();
        order.sort_unstable_by_key(|&i| (batch.events[i].timestamp, batch.events[i].id));
        let column = |f: fn(&super::RawEvent) -> &str| -> Vec<&str> {
            order.iter().map(|&i| f(&batch.events[i])).collect()
        };
        let ts: Vec<i64> = order
            .iter()
            .map(|&i| to_sql_ts(batch.events[i].timestamp))
            .collect();
        let ids: Vec<&[u8]> = order.iter().map(|&i| &batch.events[i].id[..]).collect();
        let kinds = column(super::RawEvent::kind);
        let namespaces = column(super::RawEvent::pod_namespace);
        let names = column(super::RawEvent::pod_name);
        let groups: Vec<Option<&[u8]>> = order
            .iter()
            .map(|&i| batch.events[i].group_id.as_ref().map(|g| &g[..]))
            .collect();
        let bodies: Vec<&[u8]> = order.iter().map(|&i| &batch.events[i].bytes[..]).collect();

        // Which events were new matters only to a live tail; without one, the count the
        // insert reports is enough (returning a row per event cost a fifth of the writer).
        let watching = self.committed.receiver_count() > 0;
        let tx = client.transaction().await?;
        let params: [&(dyn ToSql + Sync); 7] =
            [&ts, &ids, &kinds, &namespaces, &names, &groups, &bodies];
        let (inserted, fresh_rows) = if watching {
            let insert = tx
                .prepare_cached(&format!("{INSERT_EVENTS} RETURNING id"))
                .await?;
            let rows = tx.query(&insert, &params).await?;
            (rows.len() as u64, rows)
        } else {
            let insert = tx.prepare_cached(INSERT_EVENTS).await?;
            (tx.execute(&insert, &params).await?, Vec::new())
        };
        // A resent batch carries the same groups: the first copy stays.
        for group in &batch.groups {
            tx.execute(
                "INSERT INTO semantic_groups (group_id, first_seen, message) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[
                    &group.group_id,
                    &to_sql_ts(group.first_seen_unix_nano),
                    &group.encode_to_vec(),
                ],
            )
            .await?;
        }
        let total = batch.events.len() as u32;
        let accepted = inserted as u32;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        tx.execute(
            "INSERT INTO batches
                 (collector_id, batch_id, sequence, events, accepted, stored_at, stored_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &batch.collector_id,
                // bigint is signed; the bits round-trip.
                &batch.batch_id.cast_signed(),
                &batch.sequence.cast_signed(),
                &total.cast_signed(),
                &accepted.cast_signed(),
                &now,
                &&*self.server,
            ],
        )
        .await?;
        tx.commit().await?;

        if watching && accepted > 0 {
            let fresh: HashSet<&[u8]> = fresh_rows.iter().map(|r| r.get::<_, &[u8]>(0)).collect();
            // Only the live tail wants structs; it is the one place that decodes.
            let decoded: Vec<pb::Event> = batch
                .events
                .iter()
                .filter(|e| fresh.contains(&e.id[..]))
                .filter_map(|e| e.decode().ok())
                .collect();
            let _ = self.committed.send(Arc::new(decoded));
        }
        Ok(Committed {
            accepted,
            duplicates: total - accepted,
        })
    }

    /// Creates the day partitions `days` needs that this server has not seen yet (and the
    /// day after the newest, so midnight does not wait on a schema change).
    async fn ensure_partitions(
        &self,
        client: &mut deadpool_postgres::Client,
        days: BTreeSet<i64>,
    ) -> Result<()> {
        let missing: Vec<i64> = {
            let known = self.partitions.lock().expect("partition set");
            let next = days.last().map(|d| d + 1);
            days.into_iter()
                .chain(next)
                .filter(|d| !known.contains(d))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        for &day in &missing {
            let from = day.saturating_mul(DAY);
            let to = from
                .checked_add(DAY)
                .map_or_else(|| "MAXVALUE".to_owned(), |t| t.to_string());
            // Integers this function computed: nothing from the input reaches the SQL text.
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF events FOR VALUES FROM ({from}) TO ({to})",
                partition_name(day)
            ))
            .await?;
        }
        tx.commit().await?;
        self.partitions
            .lock()
            .expect("partition set")
            .extend(missing);
        Ok(())
    }

    /// Totals over the whole store.
    pub async fn stats(&self) -> Result<Stats> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM batches)",
                &[],
            )
            .await?;
        let extra = client
            .query_one(
                "SELECT pg_database_size(current_database()), (SELECT min(ts) FROM events)",
                &[],
            )
            .await?;
        let retention = client
            .query_opt(
                "SELECT age_seconds, max_bytes, last_run, removed_events, removed_groups,
                        removed_batches FROM retention WHERE id = 1",
                &[],
            )
            .await?
            .map(|r| super::RetentionRecord {
                age_seconds: r.get::<_, Option<i64>>(0).map(i64::unsigned_abs),
                max_bytes: r.get::<_, Option<i64>>(1).map(i64::unsigned_abs),
                last_run_unix_ms: r.get::<_, i64>(2).unsigned_abs(),
                removed_events: r.get::<_, i64>(3).unsigned_abs(),
                removed_groups: r.get::<_, i64>(4).unsigned_abs(),
                removed_batches: r.get::<_, i64>(5).unsigned_abs(),
            });
        Ok(Stats {
            events_total: row.get::<_, i64>(0).unsigned_abs(),
            batches_total: row.get::<_, i64>(1).unsigned_abs(),
            used_bytes: extra.get::<_, i64>(0).unsigned_abs(),
            oldest_event_unix_ms: extra
                .get::<_, Option<i64>>(1)
                .map(|ts| ts.unsigned_abs() / 1_000_000),
            retention,
        })
    }

    /// The database's size on disk, as PostgreSQL reports it.
    pub async fn size_bytes(&self) -> Result<u64> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await?;
        Ok(row.get::<_, i64>(0).unsigned_abs())
    }

    /// Stored events matching `query`, oldest first.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<pb::Event>> {
        let client = self.client().await?;
        events_with(&client, query).await
    }

    /// Closed groups first seen in [`start`, `end`), as sent, and the groups still open
    /// there, from their events (see [`super::Store::groups`]).
    pub async fn groups(
        &self,
        start: u64,
        end: u64,
        limit: u32,
    ) -> Result<(Vec<pb::SemanticGroup>, Vec<OpenGroup>)> {
        let client = self.client().await?;
        let bounds: [&(dyn ToSql + Sync); 3] = [
            &to_sql_ts(start),
            &upper_bound(end),
            &effective_limit(limit),
        ];
        let closed = client
            .query(
                "SELECT message FROM semantic_groups WHERE first_seen >= $1 AND first_seen <= $2
                 ORDER BY first_seen LIMIT $3",
                &bounds,
            )
            .await?
            .iter()
            .map(|row| pb::SemanticGroup::decode(row.get::<_, &[u8]>(0)))
            .collect::<Result<Vec<_>, _>>()?;
        let spans = client
            .query(
                "SELECT group_id, min(ts), max(ts) FROM events
                 WHERE group_id IS NOT NULL AND ts >= $1 AND ts <= $2
                 GROUP BY group_id HAVING count(*) > 1 ORDER BY min(ts) LIMIT $3",
                &bounds,
            )
            .await?;
        let mut open = Vec::with_capacity(spans.len());
        for row in spans {
            let group_id: Vec<u8> = row.get(0);
            let events = events_with(
                &client,
                &EventQuery {
                    group_id: group_id.clone(),
                    limit: 100_000,
                    ..EventQuery::default()
                },
            )
            .await?;
            open.push(OpenGroup {
                group_id,
                first: from_sql_ts(row.get(1)),
                last: from_sql_ts(row.get(2)),
                events,
            });
        }
        Ok((closed, open))
    }

    /// One retention pass: by age, the days wholly before `now - age` (by event time) and
    /// the groups and batch records older than that; by size, the oldest days (never the
    /// newest) while the database is larger than the cap. Dropping a day is one quick
    /// statement, not a scan, so ingest waits for it no longer than for a commit.
    ///
    /// # Panics
    ///
    /// When another thread panicked while holding the set of known partitions.
    pub async fn retain(&self, policy: super::Retention) -> Result<super::Removed> {
        let now_ns = u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        )
        .unwrap_or(u64::MAX);
        let mut removed = super::Removed::default();
        if let Some(age) = policy.age {
            let cutoff = now_ns.saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX));
            removed = self.drop_before(cutoff).await?.1;
        }
        if let Some(max_bytes) = policy.max_bytes {
            loop {
                let client = self.client().await?;
                let size: i64 = client
                    .query_one("SELECT pg_database_size(current_database())", &[])
                    .await?
                    .get(0);
                let days = self.days(&client).await?;
                drop(client);
                let today = to_sql_ts(now_ns) / DAY;
                // Today and the days made ahead are never dropped for size.
                let Some(&oldest) = days.first().filter(|&&day| day < today) else {
                    break;
                };
                if size.unsigned_abs() <= max_bytes {
                    break;
                }
                // The oldest day goes whole: everything before the next.
                let next = (oldest + 1).saturating_mul(DAY);
                let (_, step) = self.drop_before(next.unsigned_abs()).await?;
                removed.events += step.events;
                removed.groups += step.groups;
                removed.batches += step.batches;
            }
        }
        let client = self.client().await?;
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        client
            .execute(
                "INSERT INTO retention (id, age_seconds, max_bytes, last_run, removed_events,
                                        removed_groups, removed_batches)
                 VALUES (1, $1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET
                   age_seconds = excluded.age_seconds, max_bytes = excluded.max_bytes,
                   last_run = excluded.last_run,
                   removed_events = retention.removed_events + excluded.removed_events,
                   removed_groups = retention.removed_groups + excluded.removed_groups,
                   removed_batches = retention.removed_batches + excluded.removed_batches",
                &[
                    &policy.age.map(|a| as_i64(a.as_secs())),
                    &policy.max_bytes.map(as_i64),
                    &as_i64(now_ns / 1_000_000),
                    &as_i64(removed.events),
                    &as_i64(removed.groups),
                    &as_i64(removed.batches),
                ],
            )
            .await?;
        Ok(removed)
    }

    /// The days that have a partition, oldest first.
    async fn days(&self, client: &deadpool_postgres::Client) -> Result<Vec<i64>> {
        let rows = client
            .query(
                "SELECT c.relname FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid
                 JOIN pg_class p ON p.oid = i.inhparent
                 WHERE p.relname = 'events' AND p.relnamespace = c.relnamespace",
                &[],
            )
            .await?;
        let mut days: Vec<i64> = rows
            .iter()
            .filter_map(|row| day_of_partition(&row.get::<_, String>(0)))
            .collect();
        days.sort_unstable();
        Ok(days)
    }

    /// Retention: drops every day partition wholly before `cutoff` (Unix nanoseconds), and
    /// the groups and batch records older than it. Returns the partitions dropped.
    ///
    /// # Panics
    ///
    /// When another thread panicked while holding the set of known partitions.
    pub async fn drop_before(&self, cutoff: u64) -> Result<(Vec<String>, super::Removed)> {
        let mut client = self.client().await?;
        let cutoff = to_sql_ts(cutoff);
        let old: Vec<(i64, String)> = self
            .days(&client)
            .await?
            .into_iter()
            .filter(|day| (day + 1).saturating_mul(DAY) <= cutoff)
            .map(|day| (day, partition_name(day)))
            .collect();
        let mut removed = super::Removed::default();
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        for (_, name) in &old {
            // The planner's estimate: counting a whole day's rows would scan it.
            let estimate: Option<f32> = tx
                .query_opt("SELECT reltuples FROM pg_class WHERE relname = $1", &[name])
                .await?
                .map(|row| row.get(0));
            // reltuples is -1 for a table never analysed: nothing to count then.
            #[expect(
                clippy::cast_sign_loss,
                clippy::cast_possible_truncation,
                reason = "clamped at 0, far below 2^64"
            )]
            let rows = estimate.map_or(0, |n| n.max(0.0) as u64);
            removed.events += rows;
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .await?;
        }
        removed.groups = tx
            .execute(
                "DELETE FROM semantic_groups WHERE first_seen < $1",
                &[&cutoff],
            )
            .await?;
        removed.batches = tx
            .execute("DELETE FROM batches WHERE stored_at < $1", &[&cutoff])
            .await?;
        tx.commit().await?;
        let mut known = self.partitions.lock().expect("partition set");
        for (day, _) in &old {
            known.remove(day);
        }
        Ok((old.into_iter().map(|(_, name)| name).collect(), removed))
    }
}

async fn events_with(
    client: &deadpool_postgres::Client,
    query: &EventQuery,
) -> Result<Vec<pb::Event>> {
    let mut sql = String::from("SELECT body FROM events WHERE ts >= $1 AND ts <= $2");
    let mut values: Vec<Box<dyn ToSql + Sync + Send>> = vec![
        Box::new(to_sql_ts(query.start)),
        Box::new(upper_bound(query.end)),
    ];
    let mut bind = |sql: &mut String, clause: &str, value: Box<dyn ToSql + Sync + Send>| {
        values.push(value);
        sql.push_str(&clause.replace('?', &format!("${}", values.len())));
    };
    if !query.types.is_empty() {
        bind(
            &mut sql,
            " AND type = ANY(?)",
            Box::new(query.types.clone()),
        );
    }
    if !query.pod_namespace.is_empty() {
        bind(
            &mut sql,
            " AND pod_namespace = ?",
            Box::new(query.pod_namespace.clone()),
        );
    }
    if !query.pod_name.is_empty() {
        bind(
            &mut sql,
            " AND pod_name = ?",
            Box::new(query.pod_name.clone()),
        );
    }
    if !query.group_id.is_empty() {
        bind(
            &mut sql,
            " AND group_id = ?",
            Box::new(query.group_id.clone()),
        );
    }
    if let Some((ts, id)) = query.after {
        bind(&mut sql, " AND (ts, id) > (?", Box::new(to_sql_ts(ts)));
        bind(&mut sql, ", ?)", Box::new(id.to_vec()));
    }
    bind(
        &mut sql,
        " ORDER BY ts, id LIMIT ?",
        Box::new(effective_limit(query.limit)),
    );
    let params: Vec<&(dyn ToSql + Sync)> = values
        .iter()
        .map(|v| v.as_ref() as &(dyn ToSql + Sync))
        .collect();
    client
        .query(&sql, &params)
        .await?
        .iter()
        .map(|row| pb::Event::decode(row.get::<_, &[u8]>(0)).map_err(Error::from))
        .collect()
}

/// Why the pool gave no connection, with the database's own words when it answered.
fn pool_reason(error: &PoolError) -> String {
    match error {
        PoolError::Backend(e) => crate::tls::error_chain(e),
        other => other.to_string(),
    }
}

/// `events_YYYYMMDD`: the partition of `day` days since 1970-01-01.
fn partition_name(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("events_{y:04}{m:02}{d:02}")
}

/// The day a partition name stands for; `None` for a table not named by this store.
fn day_of_partition(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("events_")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = digits[..4].parse().ok()?;
    let m: u32 = digits[4..6].parse().ok()?;
    let d: u32 = digits[6..].parse().ok()?;
    Some(days_from_civil(y, m, d))
}

/// Howard Hinnant's days-to-date algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both are small and positive by construction (1..=31 and 1..=12).
    let d = (doy - (153 * mp + 2) / 5 + 1).unsigned_abs() as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 }.unsigned_abs() as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The URL without its password, for logs and errors.
#[must_use]
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // key=value form: blank the password's value.
        return url
            .split_whitespace()
            .map(|pair| match pair.split_once('=') {
                Some(("password", _)) => "password=***",
                _ => pair,
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip_through_dates() {
        assert_eq!(partition_name(0), "events_19700101");
        // 2026-12-02 is day 20_789.
        assert_eq!(partition_name(20_789), "events_20261202");
        for day in [-1, 0, 59, 60, 365, 11_016, 20_789, 2_932_896] {
            assert_eq!(day_of_partition(&partition_name(day)), Some(day), "{day}");
        }
        assert_eq!(day_of_partition("events_by_group"), None);
        assert_eq!(day_of_partition("events"), None);
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("postgres://tapio:s3cret@db:5432/tapio"),
            "postgres://tapio:***@db:5432/tapio"
        );
        assert_eq!(
            redact("postgres://tapio@db/tapio"),
            "postgres://tapio@db/tapio"
        );
        assert_eq!(
            redact("host=db user=tapio password=s3cret"),
            "host=db user=tapio password=***"
        );
    }
}
