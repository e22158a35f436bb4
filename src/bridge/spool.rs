//! The on-disk spool: every sealed batch is appended here before it is sent, and stays
//! until the server acks it, so a collector killed at any moment (SIGKILL included) resends
//! on its next start what the server had not acked. The server dedups by event id, so a
//! batch acked just before the kill and resent after it is stored once.
//!
//! Layout: numbered segment files (`00000000000000000001.spool`, ...), each a sequence of
//! records, all little endian:
//!
//! ```text
//! magic u32 "TPS2" | len u32 | batch_id u64 | events u32 | seq u64 | crc u32 | payload
//! ```
//!
//! The checksum covers every header field after the magic and the payload, so no flipped
//! byte goes unnoticed. `seq` counts the events appended to this spool before the record,
//! across segments and runs; `spool.state` keeps the `floor` (everything below it was
//! acked) and the `head` (the next seq). A gap in that numbering is a loss, counted in
//! events: a bad record, a truncated or vanished segment, a lost tail.
//!
//! A bad record never costs the records after it: reading resyncs on the next header whose
//! checksum holds. A failed write (a full disk) is cut back to the last good record; when
//! even that fails, the segment is sealed and the next write starts a new one. In-memory
//! bookkeeping is never trusted over the file: every record read back is checked against
//! its checksum and its index entry.
//!
//! The oldest unsent records are kept in memory (up to `cache_limit`), so a server that
//! keeps up is fed from memory; the rest are read back from disk in order. Each segment's
//! file stays open, so a spool directory removed under a running agent loses nothing: the
//! next [`Spool::check`] recreates it and rewrites what is unacked.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::Sealed;

const MAGIC: [u8; 4] = *b"TPS2";
/// Records of the first spool format: `magic | len | crc(payload) | batch_id | events`.
const MAGIC_V1: [u8; 4] = *b"TPS1";
const HEADER: u64 = 32;
const HEADER_V1: u64 = 24;
/// Segments rotate at this size.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// No record is longer; a header claiming more is damage, not a record.
const MAX_PAYLOAD: u64 = 64 * 1024 * 1024;
const STATE_FILE: &str = "spool.state";
const STATE_MAGIC: [u8; 4] = *b"TPSS";
const STATE_LEN: usize = 28;
/// Segment numbers above this are renumbered from 1 at open, so the next never wraps.
const RENUMBER_ABOVE: u64 = u64::MAX / 2;

/// What opening a spool found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Batches left by an earlier run, to be resent.
    pub batches: u64,
    /// Events in them.
    pub events: u64,
    /// Events lost to damage: bad records, truncated or missing segments.
    pub corrupt_events: u64,
    /// Bytes skipped because they held no intact record.
    pub skipped_bytes: u64,
}

/// Where a spooled batch lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolRef {
    segment: u64,
    index: usize,
}

#[derive(Clone, Copy, Debug)]
struct Record {
    offset: u64,
    len: u64,
    batch_id: u64,
    events: u32,
    seq: u64,
    v1: bool,
    done: bool,
}

impl Record {
    fn end(&self) -> u64 {
        self.offset + self.header() + self.len
    }

    fn header(&self) -> u64 {
        if self.v1 { HEADER_V1 } else { HEADER }
    }
}

#[derive(Debug)]
struct Segment {
    id: u64,
    file: File,
    /// Where the next record goes; everything before it is counted in the spool's size.
    bytes: u64,
    records: Vec<Record>,
    /// Records acked or given up as lost.
    done: usize,
    /// Every record before this index is done.
    first_undone: usize,
    /// No more appends: rotated, or a failed write could not be cut back.
    sealed: bool,
}

impl Segment {
    fn finished(&self) -> bool {
        self.done == self.records.len()
    }

