//! `journald`: entries of the systemd journal, read from its files through sd-journal.
//!
//! Each entry becomes one event. `MESSAGE` is the message and `PRIORITY` the severity;
//! `_PID`, `_COMM` and the unit are the entities, and every other field is kept as an
//! attribute under its journal name. An error (priority 3 or worse) with a unit is a
//! `journal.unit_error`, which the causal rules link to disk latency and unit failures;
//! every other entry is a `journal.entry`.
//!
//! No loss, no duplicate: the event id is derived from the entry's identity in the
//! journal (its cursor's sequence-number id and number), and the read position is saved
//! in `state_dir` only up to entries the server has stored (`crate::delivery`). A restart
//! resumes right after them. What a crash re-reads carries the same ids, which the
//! server already has.

mod sys;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::collectors::{
    BuildContext, BuildFuture, CollectorConfig, Context, Error, Group, Running,
};
use crate::delivery::{Ledger, Watcher};
use crate::event::{AttrValue, Event, EventId, Severity};
use crate::telemetry::DropCause;
pub use sys::{Change, Journal};

/// Registry name.
pub const NAME: &str = "journald";

/// The file in `state_dir` holding the cursor of the last stored entry.
pub const CURSOR_FILE: &str = "journald.cursor";

/// How long one wait for new entries lasts before the stop flag is looked at again.
const WAIT: Duration = Duration::from_millis(250);

/// Saves of the cursor at most this often while entries flow (and always at the end).
const SAVE_EVERY: Duration = Duration::from_millis(500);

/// Where reading starts when no cursor was saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The oldest entry.
    Head,
    /// Only entries written from now on.
    Tail,
}

/// Options of the `journald` collector.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournaldConfig {
    /// Directory of journal files; unset: this machine's (/var/log/journal and
    /// /run/log/journal).
    pub directory: Option<PathBuf>,
    /// Keep reading new entries; false: read what is there, then finish.
    pub follow: bool,
    /// Where the cursor is saved so a restart resumes after the last stored entry; unset:
    /// nothing is saved.
    pub state_dir: Option<PathBuf>,
    /// Where to start without a saved cursor; default `tail` when following, else `head`.
    pub start_at: Option<StartAt>,
    /// Only these units (`_SYSTEMD_UNIT`).
    pub units: Vec<String>,
    /// Only these syslog identifiers (`SYSLOG_IDENTIFIER`).
    pub identifiers: Vec<String>,
    /// Only this priority or worse: `emerg`, `alert`, `crit`, `err`, `warning`, `notice`,
    /// `info`, `debug`, or 0-7.
    pub priority: Option<String>,
    /// Only entries with these `FIELD=value` pairs (same field: any of them).
    pub matches: Vec<String>,
}

impl Default for JournaldConfig {
    fn default() -> Self {
        Self {
            directory: None,
            follow: true,
            state_dir: None,
            start_at: None,
            units: Vec::new(),
            identifiers: Vec::new(),
            priority: None,
            matches: Vec::new(),
        }
    }
}

const PRIORITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

fn parse_priority(text: &str) -> Option<u8> {
    PRIORITIES
        .iter()
        .position(|p| *p == text)
        .or_else(|| text.parse::<usize>().ok().filter(|n| *n < 8))
        .and_then(|n| u8::try_from(n).ok())
}

fn valid_field_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

impl JournaldConfig {
    /// Appends every problem to `problems`, each naming its field under `prefix`.
    fn check(&self, prefix: &str, problems: &mut Vec<String>) {
        if let Some(p) = &self.priority
            && parse_priority(p).is_none()
        {
            problems.push(format!(
                "{prefix}.priority: one of {} or 0-7, got `{p}`",
                PRIORITIES.join(", ")
            ));
        }
        for (i, m) in self.matches.iter().enumerate() {
            let ok = m
                .split_once('=')
                .is_some_and(|(field, _)| valid_field_name(field));
            if !ok {
                problems.push(format!(
                    "{prefix}.matches[{i}]: a `FIELD=value` pair with an upper-case field name, got `{m}`"
                ));
            }
        }
        for (field, list) in [("units", &self.units), ("identifiers", &self.identifiers)] {
            for (i, value) in list.iter().enumerate() {
                if value.is_empty() {
                    problems.push(format!("{prefix}.{field}[{i}]: must not be empty"));
                }
            }
        }
        if !self.follow && self.start_at == Some(StartAt::Tail) {
            problems.push(format!(
                "{prefix}.start_at: `tail` without `follow` would read nothing"
            ));
        }
        if let Some(dir) = &self.directory
            && !dir.is_dir()
        {
            problems.push(format!(
                "{prefix}.directory: `{}` is not a directory",
                dir.display()
            ));
        }
    }

