//! The on-disk spool: every sealed batch is appended here before it is sent, and stays
//! until the server acks it, so a collector killed at any moment (SIGKILL included) resends
//! on its next start what the server had not acked. The server dedups by event id, so a
//! batch acked just before the kill and resent after it is stored once.
//!
//! Layout: numbered segment files (`00000000000000000001.spool`, ...), each a sequence of
//! records `magic u32 | length u32 | crc32 u32 | batch_id u64 | events u32 | payload`, all
//! little endian; the payload is the batch's encoded request. A segment is deleted when it
//! is no longer written to and every record in it is acked. A torn or corrupt tail (a kill
//! in the middle of a write, a damaged disk) is cut off at the last good record, with a
//! warning saying how much was lost.
//!
//! The oldest unsent records are kept in memory (up to `cache_limit`), so a server that
//! keeps up is fed from memory; the rest are read back from disk in order.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::Sealed;

const MAGIC: u32 = 0x3153_5054; // "TPS1" read as little endian
const HEADER: u64 = 24;
/// Segments rotate at this size.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// What opening a spool found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Batches left by an earlier run, to be resent.
    pub batches: u64,
    /// Events in them.
    pub events: u64,
    /// Bytes of torn or corrupt records cut off.
    pub truncated_bytes: u64,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    bytes: u64,
    records: u64,
    acked: u64,
    events: u64,
    acked_events: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    segment: u64,
    offset: u64,
}

/// A bounded, crash-safe FIFO of sealed batches.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Segments no longer appended to, oldest first.
    closed: VecDeque<Segment>,
    /// The segment appended to.
    open: Segment,
    writer: File,
    total_bytes: u64,
    cache: VecDeque<Sealed>,
    cache_limit: usize,
    /// The first unsent record that is not in the cache.
    disk_cursor: Option<Cursor>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.spool"))
}