    /// Marks a record done; returns its events if it was not already.
    fn resolve(&mut self, index: usize) -> Option<u32> {
        let record = self.records.get_mut(index).filter(|r| !r.done)?;
        record.done = true;
        self.done += 1;
        let events = record.events;
        while self.records.get(self.first_undone).is_some_and(|r| r.done) {
            self.first_undone += 1;
        }
        Some(events)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    segment: u64,
    index: usize,
}

/// A bounded, crash-safe FIFO of sealed batches.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Segments rotate at this size.
    segment_bytes: u64,
    /// Oldest first; the last one is appended to.
    segments: VecDeque<Segment>,
    total_bytes: u64,
    /// The seq of the next record.
    head: u64,
    state: Option<File>,
    cache: VecDeque<Sealed>,
    cache_limit: usize,
    /// The first unsent record that is not in the cache.
    disk_cursor: Option<Cursor>,
    /// Events spooled and not done.
    unacked: u64,
    /// Events found damaged since the last [`Spool::take_lost`].
    lost: u64,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.spool"))
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

impl Spool {
    /// Opens the spool in `dir` (creating it), recovering what an earlier run left.
    pub fn open(dir: &Path, max_bytes: u64, cache_limit: usize) -> io::Result<(Self, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let ids = renumber(dir, segment_ids(dir)?)?;
        let (floor, head) = match read_state(dir) {
            Ok(Some((floor, head))) => (Some(floor), Some(head)),
            // A new spool starts at 0; segments without a state (removed, or left by the
            // first spool format) have an unknown floor and head.
            Ok(None) if ids.is_empty() => (Some(0), Some(0)),
            Ok(None) => (None, None),
            Err(e) => {
                tracing::warn!(spool = %dir.display(), error = %e, "Spool state is damaged; losses before the first and after the last intact record cannot be counted.");
                (None, None)
            }
        };
        let mut recovered = Recovered::default();
        let mut segments = VecDeque::new();
        // The seq the next intact record should carry; a higher one means events in between
        // were lost.
        let mut expected = floor;
        for id in ids {
            let path = segment_path(dir, id);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let (mut records, skipped, good_end) = scan(&file)?;
            recovered.skipped_bytes += skipped;
            if skipped > 0 {
                tracing::warn!(segment = %path.display(), bytes = skipped, "Spool segment holds damaged bytes; skipping them and keeping every intact record.");
            }
            for record in &mut records {
                if record.v1 {
                    record.seq = expected.unwrap_or(0);
                }
                let end = record.seq + u64::from(record.events);
                match expected {
                    Some(e) if record.seq > e => recovered.corrupt_events += record.seq - e,
                    _ => {}
                }
                if floor.is_some_and(|f| record.seq < f && end <= f) {
                    // Acked before the last run stopped, its segment not deleted yet.
                    record.done = true;
                }
                expected = Some(expected.map_or(end, |e| e.max(end)));
            }
            let length = file.metadata()?.len();
            if good_end < length {
                // A torn or damaged tail: nothing after the last intact record is kept.
                file.set_len(good_end)?;
            }
            let done = records.iter().filter(|r| r.done).count();
            if done == records.len() {
                // Nothing in it to resend.
                drop(file);
                std::fs::remove_file(&path)?;
                continue;
            }
            recovered.batches += (records.len() - done) as u64;
            recovered.events += records
                .iter()
                .filter(|r| !r.done)
                .map(|r| u64::from(r.events))
                .sum::<u64>();
            segments.push_back(Segment {
                id,
                file,
                bytes: good_end,
                first_undone: records.iter().take_while(|r| r.done).count(),
                records,
                done,
                sealed: true,
            });
        }
        if let (Some(head), Some(e)) = (head, expected)
            && head > e
        {
            recovered.corrupt_events += head - e;
        }
        if recovered.corrupt_events > 0 {
            tracing::error!(spool = %dir.display(), events = recovered.corrupt_events, "Spool damage lost events; counting them as spool_corrupt.");
        }
        let head = head.unwrap_or(0).max(expected.unwrap_or(0));
        let open_id = segments.back().map_or(1, |s| s.id + 1);
        let open = new_segment(dir, open_id)?;
        segments.push_back(open);
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let disk_cursor = segments
            .front()
            .filter(|s| !s.records.is_empty())
            .map(|s| Cursor {
                segment: s.id,
                index: 0,
            });
        let mut spool = Self {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes: SEGMENT_BYTES,
            segments,
            total_bytes,
            head,
            state: None,
            cache: VecDeque::new(),
            cache_limit: cache_limit.max(1),
            disk_cursor,
            unacked: recovered.events,
            lost: 0,
        };
        spool.state = Some(open_state(dir)?);
        spool.write_state();
        Ok((spool, recovered))
    }

    /// Whether a batch of `len` payload bytes fits under the cap.
    #[must_use]
    pub fn has_room(&self, len: usize) -> bool {
        self.total_bytes + HEADER + len as u64 <= self.max_bytes
    }

    /// The largest batch payload that fits in an empty spool, with room to spare for a
    /// second one: sealed batches are kept below it, so one always fits.
    #[must_use]
    pub fn largest_batch(max_bytes: u64) -> usize {
        usize::try_from(max_bytes / 4).unwrap_or(usize::MAX)
    }

    /// Bytes on disk.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Segment files, the one being written included.
    #[must_use]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Events spooled and not acked.
    #[must_use]
    pub fn unacked_events(&self) -> u64 {
        self.unacked
    }

    /// True when nothing is waiting to be sent.
    #[must_use]
    pub fn is_drained(&self) -> bool {
        self.cache.is_empty() && self.disk_cursor.is_none()
    }

    /// Events found damaged while reading back since the last call; they will never be
    /// sent.
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    fn segment_mut(&mut self, id: u64) -> Option<&mut Segment> {
        let at = self.segments.binary_search_by_key(&id, |s| s.id).ok()?;
        self.segments.get_mut(at)
    }

    fn open_segment(&mut self) -> &mut Segment {
        self.segments
            .back_mut()
            .expect("a spool always has an open segment")
    }