    fn start_at(&self) -> StartAt {
        self.start_at.unwrap_or(if self.follow {
            StartAt::Tail
        } else {
            StartAt::Head
        })
    }

    /// Opens the journal with this configuration's matches, positioned where reading
    /// should start (after `cursor` when one was saved).
    ///
    /// # Errors
    /// When the journal cannot be opened or positioned.
    pub fn open(&self, cursor: Option<&str>) -> io::Result<Journal> {
        let mut journal = Journal::open(self.directory.as_deref())?;
        let mut groups: Vec<Vec<String>> = Vec::new();
        groups.push(
            self.units
                .iter()
                .map(|u| format!("_SYSTEMD_UNIT={u}"))
                .collect(),
        );
        groups.push(
            self.identifiers
                .iter()
                .map(|i| format!("SYSLOG_IDENTIFIER={i}"))
                .collect(),
        );
        if let Some(max) = self.priority.as_deref().and_then(parse_priority) {
            groups.push((0..=max).map(|p| format!("PRIORITY={p}")).collect());
        }
        groups.push(self.matches.clone());
        let mut first = true;
        for group in groups.iter().filter(|g| !g.is_empty()) {
            if !first {
                journal.and()?;
            }
            first = false;
            for m in group {
                journal.add_match(m)?;
            }
        }
        match cursor {
            Some(cursor) => journal.seek_after(cursor)?,
            None if self.start_at() == StartAt::Tail => journal.seek_tail()?,
            None => {}
        }
        Ok(journal)
    }
}

impl CollectorConfig for JournaldConfig {
    const NAME: &'static str = NAME;
    const GROUP: Option<Group> = Some(Group::Journald);

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        self.check(path, problems);
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let saved = match &self.state_dir {
                Some(dir) => load_cursor(dir).map_err(|e| {
                    Error::unavailable_by(format!("state_dir {}", dir.display()), e)
                })?,
                None => None,
            };
            let journal = self
                .open(saved.as_deref())
                .map_err(|e| Error::unavailable_by("cannot open the journal", e))?;
            if let Some(cursor) = &saved {
                tracing::info!(cursor = %cursor, "journald: resuming after the saved cursor.");
            }
            for (path, error) in unreadable_files(self.directory.as_deref()) {
                tracing::warn!(file = %path.display(), %error, "journald: skipping a journal file that cannot be read.");
                context.degraded(format!(
                    "unreadable journal file {}: {error}",
                    path.display()
                ));
                context.dropped(DropCause::Unreadable, 1);
            }
            let pending = Arc::new(Mutex::new(VecDeque::new()));
            let ledger = match &self.state_dir {
                Some(dir) => Ledger::watched(Box::new(Checkpoint {
                    path: dir.join(CURSOR_FILE),
                    pending: Arc::clone(&pending),
                    watermark: 0,
                    latest: None,
                    saved,
                    saved_at: Instant::now(),
                })),
                None => Ledger::new(),
            };
            let reader = Reader {
                journal,
                follow: self.follow,
                mapper: Mapper::new(cx.node_name),
                ledger: self.state_dir.is_some().then_some(ledger),
                pending,
            };
            let stop = Arc::new(AtomicBool::new(false));
            let handle = tokio::runtime::Handle::current();
            let stopper = Arc::clone(&stop);
            Ok::<Running, Error>(Box::pin(async move {
                let shutdown = context.shutdown.clone();
                let watch = tokio::spawn(async move {
                    shutdown.cancelled().await;
                    stopper.store(true, Ordering::Relaxed);
                });
                let stop_reader = Arc::clone(&stop);
                let result = tokio::task::spawn_blocking(move || {
                    reader.run(&context, &handle, &stop_reader)
                })
                .await;
                watch.abort();
                match result {
                    Ok(result) => result,
                    Err(panic) => Err(Error::unavailable_by("the reader failed", panic)),
                }
            }))
        })
    }
}

/// The blocking half: reads entries and sends them on.
struct Reader {
    journal: Journal,
    follow: bool,
    mapper: Mapper,
    ledger: Option<Arc<Ledger>>,
    pending: Arc<Mutex<VecDeque<(u64, String)>>>,
}