impl Spool {
    /// Opens the spool in `dir` (creating it), recovering what an earlier run left.
    pub fn open(dir: &Path, max_bytes: u64, cache_limit: usize) -> io::Result<(Self, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name();
                let name = name.to_str()?;
                name.strip_suffix(".spool")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let mut recovered = Recovered::default();
        let mut closed = VecDeque::new();
        for id in ids {
            let (segment, cut) = scan(&segment_path(dir, id), id)?;
            recovered.batches += segment.records;
            recovered.events += segment.events;
            recovered.truncated_bytes += cut;
            if segment.records == 0 {
                // An empty segment holds nothing to resend.
                std::fs::remove_file(segment_path(dir, id))?;
                continue;
            }
            closed.push_back(segment);
        }
        // Appends go to a fresh segment after whatever an earlier run left.
        let open = Segment::new(closed.back().map_or(1, |s| s.id + 1));
        let writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, open.id))?;
        let total_bytes = closed.iter().map(|s| s.bytes).sum();
        let disk_cursor = closed.front().map(|s| Cursor {
            segment: s.id,
            offset: 0,
        });
        let spool = Self {
            dir: dir.to_owned(),
            max_bytes,
            closed,
            open,
            writer,
            total_bytes,
            cache: VecDeque::new(),
            cache_limit: cache_limit.max(1),
            disk_cursor,
        };
        Ok((spool, recovered))
    }

    /// Whether a batch of `len` payload bytes fits under the cap.
    #[must_use]
    pub fn has_room(&self, len: usize) -> bool {
        self.total_bytes + HEADER + len as u64 <= self.max_bytes
    }

    /// Bytes on disk.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Events spooled and not acked.
    #[must_use]
    pub fn unacked_events(&self) -> u64 {
        self.segments().map(|s| s.events - s.acked_events).sum()
    }

    /// True when nothing is waiting to be sent.
    #[must_use]
    pub fn is_drained(&self) -> bool {
        self.cache.is_empty() && self.disk_cursor.is_none()
    }

    fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.closed.iter().chain(std::iter::once(&self.open))
    }

    /// Appends a batch; on success it is durable against a crash of this process and
    /// `sealed.segment` names where it lives.
    pub fn append(&mut self, sealed: &mut Sealed) -> io::Result<()> {
        let record_len = HEADER + sealed.bytes.len() as u64;
        if self.open.bytes > 0 && self.open.bytes + record_len > SEGMENT_BYTES {
            self.rotate()?;
        }
        let mut record = Vec::with_capacity(record_len as usize);
        record.extend_from_slice(&MAGIC.to_le_bytes());
        record.extend_from_slice(&(sealed.bytes.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&sealed.bytes).to_le_bytes());
        record.extend_from_slice(&sealed.batch_id.to_le_bytes());
        record.extend_from_slice(&sealed.events.to_le_bytes());
        record.extend_from_slice(&sealed.bytes);
        // One write per record: a kill tears at most the record being written.
        self.writer.write_all(&record)?;
        let offset = self.open.bytes;
        self.open.bytes += record_len;
        self.open.records += 1;
        self.open.events += u64::from(sealed.events);
        self.total_bytes += record_len;
        sealed.segment = Some(self.open.id);
        if self.disk_cursor.is_some() {
            // Older records wait on disk; this one is read back after them.
        } else if self.cache.len() < self.cache_limit {
            self.cache.push_back(sealed.clone());
        } else {
            self.disk_cursor = Some(Cursor {
                segment: self.open.id,
                offset,
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

    /// Records the server's ack of `sealed`; deletes segments that are fully acked.
    pub fn ack(&mut self, sealed: &Sealed) -> io::Result<()> {
        let Some(id) = sealed.segment else {
            return Ok(());
        };
        if let Some(segment) = self
            .closed
            .iter_mut()
            .chain(std::iter::once(&mut self.open))
            .find(|s| s.id == id)
        {
            segment.acked += 1;
            segment.acked_events += u64::from(sealed.events);
        }
        while let Some(done) = self.closed.pop_front() {
            if done.acked < done.records {
                self.closed.push_front(done);
                break;
            }
            self.total_bytes -= done.bytes;
            std::fs::remove_file(segment_path(&self.dir, done.id))?;
        }
        // The open segment, once every record is acked and nothing older waits, starts
        // over empty rather than growing to the rotation size.
        let open = &self.open;
        let finished = open.records > 0 && open.acked >= open.records;
        if finished && self.closed.is_empty() && self.is_drained() {
            self.writer.set_len(0)?;
            self.total_bytes = 0;
            self.open = Segment::new(self.open.id);
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.writer.sync_data()?;
        let id = self.open.id + 1;
        self.writer = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(&self.dir, id))?;
        let full = std::mem::replace(&mut self.open, Segment::new(id));
        self.closed.push_back(full);
        Ok(())
    }

    /// Reads unsent records from disk into the cache, in order.
    fn refill(&mut self) -> io::Result<()> {
        while self.cache.len() < self.cache_limit {
            let Some(cursor) = self.disk_cursor else {
                break;
            };
            let Some(segment_bytes) = self
                .segments()
                .find(|s| s.id == cursor.segment)
                .map(|s| s.bytes)
            else {
                self.disk_cursor = None;
                break;
            };
            if cursor.offset >= segment_bytes {
                // On to the next segment, or stop: everything written has been read.
                let next = self
                    .segments()
                    .find(|s| s.id > cursor.segment)
                    .map(|s| Cursor {
                        segment: s.id,
                        offset: 0,
                    });
                self.disk_cursor = next;
                continue;
            }
            let mut file = BufReader::new(File::open(segment_path(&self.dir, cursor.segment))?);
            file.seek(SeekFrom::Start(cursor.offset))?;
            let mut offset = cursor.offset;
            while offset < segment_bytes && self.cache.len() < self.cache_limit {
                let (mut sealed, len) = read_record(&mut file)?.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "spool record vanished")
                })?;
                sealed.segment = Some(cursor.segment);
                offset += len;
                self.cache.push_back(sealed);
            }
            self.disk_cursor = Some(Cursor {
                segment: cursor.segment,
                offset,
            });
        }
        Ok(())
    }
}

impl Segment {
    fn new(id: u64) -> Self {
        Self {
            id,
            bytes: 0,
            records: 0,
            acked: 0,
            events: 0,
            acked_events: 0,
        }
    }
}

/// Reads one record; `None` at a clean end, an error for a torn or corrupt one.
fn read_record(reader: &mut impl Read) -> io::Result<Option<(Sealed, u64)>> {
    let mut header = [0u8; HEADER as usize];
    match reader.read_exact(&mut header[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    reader.read_exact(&mut header[1..])?;
    let (magic, rest) = header.split_at(4);
    let (len, rest) = rest.split_at(4);
    let (crc, rest) = rest.split_at(4);
    let (batch_id, events) = rest.split_at(8);
    let u32_at = |bytes: &[u8]| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if u32_at(magic) != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad record magic",
        ));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(batch_id);
    let mut payload = vec![0u8; u32_at(len) as usize];
    reader.read_exact(&mut payload)?;
    if crc32fast::hash(&payload) != u32_at(crc) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "record checksum mismatch",
        ));
    }
    let record_len = HEADER + payload.len() as u64;
    Ok(Some((
        Sealed {
            batch_id: u64::from_le_bytes(id),
            events: u32_at(events),
            bytes: Bytes::from(payload),
            segment: None,
            receipts: Vec::new(),
        },
        record_len,
    )))
}