    /// Appends a batch; on success it is durable against a crash of this process and
    /// `sealed.spooled` names where it lives. On failure nothing of it stays in the spool.
    pub fn append(&mut self, sealed: &mut Sealed) -> io::Result<()> {
        let record_len = HEADER + sealed.bytes.len() as u64;
        let segment_bytes = self.segment_bytes;
        let rotate = {
            let open = self.open_segment();
            open.sealed || (open.bytes > 0 && open.bytes + record_len > segment_bytes)
        };
        if rotate {
            self.rotate()?;
        }
        let record = Record {
            offset: self.open_segment().bytes,
            len: sealed.bytes.len() as u64,
            batch_id: sealed.batch_id,
            events: sealed.events,
            seq: self.head,
            v1: false,
            done: false,
        };
        let mut bytes = Vec::with_capacity(record_len as usize);
        bytes.extend_from_slice(&encode_header(&record, &sealed.bytes));
        bytes.extend_from_slice(&sealed.bytes);
        let open = self.open_segment();
        if let Err(e) = open.file.write_all_at(&bytes, record.offset) {
            // Whatever part of the record reached the file is cut off again; if even that
            // fails, nothing more is written after it.
            if open.file.set_len(record.offset).is_err() {
                open.sealed = true;
            }
            return Err(e);
        }
        open.bytes += record_len;
        open.records.push(record);
        let reference = SpoolRef {
            segment: open.id,
            index: open.records.len() - 1,
        };
        self.total_bytes += record_len;
        self.head += u64::from(sealed.events);
        self.unacked += u64::from(sealed.events);
        self.write_state();
        sealed.spooled = Some(reference);
        if self.disk_cursor.is_some() {
            // Older records wait on disk; this one is read back after them.
        } else if self.cache.len() < self.cache_limit {
            self.cache.push_back(sealed.clone());
        } else {
            self.disk_cursor = Some(Cursor {
                segment: reference.segment,
                index: reference.index,
            });
        }
        Ok(())
    }

    /// The oldest unsent batch, from memory or read back from disk.
    pub fn next_unsent(&mut self) -> io::Result<Option<Sealed>> {
        if self.cache.is_empty() && self.disk_cursor.is_some() {
            self.refill()?;
        }
        Ok(self.cache.pop_front())
    }

    /// Puts a batch that was sent but not acked back in front.
    pub fn requeue(&mut self, sealed: Sealed) {
        self.cache.push_front(sealed);
    }

    /// Records that the batch at `at` is done with (acked, or refused for good); deletes
    /// segments whose every record is.
    pub fn ack(&mut self, at: SpoolRef) -> io::Result<()> {
        if let Some(events) = self
            .segment_mut(at.segment)
            .and_then(|s| s.resolve(at.index))
        {
            self.unacked -= u64::from(events);
        }
        self.release()?;
        // The floor may have moved: acked records are not resent after a restart.
        self.write_state();
        Ok(())
    }