impl Reader {
    fn run(
        mut self,
        context: &Context,
        handle: &tokio::runtime::Handle,
        stop: &AtomicBool,
    ) -> Result<(), Error> {
        let mut failures_in_a_row = 0u32;
        while !stop.load(Ordering::Relaxed) {
            match self.read_one() {
                Ok(Some(mut event)) => {
                    failures_in_a_row = 0;
                    if let Some(ledger) = &self.ledger {
                        let receipt = ledger.issue();
                        let cursor = self.mapper.last_cursor.clone();
                        self.pending
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push_back((receipt.seq(), cursor));
                        event.receipt = Some(receipt);
                    }
                    handle.block_on(context.out.send(event))?;
                }
                Ok(None) if !self.follow => return Ok(()),
                Ok(None) => {
                    if let Err(e) = self.journal.wait(WAIT) {
                        return Err(Error::unavailable_by("waiting on the journal failed", e));
                    }
                }
                Err(e) => {
                    failures_in_a_row += 1;
                    context.dropped(DropCause::Unreadable, 1);
                    if failures_in_a_row == 1 {
                        tracing::warn!(error = %e, "journald: skipping an entry that cannot be read.");
                        context.degraded(format!("unreadable journal data: {e}"));
                    }
                    // A file that fails at every step: move on rather than spin.
                    if failures_in_a_row >= 1000 {
                        if !self.follow {
                            return Ok(());
                        }
                        std::thread::sleep(WAIT);
                    }
                }
            }
        }
        Ok(())
    }

    /// The next entry as an event, `None` at the end.
    fn read_one(&mut self) -> io::Result<Option<Event>> {
        if !self.journal.advance()? {
            return Ok(None);
        }
        self.mapper.map(&mut self.journal).map(Some)
    }
}

/// Turns the current entry into an event.
#[derive(Debug)]
pub struct Mapper {
    node: Arc<str>,
    source: &'static str,
    /// The cursor of the entry mapped last.
    pub last_cursor: String,
}

impl Mapper {
    /// A mapper stamping `node`.
    #[must_use]
    pub fn new(node: String) -> Self {
        Self {
            node: node.into(),
            source: NAME,
            last_cursor: String::new(),
        }
    }

    /// The journal's current entry as an event.
    ///
    /// # Errors
    /// When the entry is corrupt.
    pub fn map(&mut self, journal: &mut Journal) -> io::Result<Event> {
        let usec = journal.realtime_usec()?;
        self.last_cursor = journal.cursor()?;
        let mut event = Event::new(
            entry_id(usec / 1000, &self.last_cursor),
            usec.saturating_mul(1000),
            "journal.entry",
            self.source,
        );
        event.entities.node = Arc::clone(&self.node);
        let mut priority = 6u8;
        let mut unit_field: Option<String> = None;
        journal.for_each_field(|key, value| {
            match key {
                b"MESSAGE" => {
                    event.message = String::from_utf8_lossy(value).into_owned();
                    return;
                }
                b"PRIORITY" => {
                    if let [digit @ b'0'..=b'7'] = value {
                        priority = digit - b'0';
                    }
                }
                b"_PID" => {
                    event.entities.pid = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                }
                b"_COMM" => event.entities.comm = String::from_utf8_lossy(value).into(),
                b"_SYSTEMD_UNIT" => event.entities.unit = String::from_utf8_lossy(value).into(),
                // systemd's own messages about a unit name it here; its _SYSTEMD_UNIT is
                // init.scope.
                b"UNIT" | b"USER_UNIT" => {
                    unit_field = Some(String::from_utf8_lossy(value).into_owned());
                }
                b"CONTAINER_ID_FULL" => {
                    event.entities.container_id = String::from_utf8_lossy(value).into();
                }
                b"CONTAINER_NAME" => {
                    if let Some((namespace, pod, uid)) = kubelet_container_name(value) {
                        event.entities.pod_namespace = namespace.into();
                        event.entities.pod_name = pod.into();
                        event.entities.pod_uid = uid.into();
                    }
                }
                _ => {}
            }
            add_field(&mut event, key, value);
        })?;
        if let Some(unit) = unit_field
            && (event.entities.unit.is_empty() || &*event.entities.unit == "init.scope")
        {
            event.entities.unit = unit.into();
        }
        event.severity = match priority {
            0..=2 => Severity::Critical,
            3 => Severity::Error,
            4 => Severity::Warning,
            5 | 6 => Severity::Info,
            _ => Severity::Debug,
        };
        if priority <= 3 && !event.entities.unit.is_empty() {
            event.kind = "journal.unit_error".into();
        }
        Ok(event)
    }
}