/// Counts the good records of a segment and cuts off anything after the last one.
fn scan(path: &Path, id: u64) -> io::Result<(Segment, u64)> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let length = file.metadata()?.len();
    let mut reader = BufReader::new(&file);
    let mut segment = Segment::new(id);
    loop {
        match read_record(&mut reader) {
            Ok(Some((sealed, len))) => {
                segment.bytes += len;
                segment.records += 1;
                segment.events += u64::from(sealed.events);
            }
            Ok(None) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ) =>
            {
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let cut = length - segment.bytes;
    if cut > 0 {
        tracing::warn!(
            segment = %path.display(),
            bytes = cut,
            "Spool segment has a torn or corrupt tail; cutting it off."
        );
        file.set_len(segment.bytes)?;
    }
    Ok((segment, cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(id: u64, size: usize) -> Sealed {
        Sealed {
            batch_id: id,
            events: 10,
            bytes: Bytes::from(vec![(id % 251) as u8; size]),
            segment: None,
            receipts: Vec::new(),
        }
    }

    fn drain(spool: &mut Spool) -> Vec<Sealed> {
        let mut out = Vec::new();
        while let Some(s) = spool.next_unsent().expect("reads") {
            out.push(s);
        }
        out
    }

    #[test]
    fn batches_come_out_in_order_from_memory_and_disk() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut spool, _) = Spool::open(dir.path(), 1 << 30, 3).expect("opens");
        for id in 1..=10 {
            spool.append(&mut sealed(id, 100)).expect("appends");
        }
        let ids: Vec<u64> = drain(&mut spool).iter().map(|s| s.batch_id).collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
        assert!(spool.is_drained());
    }

    #[test]
    fn unacked_batches_survive_a_restart_and_acked_segments_go() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (mut spool, recovered) = Spool::open(dir.path(), 1 << 30, 4).expect("opens");
            assert_eq!(recovered, Recovered::default());
            // Large records so several segments rotate.
            for id in 1..=6 {
                spool
                    .append(&mut sealed(id, 7 * 1024 * 1024))
                    .expect("appends");
            }
            let sent = drain(&mut spool);
            for s in &sent[..2] {
                spool.ack(s).expect("acks");
            }
            assert_eq!(spool.unacked_events(), 40);
        }
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 30, 4).expect("reopens");
        // Segment 1 held batches 1 and 2 and was deleted when both were acked.
        assert!(!segment_path(dir.path(), 1).exists());
        assert_eq!(recovered.batches, 4);
        assert_eq!(recovered.truncated_bytes, 0);
        let ids: Vec<u64> = drain(&mut spool).iter().map(|s| s.batch_id).collect();
        assert_eq!(ids, [3, 4, 5, 6]);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (mut spool, _) = Spool::open(dir.path(), 1 << 30, 4).expect("opens");
            for id in 1..=3 {
                spool.append(&mut sealed(id, 1000)).expect("appends");
            }
        }
        let path = segment_path(dir.path(), 1);
        let length = std::fs::metadata(&path).expect("exists").len();
        // A kill in the middle of the third record's write.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("opens")
            .set_len(length - 500)
            .expect("truncates");
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 30, 4).expect("reopens");
        assert_eq!(recovered.batches, 2);
        assert_eq!(recovered.truncated_bytes, HEADER + 500);
        let ids: Vec<u64> = drain(&mut spool).iter().map(|s| s.batch_id).collect();
        assert_eq!(ids, [1, 2]);
        // Appending after the cut continues cleanly.
        spool.append(&mut sealed(9, 10)).expect("appends");
        assert_eq!(drain(&mut spool)[0].batch_id, 9);
    }

    #[test]
    fn the_cap_is_reported_before_a_write() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut spool, _) = Spool::open(dir.path(), 3000, 4).expect("opens");
        assert!(spool.has_room(1000));
        spool.append(&mut sealed(1, 1000)).expect("appends");
        spool.append(&mut sealed(2, 1000)).expect("appends");
        assert!(!spool.has_room(1000));
        let sent = drain(&mut spool);
        for s in &sent {
            spool.ack(s).expect("acks");
        }
        assert_eq!(spool.bytes(), 0, "a fully acked spool is emptied");
        assert!(spool.has_room(1000));
    }
}