    /// Deletes the finished segments at the front; empties the open one when everything
    /// is acked.
    fn release(&mut self) -> io::Result<()> {
        let releasable = self
            .segments
            .iter()
            .take(self.segments.len() - 1)
            .take_while(|s| s.finished())
            .count();
        if releasable > 0 {
            // The floor moves first: a crash between the two must not make the deleted
            // records look lost.
            let drained: Vec<Segment> = self.segments.drain(..releasable).collect();
            self.write_state();
            for segment in drained {
                self.total_bytes -= segment.bytes;
                let path = segment_path(&self.dir, segment.id);
                drop(segment);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        // The open segment, once every record is acked and nothing older waits, starts
        // over empty rather than growing to the rotation size.
        let drained = self.is_drained();
        if self.segments.len() == 1 && drained {
            let open = self.open_segment();
            if !open.records.is_empty() && open.finished() && open.file.set_len(0).is_ok() {
                let freed = open.bytes;
                open.bytes = 0;
                open.records.clear();
                open.done = 0;
                open.first_undone = 0;
                open.sealed = false;
                self.total_bytes -= freed;
            }
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let open = self.open_segment();
        // Best effort: a segment that cannot be synced is still read back from its file.
        let _ = open.file.sync_data();
        let id = open
            .id
            .checked_add(1)
            .ok_or_else(|| io::Error::other("spool segment numbers are exhausted"))?;
        open.sealed = true;
        let next = new_segment(&self.dir, id)?;
        self.segments.push_back(next);
        Ok(())
    }

    /// Reads unsent records from disk into the cache, in order; a record that no longer
    /// reads back intact is given up and counted (see [`Spool::take_lost`]).
    fn refill(&mut self) -> io::Result<()> {
        while self.cache.len() < self.cache_limit {
            let Some(cursor) = self.disk_cursor else {
                break;
            };
            let Some(at) = self
                .segments
                .binary_search_by_key(&cursor.segment, |s| s.id)
                .ok()
            else {
                // Its segment is gone (every record in it was done): on to the next one.
                self.disk_cursor = self
                    .segments
                    .iter()
                    .find(|s| s.id > cursor.segment)
                    .map(|s| Cursor {
                        segment: s.id,
                        index: 0,
                    });
                continue;
            };
            let is_last = at + 1 == self.segments.len();
            let segment = &mut self.segments[at];
            if cursor.index >= segment.records.len() {
                self.disk_cursor = if is_last {
                    // Everything written has been read.
                    None
                } else {
                    Some(Cursor {
                        segment: self.segments[at + 1].id,
                        index: 0,
                    })
                };
                continue;
            }
            self.disk_cursor = Some(Cursor {
                segment: cursor.segment,
                index: cursor.index + 1,
            });
            let record = segment.records[cursor.index];
            if record.done {
                continue;
            }
            match read_back(&segment.file, &record) {
                Ok(bytes) => self.cache.push_back(Sealed {
                    batch_id: record.batch_id,
                    events: record.events,
                    bytes,
                    spooled: Some(SpoolRef {
                        segment: cursor.segment,
                        index: cursor.index,
                    }),
                    origin: None,
                    receipts: Vec::new(),
                    sent_at: None,
                }),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::error!(segment = %segment_path(&self.dir, segment.id).display(), offset = record.offset, events = record.events, error = %e, "A spooled batch no longer reads back intact; counting its events as spool_corrupt.");
                    segment.resolve(cursor.index);
                    self.unacked -= u64::from(record.events);
                    self.lost += u64::from(record.events);
                }
                Err(e) => {
                    // Not damage: try this record again next time.
                    self.disk_cursor = Some(cursor);
                    return Err(e);
                }
            }
        }
        if self.lost > 0 {
            self.release()?;
        }
        Ok(())
    }

    /// Checks that the spool's files are still where they belong; when the directory or a
    /// segment was removed under the running agent, recreates them from the open files.
    /// Returns how many segments were rewritten.
    pub fn check(&mut self) -> io::Result<usize> {
        let missing: Vec<usize> = self
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| !same_file(&segment_path(&self.dir, s.id), &s.file))
            .map(|(at, _)| at)
            .collect();
        let state_missing = !self.dir.join(STATE_FILE).exists();
        if missing.is_empty() && !state_missing {
            return Ok(0);
        }
        std::fs::create_dir_all(&self.dir)?;
        for &at in &missing {
            let segment = &mut self.segments[at];
            let path = segment_path(&self.dir, segment.id);
            let copy = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            let mut offset = 0;
            let mut chunk = vec![0u8; 1 << 20];
            while offset < segment.bytes {
                let want = chunk.len().min((segment.bytes - offset) as usize);
                segment.file.read_exact_at(&mut chunk[..want], offset)?;
                copy.write_all_at(&chunk[..want], offset)?;
                offset += want as u64;
            }
            segment.file = copy;
        }
        self.state = Some(open_state(&self.dir)?);
        self.write_state();
        Ok(missing.len())
    }

    /// Everything below the floor was acked; `head` is the next seq.
    fn write_state(&mut self) {
        let floor = self
            .segments
            .iter()
            .find_map(|s| s.records.get(s.first_undone))
            .map_or(self.head, |r| r.seq);
        let Some(file) = &self.state else { return };
        let mut state = [0u8; STATE_LEN];
        state[..4].copy_from_slice(&STATE_MAGIC);
        state[4..12].copy_from_slice(&floor.to_le_bytes());
        state[12..20].copy_from_slice(&self.head.to_le_bytes());
        let crc = crc32fast::hash(&state[..20]);
        state[20..24].copy_from_slice(&crc.to_le_bytes());
        if let Err(e) = file.write_all_at(&state, 0) {
            tracing::warn!(error = %e, "Cannot update the spool state; losses to later damage may go uncounted.");
        }
    }
}

fn new_segment(dir: &Path, id: u64) -> io::Result<Segment> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(segment_path(dir, id))?;
    Ok(Segment {
        id,
        file,
        bytes: 0,
        records: Vec::new(),
        done: 0,
        first_undone: 0,
        sealed: false,
    })
}

fn same_file(path: &Path, file: &File) -> bool {
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(on_disk), Ok(open)) => on_disk.ino() == open.ino() && on_disk.dev() == open.dev(),
        _ => false,
    }
}

fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let name = name.to_str()?;
            name.strip_suffix(".spool")?.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Renames segments to 1, 2, ... when their numbers come near the end of the range. In
/// ascending order each new name is below every name still to move, so a crash halfway
/// leaves the order intact.
fn renumber(dir: &Path, ids: Vec<u64>) -> io::Result<Vec<u64>> {
    if ids.last().is_none_or(|&last| last <= RENUMBER_ABOVE) {
        return Ok(ids);
    }
    tracing::info!(spool = %dir.display(), "Renumbering spool segments from 1.");
    let mut renamed = Vec::with_capacity(ids.len());
    for (n, id) in (1u64..).zip(ids) {
        if n != id {
            std::fs::rename(segment_path(dir, id), segment_path(dir, n))?;
        }
        renamed.push(n);
    }
    Ok(renamed)
}

fn open_state(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(STATE_FILE))
}

/// `(floor, head)`, `None` for a spool without a state file; an error when it is damaged.
fn read_state(dir: &Path) -> io::Result<Option<(u64, u64)>> {
    let mut bytes = Vec::new();
    match File::open(dir.join(STATE_FILE)) {
        Ok(mut file) => file.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() < STATE_LEN || bytes[..4] != STATE_MAGIC {
        return Err(invalid("spool.state is not a spool state"));
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..20]) != crc {
        return Err(invalid("spool.state checksum mismatch"));
    }
    Ok(Some((u64_at(4), u64_at(12))))
}

fn encode_header(record: &Record, payload: &[u8]) -> [u8; HEADER as usize] {
    let mut header = [0u8; HEADER as usize];
    header[..4].copy_from_slice(&MAGIC);
    header[4..8].copy_from_slice(&(record.len as u32).to_le_bytes());
    header[8..16].copy_from_slice(&record.batch_id.to_le_bytes());
    header[16..20].copy_from_slice(&record.events.to_le_bytes());
    header[20..28].copy_from_slice(&record.seq.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[4..28]);
    crc.update(payload);
    header[28..32].copy_from_slice(&crc.finalize().to_le_bytes());
    header
}