/// (namespace, pod, pod UID) from a container name the kubelet gave through Docker
/// (`k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`), as Docker's journald log
/// driver records it. Kubernetes names cannot hold `_`, so the split is exact.
fn kubelet_container_name(value: &[u8]) -> Option<(&str, &str, &str)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.strip_prefix("k8s_")?.split('_');
    let (_container, pod, namespace, uid) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (!pod.is_empty() && !namespace.is_empty() && !uid.is_empty()).then_some((namespace, pod, uid))
}

/// Adds one field as an attribute: text when it is UTF-8, else `hex:` and its bytes; a
/// field that repeats gets `[1]`, `[2]`, ... after its name.
fn add_field(event: &mut Event, key: &[u8], value: &[u8]) {
    let value = if let Ok(text) = std::str::from_utf8(value) {
        AttrValue::Str(text.to_owned())
    } else {
        use std::fmt::Write as _;
        let mut hex = String::with_capacity(4 + value.len() * 2);
        hex.push_str("hex:");
        for byte in value {
            let _ = write!(hex, "{byte:02x}");
        }
        AttrValue::Str(hex)
    };
    let name = String::from_utf8_lossy(key);
    let mut key: std::borrow::Cow<'static, str> = match well_known(&name) {
        Some(known) => known.into(),
        None => name.clone().into_owned().into(),
    };
    let mut n = 0;
    while event.attributes.get(&key).is_some() {
        n += 1;
        key = format!("{name}[{n}]").into();
    }
    event.attributes.push(key, value);
}

/// Field names nearly every entry has, kept as static strings so no entry allocates them.
fn well_known(name: &str) -> Option<&'static str> {
    const NAMES: [&str; 34] = [
        "PRIORITY",
        "SYSLOG_FACILITY",
        "SYSLOG_IDENTIFIER",
        "SYSLOG_PID",
        "SYSLOG_TIMESTAMP",
        "SYSLOG_RAW",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "MESSAGE_ID",
        "ERRNO",
        "TID",
        "UNIT",
        "USER_UNIT",
        "INVOCATION_ID",
        "_PID",
        "_UID",
        "_GID",
        "_COMM",
        "_EXE",
        "_CMDLINE",
        "_CAP_EFFECTIVE",
        "_SELINUX_CONTEXT",
        "_SYSTEMD_CGROUP",
        "_SYSTEMD_UNIT",
        "_SYSTEMD_SLICE",
        "_SYSTEMD_INVOCATION_ID",
        "_BOOT_ID",
        "_MACHINE_ID",
        "_HOSTNAME",
        "_TRANSPORT",
        "_STREAM_ID",
        "_SOURCE_REALTIME_TIMESTAMP",
        "_RUNTIME_SCOPE",
    ];
    NAMES.iter().copied().find(|n| *n == name)
}

/// The event id of an entry: its time, then 80 bits hashed from the cursor's sequence
/// number id and number, which name the entry uniquely and do not change when it is read
/// again.
#[must_use]
pub fn entry_id(millis: u64, cursor: &str) -> EventId {
    let mut seqnum_id = "";
    let mut seqnum = "";
    for part in cursor.split(';') {
        if let Some(v) = part.strip_prefix("s=") {
            seqnum_id = v;
        } else if let Some(v) = part.strip_prefix("i=") {
            seqnum = v;
        }
    }
    // A cursor without them (never seen from sd-journal) is its own identity.
    let parts: [&[u8]; 2] = if seqnum_id.is_empty() {
        [cursor.as_bytes(), b""]
    } else {
        [seqnum_id.as_bytes(), seqnum.as_bytes()]
    };
    // Two independent 64-bit hashes of the identity, told apart by a last part.
    let hash = |salt: &[u8]| crate::event::hash_parts(&[parts[0], parts[1], salt]);
    let (low, high) = (hash(b"0"), hash(b"1"));
    let bits = (u128::from(high & 0xffff) << 64) | u128::from(low);
    EventId::from_u128((u128::from(millis & 0xffff_ffff_ffff) << 80) | bits)
}

/// Journal files under `directory` (or this machine's journal directories) that sd-journal
/// cannot open, with the reason: a truncated file, or one that is not a journal.
fn unreadable_files(directory: Option<&Path>) -> Vec<(PathBuf, io::Error)> {
    let roots: Vec<&Path> = match directory {
        Some(dir) => vec![dir],
        None => vec![Path::new("/var/log/journal"), Path::new("/run/log/journal")],
    };
    let mut files = Vec::new();
    for root in roots {
        // The files sit in the directory itself or one level down (per machine id).
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if let Ok(inner) = std::fs::read_dir(&path) {
                    files.extend(inner.flatten().map(|e| e.path()));
                }
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "journal"))
        .filter_map(|p| Journal::check_file(&p).err().map(|e| (p, e)))
        .collect()
}