/// The record starting at `offset`, if an intact one does.
fn record_at(file: &File, offset: u64, file_len: u64) -> io::Result<Option<(Record, Bytes)>> {
    let mut header = [0u8; HEADER as usize];
    let available = file_len.saturating_sub(offset).min(HEADER) as usize;
    if available < HEADER_V1 as usize {
        return Ok(None);
    }
    file.read_exact_at(&mut header[..available], offset)?;
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let (mut record, header_len) = if header[..4] == MAGIC && available == HEADER as usize {
        let record = Record {
            offset,
            len: u64::from(u32_at(4)),
            batch_id: u64_at(8),
            events: u32_at(16),
            seq: u64_at(20),
            v1: false,
            done: false,
        };
        (record, HEADER)
    } else if header[..4] == MAGIC_V1 {
        let record = Record {
            offset,
            len: u64::from(u32_at(4)),
            batch_id: u64_at(12),
            events: u32_at(20),
            seq: 0,
            v1: true,
            done: false,
        };
        (record, HEADER_V1)
    } else {
        return Ok(None);
    };
    if record.len > MAX_PAYLOAD || offset + header_len + record.len > file_len {
        return Ok(None);
    }
    let mut payload = vec![0u8; record.len as usize];
    file.read_exact_at(&mut payload, offset + header_len)?;
    let intact = if record.v1 {
        crc32fast::hash(&payload) == u32_at(8)
    } else {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[4..28]);
        crc.update(&payload);
        crc.finalize() == u32_at(28)
    };
    record.done = false;
    Ok(intact.then(|| (record, Bytes::from(payload))))
}

/// Reads a record back, checking it is still the one the index names.
fn read_back(file: &File, expected: &Record) -> io::Result<Bytes> {
    let file_len = file.metadata()?.len();
    match record_at(file, expected.offset, file_len)? {
        Some((found, bytes))
            if found.batch_id == expected.batch_id
                && found.events == expected.events
                && found.len == expected.len
                && (found.v1 || found.seq == expected.seq) =>
        {
            Ok(bytes)
        }
        Some(_) => Err(invalid("a different record is where the spooled batch was")),
        None => Err(invalid("record damaged (checksum, header or length)")),
    }
}

/// Every intact record of a segment in order, the bytes skipped between and after them,
/// and where the last intact record ends.
fn scan(file: &File) -> io::Result<(Vec<Record>, u64, u64)> {
    let file_len = file.metadata()?.len();
    let mut records = Vec::new();
    let mut skipped = 0;
    let mut offset = 0;
    let mut good_end = 0;
    while offset < file_len {
        if let Some((record, _)) = record_at(file, offset, file_len)? {
            skipped += offset - good_end;
            offset = record.end();
            good_end = offset;
            records.push(record);
            continue;
        }
        offset = next_magic(file, offset + 1, file_len)?;
    }
    skipped += file_len - good_end;
    Ok((records, skipped, good_end))
}

/// The offset of the next byte sequence that looks like a record's magic, or `file_len`.
fn next_magic(file: &File, from: u64, file_len: u64) -> io::Result<u64> {
    const CHUNK: usize = 64 * 1024;
    let mut buffer = vec![0u8; CHUNK + 3];
    let mut at = from;
    while at < file_len {
        let want = ((file_len - at) as usize).min(buffer.len());
        file.read_exact_at(&mut buffer[..want], at)?;
        if let Some(hit) = buffer[..want]
            .windows(4)
            .position(|w| w == MAGIC || w == MAGIC_V1)
        {
            return Ok(at + hit as u64);
        }
        if want < 4 {
            break;
        }
        // The last three bytes may start a magic that the next chunk completes.
        at += (want - 3) as u64;
    }
    Ok(file_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(id: u64, size: usize, events: u32) -> Sealed {
        Sealed {
            batch_id: id,
            events,
            bytes: Bytes::from(vec![(id % 251) as u8; size]),
            spooled: None,
            origin: None,
            receipts: Vec::new(),
            sent_at: None,
        }
    }

    fn drain(spool: &mut Spool) -> Vec<Sealed> {
        let mut out = Vec::new();
        while let Some(s) = spool.next_unsent().expect("reads") {
            out.push(s);
        }
        out
    }

    fn ids(batches: &[Sealed]) -> Vec<u64> {
        batches.iter().map(|s| s.batch_id).collect()
    }

    fn open(dir: &Path) -> (Spool, Recovered) {
        Spool::open(dir, 1 << 30, 4).expect("opens")
    }

    /// A spool in `dir` holding batches 1..=n of `size` bytes and 10 events each, closed.
    fn filled(dir: &Path, n: u64, size: usize, segment_bytes: u64) {
        let (mut spool, _) = open(dir);
        spool.segment_bytes = segment_bytes;
        for id in 1..=n {
            spool.append(&mut sealed(id, size, 10)).expect("appends");
        }
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        segment_ids(dir)
            .expect("lists")
            .into_iter()
            .map(|id| segment_path(dir, id))
            .collect()
    }

    #[test]
    fn batches_come_out_in_order_from_memory_and_disk() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut spool, _) = Spool::open(dir.path(), 1 << 30, 3).expect("opens");
        for id in 1..=10 {
            spool.append(&mut sealed(id, 100, 10)).expect("appends");
        }
        assert_eq!(ids(&drain(&mut spool)), (1..=10).collect::<Vec<_>>());
        assert!(spool.is_drained());
    }

    #[test]
    fn unacked_batches_survive_a_restart_and_acked_segments_go() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (mut spool, recovered) = open(dir.path());
            assert_eq!(recovered, Recovered::default());
            spool.segment_bytes = 2500;
            for id in 1..=6 {
                spool.append(&mut sealed(id, 1000, 10)).expect("appends");
            }
            let sent = drain(&mut spool);
            for s in &sent[..2] {
                spool.ack(s.spooled.expect("spooled")).expect("acks");
            }
            assert_eq!(spool.unacked_events(), 40);
        }
        let (mut spool, recovered) = open(dir.path());
        // Segment 1 held batches 1 and 2 and was deleted when both were acked.
        assert!(!segment_path(dir.path(), 1).exists());
        assert_eq!(recovered.batches, 4);
        assert_eq!(recovered.events, 40);
        assert_eq!(recovered.corrupt_events, 0);
        assert_eq!(ids(&drain(&mut spool)), [3, 4, 5, 6]);
    }

    #[test]
    fn acked_records_of_a_kept_segment_are_not_resent() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (mut spool, _) = open(dir.path());
            for id in 1..=4 {
                spool.append(&mut sealed(id, 100, 10)).expect("appends");
            }
            let sent = drain(&mut spool);
            spool.ack(sent[0].spooled.expect("spooled")).expect("acks");
        }
        let (mut spool, recovered) = open(dir.path());
        assert_eq!(recovered.events, 30);
        assert_eq!(ids(&drain(&mut spool)), [2, 3, 4]);
    }

    #[test]
    fn a_torn_write_is_cut_off_and_not_counted_as_a_loss() {
        let dir = tempfile::tempdir().expect("dir");
        filled(dir.path(), 3, 1000, SEGMENT_BYTES);
        // A kill in the middle of a fourth record's write: the state never heard of it.
        let path = &segment_files(dir.path())[0];
        let mut torn = encode_header(
            &Record {
                offset: 0,
                len: 1000,
                batch_id: 4,
                events: 10,
                seq: 30,
                v1: false,
                done: false,
            },
            &[4; 1000],
        )
        .to_vec();
        torn.extend_from_slice(&[4; 300]);
        let file = OpenOptions::new().append(true).open(path).expect("opens");
        std::io::Write::write_all(&mut &file, &torn).expect("writes");
        let (mut spool, recovered) = open(dir.path());
        assert_eq!(recovered.batches, 3);
        assert_eq!(recovered.corrupt_events, 0);
        assert_eq!(recovered.skipped_bytes, torn.len() as u64);
        assert_eq!(ids(&drain(&mut spool)), [1, 2, 3]);
        // Appending after the cut continues cleanly.
        spool.append(&mut sealed(9, 10, 1)).expect("appends");
        assert_eq!(drain(&mut spool)[0].batch_id, 9);
    }

    #[test]
    fn the_cap_is_reported_before_a_write() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut spool, _) = Spool::open(dir.path(), 3000, 4).expect("opens");
        assert!(spool.has_room(1000));
        spool.append(&mut sealed(1, 1000, 10)).expect("appends");
        spool.append(&mut sealed(2, 1000, 10)).expect("appends");
        assert!(!spool.has_room(1000));
        for s in drain(&mut spool) {
            spool.ack(s.spooled.expect("spooled")).expect("acks");
        }
        assert_eq!(spool.bytes(), 0, "a fully acked spool is emptied");
        assert!(spool.has_room(1000));
    }

    /// Flips one byte at `offset` of `path`.
    fn flip(path: &Path, offset: u64) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("opens");
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset).expect("reads");
        file.write_all_at(&[byte[0] ^ 0x40], offset)
            .expect("writes");
    }

    fn record_offset(index: u64, size: u64) -> u64 {
        index * (HEADER + size)
    }

    #[rstest::rstest]
    #[case::batch_id(8)]
    #[case::events(16)]
    #[case::length(4)]
    #[case::seq(20)]
    #[case::checksum(28)]
    #[case::payload(HEADER + 17)]
    fn a_flipped_byte_anywhere_in_a_record_loses_only_that_record_and_is_counted(#[case] at: u64) {
        let dir = tempfile::tempdir().expect("dir");
        filled(dir.path(), 30, 200, SEGMENT_BYTES);
        flip(&segment_files(dir.path())[0], record_offset(9, 200) + at);
        let (mut spool, recovered) = open(dir.path());
        assert_eq!(recovered.batches, 29);
        assert_eq!(recovered.corrupt_events, 10, "the damaged record's events");
        let expected: Vec<u64> = (1..=30).filter(|&id| id != 10).collect();
        assert_eq!(ids(&drain(&mut spool)), expected);
    }

    #[test]
    fn damage_found_while_running_is_counted_and_does_not_wedge_the_spool() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut spool, _) = Spool::open(dir.path(), 1 << 30, 2).expect("opens");
        spool.segment_bytes = 1000;
        for id in 1..=8 {
            spool.append(&mut sealed(id, 200, 10)).expect("appends");
        }
        // Batch 3 waits on disk (only two are cached); its batch id is flipped there.
        flip(&segment_path(dir.path(), 1), record_offset(2, 200) + 8);
        let sent = drain(&mut spool);
        assert_eq!(ids(&sent), [1, 2, 4, 5, 6, 7, 8]);
        assert_eq!(spool.take_lost(), 10);
        for s in &sent {
            spool.ack(s.spooled.expect("spooled")).expect("acks");
        }
        assert_eq!(spool.unacked_events(), 0);
        assert_eq!(
            segment_files(dir.path()).len(),
            1,
            "every finished segment is deleted"
        );
    }

    #[test]
    fn a_segment_truncated_to_nothing_is_counted_in_events() {
        let dir = tempfile::tempdir().expect("dir");
        filled(dir.path(), 12, 1000, 4500);
        let files = segment_files(dir.path());
        assert_eq!(files.len(), 3, "{files:?}");
        // Four records per segment: the middle one loses batches 5..=8.
        OpenOptions::new()
            .write(true)
            .open(&files[1])
            .expect("opens")
            .set_len(0)
            .expect("truncates");
        let (mut spool, recovered) = open(dir.path());
        assert_eq!(recovered.corrupt_events, 40);
        let expected: Vec<u64> = (1..=12).filter(|id| !(5..=8).contains(id)).collect();
        assert_eq!(ids(&drain(&mut spool)), expected);
    }

    #[test]
    fn a_missing_last_segment_is_counted_from_the_state() {
        let dir = tempfile::tempdir().expect("dir");
        filled(dir.path(), 12, 1000, 4500);
        let files = segment_files(dir.path());
        // The last one holds batches 9..=12.
        std::fs::remove_file(files.last().expect("a segment")).expect("removes");
        let (_, recovered) = open(dir.path());
        assert_eq!(recovered.corrupt_events, 40);
        assert_eq!(recovered.events, 80);
    }

    #[test]
    fn segment_numbers_near_the_end_of_the_range_start_over() {
        let dir = tempfile::tempdir().expect("dir");
        filled(dir.path(), 2, 100, SEGMENT_BYTES);
        let files = segment_files(dir.path());
        std::fs::rename(&files[0], segment_path(dir.path(), u64::MAX)).expect("renames");
        {
            let (mut spool, recovered) = open(dir.path());
            assert_eq!(recovered.batches, 2);
            spool
                .append(&mut sealed(3, 100, 10))
                .expect("appends after the wrap");
        }
        let (mut spool, recovered) = open(dir.path());
        assert_eq!(recovered.corrupt_events, 0);
        assert_eq!(ids(&drain(&mut spool)), [1, 2, 3]);
    }

    #[test]
    fn a_spool_directory_removed_while_running_comes_back_with_everything_unacked() {
        let dir = tempfile::tempdir().expect("dir");
        let spool_dir = dir.path().join("spool");
        let (mut spool, _) = Spool::open(&spool_dir, 1 << 30, 2).expect("opens");
        spool.segment_bytes = 1000;
        for id in 1..=6 {
            spool.append(&mut sealed(id, 200, 10)).expect("appends");
        }
        std::fs::remove_dir_all(&spool_dir).expect("removed");
        assert!(spool.check().expect("recreates") > 0);
        assert_eq!(spool.check().expect("checks"), 0, "all in place again");
        spool.append(&mut sealed(7, 200, 10)).expect("appends");
        assert_eq!(ids(&drain(&mut spool)), [1, 2, 3, 4, 5, 6, 7]);
        drop(spool);
        let (mut spool, recovered) = open(&spool_dir);
        assert_eq!(
            recovered.events, 70,
            "the recreated files hold every unacked batch"
        );
        assert_eq!(recovered.corrupt_events, 0);
        assert_eq!(ids(&drain(&mut spool)), [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_lost_state_file_is_no_reason_to_count_losses() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (mut spool, _) = open(dir.path());
            spool.segment_bytes = 2500;
            for id in 1..=6 {
                spool.append(&mut sealed(id, 1000, 10)).expect("appends");
            }
            for s in drain(&mut spool).iter().take(2) {
                spool.ack(s.spooled.expect("spooled")).expect("acks");
            }
        }
        std::fs::remove_file(dir.path().join(STATE_FILE)).expect("removes");
        let (mut spool, recovered) = open(dir.path());
        assert_eq!(recovered.corrupt_events, 0);
        assert_eq!(ids(&drain(&mut spool)), [3, 4, 5, 6]);
    }

    #[test]
    fn records_of_the_first_format_are_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let mut file = Vec::new();
        for id in 1..=3u64 {
            let payload = vec![id as u8; 50];
            file.extend_from_slice(&MAGIC_V1);
            file.extend_from_slice(&50u32.to_le_bytes());
            file.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            file.extend_from_slice(&id.to_le_bytes());
            file.extend_from_slice(&7u32.to_le_bytes());
            file.extend_from_slice(&payload);
        }
        std::fs::write(segment_path(dir.path(), 1), file).expect("writes");
        let (mut spool, recovered) = open(dir.path());
        assert_eq!((recovered.batches, recovered.events), (3, 21));
        assert_eq!(ids(&drain(&mut spool)), [1, 2, 3]);
    }

    /// One kind of damage to a segment file.
    #[derive(Clone, Debug)]
    enum Damage {
        Flip { at: u64, mask: u8 },
        Truncate { to: u64 },
        Zero { at: u64, len: u64 },
        Junk { bytes: Vec<u8> },
        Remove,
    }

    fn damage() -> impl proptest::strategy::Strategy<Value = Damage> {
        use proptest::prelude::*;
        prop_oneof![
            (any::<u64>(), 1u8..=255).prop_map(|(at, mask)| Damage::Flip { at, mask }),
            any::<u64>().prop_map(|to| Damage::Truncate { to }),
            (any::<u64>(), 1u64..600).prop_map(|(at, len)| Damage::Zero { at, len }),
            proptest::collection::vec(any::<u8>(), 1..300).prop_map(|bytes| Damage::Junk { bytes }),
            Just(Damage::Remove),
        ]
    }

    fn apply(path: &Path, damage: &Damage) {
        let mut bytes = std::fs::read(path).expect("reads");
        let len = bytes.len() as u64;
        match damage {
            Damage::Flip { at, mask } if len > 0 => bytes[(at % len) as usize] ^= mask,
            Damage::Truncate { to } => bytes.truncate((to % (len + 1)) as usize),
            Damage::Zero { at, len: n } if len > 0 => {
                let start = (at % len) as usize;
                let end = (start + *n as usize).min(bytes.len());
                bytes[start..end].fill(0);
            }
            Damage::Junk { bytes: junk } => bytes.extend_from_slice(junk),
            Damage::Remove => {
                std::fs::remove_file(path).expect("removes");
                return;
            }
            _ => {}
        }
        std::fs::write(path, bytes).expect("writes");
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(200))]

        /// Whatever happens to the segment files, every record whose bytes are untouched
        /// comes back, and every event of the rest is counted as lost.
        #[test]
        fn damage_never_loses_an_intact_record_and_never_leaves_a_loss_uncounted(
            sizes in proptest::collection::vec((1usize..400, 0u32..50), 1..40),
            damages in proptest::collection::vec((0usize..8, damage()), 1..6),
        ) {
            let dir = tempfile::tempdir().expect("dir");
            let mut written = Vec::new();
            {
                let (mut spool, _) = open(dir.path());
                spool.segment_bytes = 2000;
                for (n, &(size, events)) in sizes.iter().enumerate() {
                    let mut batch = sealed(n as u64 + 1, size, events);
                    batch.bytes = Bytes::from((0..size).map(|i| (i * 7 + n) as u8).collect::<Vec<_>>());
                    spool.append(&mut batch).expect("appends");
                    let at = batch.spooled.expect("spooled");
                    let segment = spool.segment_mut(at.segment).expect("segment");
                    let record = segment.records[at.index];
                    written.push((at.segment, record, batch.bytes.clone()));
                }
            }
            let originals: std::collections::HashMap<u64, Vec<u8>> = segment_ids(dir.path())
                .expect("lists")
                .into_iter()
                .map(|id| (id, std::fs::read(segment_path(dir.path(), id)).expect("reads")))
                .collect();
            let ids_on_disk: Vec<u64> = originals.keys().copied().collect();
            for (which, damage) in &damages {
                let mut present: Vec<u64> = ids_on_disk.iter().copied().filter(|&id| segment_path(dir.path(), id).exists()).collect();
                present.sort_unstable();
                if let Some(&id) = present.get(which % present.len().max(1)) {
                    apply(&segment_path(dir.path(), id), damage);
                }
            }
            // A record is intact when its bytes in the damaged file equal the original's.
            let intact: Vec<u64> = written
                .iter()
                .filter(|(segment, record, _)| {
                    let Ok(now) = std::fs::read(segment_path(dir.path(), *segment)) else { return false };
                    let range = record.offset as usize..record.end() as usize;
                    now.get(range.clone()) == originals[segment].get(range)
                })
                .map(|(_, record, _)| record.batch_id)
                .collect();
            let total: u64 = written.iter().map(|(_, r, _)| u64::from(r.events)).sum();
            let (mut spool, recovered) = open(dir.path());
            let back = drain(&mut spool);
            let back_ids = ids(&back);
            for id in &intact {
                proptest::prop_assert!(back_ids.contains(id), "intact batch {id} lost: got {back_ids:?}");
            }
            for batch in &back {
                let original = &written[batch.batch_id as usize - 1].2;
                proptest::prop_assert_eq!(&batch.bytes, original, "batch {} read back changed", batch.batch_id);
            }
            let recovered_events: u64 = back.iter().map(|b| u64::from(b.events)).sum();
            proptest::prop_assert_eq!(recovered.events, recovered_events);
            proptest::prop_assert_eq!(
                recovered_events + recovered.corrupt_events,
                total,
                "every event is read back or counted as lost"
            );
        }
    }
}