/// Reads the saved cursor, if there is one.
///
/// # Errors
/// When the directory cannot be created or the file read.
pub fn load_cursor(dir: &Path) -> io::Result<Option<String>> {
    std::fs::create_dir_all(dir)?;
    match std::fs::read_to_string(dir.join(CURSOR_FILE)) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|c| !c.is_empty())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Saves the cursor of the newest entry whose event, and all before it, are stored.
struct Checkpoint {
    path: PathBuf,
    /// (receipt, cursor) of entries sent and not yet known stored, oldest first.
    pending: Arc<Mutex<VecDeque<(u64, String)>>>,
    watermark: u64,
    latest: Option<String>,
    saved: Option<String>,
    saved_at: Instant,
}

impl Checkpoint {
    fn catch_up(&mut self, watermark: u64) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        while pending.front().is_some_and(|(seq, _)| *seq < watermark) {
            self.latest = pending.pop_front().map(|(_, cursor)| cursor);
        }
    }

    fn save(&mut self) {
        if self.latest.is_none() || self.latest == self.saved {
            return;
        }
        let Some(cursor) = self.latest.clone() else {
            return;
        };
        let temporary = self.path.with_extension("cursor.new");
        let written = std::fs::write(&temporary, format!("{cursor}\n"))
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        match written {
            Ok(()) => {
                self.saved = Some(cursor);
                self.saved_at = Instant::now();
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "journald: cannot save the cursor; a restart would read some entries again.");
            }
        }
    }
}

impl Watcher for Checkpoint {
    fn advanced(&mut self, watermark: u64, issued: u64) {
        self.catch_up(watermark);
        if watermark == issued || self.saved_at.elapsed() >= SAVE_EVERY {
            self.save();
        }
    }

    fn finish(&mut self, watermark: u64) {
        self.catch_up(watermark);
        self.save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_the_entry_not_on_when_it_is_read() {
        let a = "s=26d9;i=1;b=0123;m=3e8;t=60a2;x=52d2";
        let same_entry_other_boot_field = "s=26d9;i=1;b=ffff;m=3e8;t=60a2;x=52d2";
        let next = "s=26d9;i=2;b=0123;m=7d0;t=60a2;x=dbd0";
        assert_eq!(entry_id(5, a), entry_id(5, a));
        assert_eq!(entry_id(5, a), entry_id(5, same_entry_other_boot_field));
        assert_ne!(entry_id(5, a), entry_id(5, next));
        assert_eq!(entry_id(5, a).unix_millis(), 5);
    }

    #[test]
    fn bad_options_are_named() {
        let config = JournaldConfig {
            priority: Some("loud".into()),
            matches: vec!["lower=x".into(), "NOEQUALS".into(), "OK_1=fine".into()],
            units: vec![String::new()],
            follow: false,
            start_at: Some(StartAt::Tail),
            directory: Some("/nonexistent/journal".into()),
            ..JournaldConfig::default()
        };
        let mut problems = Vec::new();
        config.validate("collectors.journald.config", &mut problems);
        let text = problems.join("\n");
        for expected in [
            "collectors.journald.config.priority",
            "collectors.journald.config.matches[0]",
            "collectors.journald.config.matches[1]",
            "collectors.journald.config.units[0]",
            "collectors.journald.config.start_at",
            "collectors.journald.config.directory",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        assert!(!text.contains("matches[2]"), "{text}");
    }

    #[test]
    fn kubelet_container_names_give_the_pod() {
        assert_eq!(
            kubelet_container_name(b"k8s_app_web-7d9f_shop_0d3c2f1e-5a6b-4c7d-8e9f-0a1b2c3d4e5f_0"),
            Some(("shop", "web-7d9f", "0d3c2f1e-5a6b-4c7d-8e9f-0a1b2c3d4e5f"))
        );
        assert_eq!(kubelet_container_name(b"nginx"), None);
        assert_eq!(kubelet_container_name(b"k8s_app"), None);
    }

    #[test]
    fn priorities_parse_by_name_and_number() {
        assert_eq!(parse_priority("err"), Some(3));
        assert_eq!(parse_priority("7"), Some(7));
        assert_eq!(parse_priority("8"), None);
    }
}
