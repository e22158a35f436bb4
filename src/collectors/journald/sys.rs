//! A safe wrapper over the few sd-journal calls the collector needs (libsystemd).
//!
//! sd-journal does the hard parts: every file in the directory, interleaved by time,
//! rotation and vacuum while following, compressed fields, and skipping what is corrupt.
//!
//! The one module of the crate with `unsafe`: calls into a C library cannot be written
//! without it, and every call is wrapped here with what makes it sound.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::path::Path;
use std::ptr;

#[repr(C)]
struct SdJournal {
    _private: [u8; 0],
}

/// Declares libsystemd's functions as this module calls them, resolved from
/// `libsystemd.so.0` at run time rather than linked: only the journald collector needs the
/// library, so neither binary needs it to link or to start, and tapio-server never loads it.
macro_rules! libsystemd {
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;)*) => {
        struct Library {
            /// Kept open for as long as the pointers below are used: the whole run.
            _open: libloading::Library,
            $($name: unsafe extern "C" fn($($ty),*) $(-> $ret)?,)*
        }

        impl Library {
            fn load() -> Result<Self, String> {
                // SAFETY: loading libsystemd runs its ELF initialisers, which only set up
                // its own state; nothing of ours runs in them.
                let open = unsafe { libloading::Library::new("libsystemd.so.0") }
                    .map_err(|e| e.to_string())?;
                $(
                    // SAFETY: the type is the one sd-journal(3) documents for the symbol.
                    let $name = *unsafe {
                        open.get::<unsafe extern "C" fn($($ty),*) $(-> $ret)?>(stringify!($name))
                    }
                    .map_err(|e| e.to_string())?;
                )*
                Ok(Self { _open: open, $($name,)* })
            }
        }

        $(
            /// Calls libsystemd's function of the same name; only after a journal opened,
            /// which loaded the library.
            unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                let library = LIBRARY
                    .get()
                    .and_then(|l| l.as_ref().ok())
                    .expect("libsystemd is loaded before any journal call");
                // SAFETY: the caller upholds sd-journal's contract for this call.
                unsafe { (library.$name)($($arg),*) }
            }
        )*
    };
}

libsystemd! {
    fn sd_journal_open(ret: *mut *mut SdJournal, flags: c_int) -> c_int;
    fn sd_journal_open_directory(ret: *mut *mut SdJournal, path: *const c_char, flags: c_int) -> c_int;
    fn sd_journal_open_files(ret: *mut *mut SdJournal, paths: *const *const c_char, flags: c_int) -> c_int;
    fn sd_journal_close(j: *mut SdJournal);
    fn sd_journal_next(j: *mut SdJournal) -> c_int;
    fn sd_journal_get_realtime_usec(j: *mut SdJournal, ret: *mut u64) -> c_int;
    fn sd_journal_set_data_threshold(j: *mut SdJournal, size: usize) -> c_int;
    fn sd_journal_restart_data(j: *mut SdJournal);
    fn sd_journal_enumerate_available_data(j: *mut SdJournal, data: *mut *const c_void, length: *mut usize) -> c_int;
    fn sd_journal_add_match(j: *mut SdJournal, data: *const c_void, size: usize) -> c_int;
    fn sd_journal_add_conjunction(j: *mut SdJournal) -> c_int;
    fn sd_journal_seek_head(j: *mut SdJournal) -> c_int;
    fn sd_journal_seek_tail(j: *mut SdJournal) -> c_int;
    fn sd_journal_previous(j: *mut SdJournal) -> c_int;
    fn sd_journal_seek_cursor(j: *mut SdJournal, cursor: *const c_char) -> c_int;
    fn sd_journal_test_cursor(j: *mut SdJournal, cursor: *const c_char) -> c_int;
    fn sd_journal_get_cursor(j: *mut SdJournal, cursor: *mut *mut c_char) -> c_int;
    fn sd_journal_wait(j: *mut SdJournal, timeout_usec: u64) -> c_int;
}

/// libsystemd, loaded on the first journal opened; the error says why it could not be.
static LIBRARY: std::sync::OnceLock<Result<Library, String>> = std::sync::OnceLock::new();

/// Loads libsystemd once; a journal cannot be opened without it.
fn library() -> io::Result<()> {
    match LIBRARY.get_or_init(Library::load) {
        Ok(_) => Ok(()),
        Err(why) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("libsystemd.so.0 cannot be loaded ({why}); install libsystemd0"),
        )),
    }
}

unsafe extern "C" {
    fn free(ptr: *mut c_void);
}

/// `SD_JOURNAL_LOCAL_ONLY`: this machine's journal, not remote or container ones.
const LOCAL_ONLY: c_int = 1;

/// What `wait` saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing within the timeout.
    Nothing,
    /// Entries were appended.
    Appended,
    /// Files were added or removed (rotation, vacuum).
    Invalidated,
}

fn check(rc: c_int, what: &str) -> io::Result<c_int> {
    if rc < 0 {
        let error = io::Error::from_raw_os_error(-rc);
        Err(io::Error::new(error.kind(), format!("{what}: {error}")))
    } else {
        Ok(rc)
    }
}

/// An open journal (one thread at a time: sd-journal is not thread-safe).
#[derive(Debug)]
pub struct Journal {
    j: *mut SdJournal,
}

// SAFETY: sd-journal objects may move between threads; they must only not be used from
// two at once, which `&mut self` on every call ensures.
unsafe impl Send for Journal {}

impl Journal {
    /// The journal files in `directory`, or this machine's journal (/var/log/journal and
    /// /run/log/journal) when `None`.
    ///
    /// # Errors
    /// When libsystemd is missing, or sd-journal cannot open them.
    pub fn open(directory: Option<&Path>) -> io::Result<Self> {
        library()?;
        let mut j = ptr::null_mut();
        // SAFETY: `j` is a valid out-pointer; the path is a NUL-terminated string.
        let rc = unsafe {
            match directory {
                None => sd_journal_open(&raw mut j, LOCAL_ONLY),
                Some(dir) => {
                    let path = CString::new(dir.as_os_str().as_encoded_bytes())
                        .map_err(|_| io::Error::other("a NUL byte in the directory path"))?;
                    sd_journal_open_directory(&raw mut j, path.as_ptr(), 0)
                }
            }
        };
        check(rc, "opening the journal")?;
        let mut journal = Self { j };
        // Whole fields, however large (the default cuts them at 64 KiB).
        // SAFETY: `j` is open.
        check(
            unsafe { sd_journal_set_data_threshold(journal.j, 0) },
            "setting the data threshold",
        )?;
        journal.seek_head()?;
        Ok(journal)
    }

    /// Whether sd-journal can open the single file `path` (opening a directory silently
    /// leaves out the files it cannot read).
    ///
    /// # Errors
    /// Why it cannot.
    pub fn check_file(path: &Path) -> io::Result<()> {
        library()?;
        let text = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::other("a NUL byte in the path"))?;
        let paths = [text.as_ptr(), ptr::null()];
        let mut j = ptr::null_mut();
        // SAFETY: `paths` is a NULL-terminated array of NUL-terminated strings that outlive
        // the call; `j` is a valid out-pointer, closed right after when it was opened.
        unsafe {
            check(
                sd_journal_open_files(&raw mut j, paths.as_ptr(), 0),
                "opening",
            )?;
            sd_journal_close(j);
        }
        Ok(())
    }

    /// Only entries with `field=value`; matches on one field are alternatives, matches on
    /// different fields must all hold.
    ///
    /// # Errors
    /// When the match is malformed.
    pub fn add_match(&mut self, field_value: &str) -> io::Result<()> {
        // SAFETY: pointer and length describe `field_value`, which sd-journal copies.
        let rc =
            unsafe { sd_journal_add_match(self.j, field_value.as_ptr().cast(), field_value.len()) };
        check(rc, &format!("match `{field_value}`")).map(drop)
    }

    /// Starts a new group of matches that must hold as well as the ones before.
    ///
    /// # Errors
    /// Never in practice; sd-journal reports allocation failure.
    pub fn and(&mut self) -> io::Result<()> {
        // SAFETY: `j` is open.
        check(unsafe { sd_journal_add_conjunction(self.j) }, "matches").map(drop)
    }

    /// Before the first entry.
    ///
    /// # Errors
    /// When sd-journal fails.
    pub fn seek_head(&mut self) -> io::Result<()> {
        // SAFETY: `j` is open.
        check(
            unsafe { sd_journal_seek_head(self.j) },
            "seeking to the head",
        )
        .map(drop)
    }

    /// After the last entry, so `next` returns only entries written from now on.
    ///
    /// # Errors
    /// When sd-journal fails.
    pub fn seek_tail(&mut self) -> io::Result<()> {
        // SAFETY: `j` is open.
        unsafe {
            check(sd_journal_seek_tail(self.j), "seeking to the tail")?;
            // Step onto the last entry so the next `next` moves past it.
            check(sd_journal_previous(self.j), "seeking to the tail")?;
        }
        Ok(())
    }

    /// Right after the entry `cursor` names (or where it would be, if it is gone).
    ///
    /// # Errors
    /// When the cursor is malformed.
    pub fn seek_after(&mut self, cursor: &str) -> io::Result<()> {
        let text =
            CString::new(cursor).map_err(|_| io::Error::other("a NUL byte in the cursor"))?;
        // SAFETY: `j` is open; `text` is NUL-terminated.
        check(
            unsafe { sd_journal_seek_cursor(self.j, text.as_ptr()) },
            "seeking to the saved cursor",
        )?;
        // The seek lands on the entry itself when it still exists: step over it.
        // SAFETY: as above.
        unsafe {
            if check(sd_journal_next(self.j), "reading")? > 0
                && sd_journal_test_cursor(self.j, text.as_ptr()) <= 0
            {
                // It is gone (vacuumed): this is the first entry after it. Step back so
                // the caller's `next` returns it.
                check(sd_journal_previous(self.j), "reading")?;
            }
        }
        Ok(())
    }

    /// Moves to the next entry: `Ok(false)` at the end.
    ///
    /// # Errors
    /// When the entry cannot be read (a corrupt file).
    pub fn advance(&mut self) -> io::Result<bool> {
        // SAFETY: `j` is open.
        check(unsafe { sd_journal_next(self.j) }, "reading the next entry").map(|n| n > 0)
    }

    /// The current entry's wall-clock time, microseconds since the Unix epoch.
    ///
    /// # Errors
    /// When there is no current entry or it is unreadable.
    pub fn realtime_usec(&mut self) -> io::Result<u64> {
        let mut usec = 0;
        // SAFETY: `j` is open; `usec` is a valid out-pointer.
        check(
            unsafe { sd_journal_get_realtime_usec(self.j, &raw mut usec) },
            "reading the entry's time",
        )?;
        Ok(usec)
    }

    /// The current entry's cursor.
    ///
    /// # Errors
    /// When there is no current entry.
    pub fn cursor(&mut self) -> io::Result<String> {
        let mut text = ptr::null_mut();
        // SAFETY: `j` is open; on success `text` is a malloc'd NUL-terminated string we own.
        unsafe {
            check(
                sd_journal_get_cursor(self.j, &raw mut text),
                "reading the cursor",
            )?;
            let owned = CStr::from_ptr(text).to_string_lossy().into_owned();
            free(text.cast());
            Ok(owned)
        }
    }

    /// Calls `each` with every `FIELD=value` of the current entry (value bytes as stored;
    /// fields that cannot be read, e.g. in an unsupported compression, are skipped).
    ///
    /// # Errors
    /// When the entry is corrupt.
    pub fn for_each_field(&mut self, mut each: impl FnMut(&[u8], &[u8])) -> io::Result<()> {
        // SAFETY: `j` is open; each returned pointer and length describe a field that stays
        // valid until the next call into sd-journal, and is only read before that.
        unsafe {
            sd_journal_restart_data(self.j);
            loop {
                let mut data = ptr::null();
                let mut len = 0;
                let rc = sd_journal_enumerate_available_data(self.j, &raw mut data, &raw mut len);
                if check(rc, "reading the entry's fields")? == 0 {
                    return Ok(());
                }
                let field = std::slice::from_raw_parts(data.cast::<u8>(), len);
                if let Some(eq) = field.iter().position(|&b| b == b'=') {
                    each(&field[..eq], &field[eq + 1..]);
                }
            }
        }
    }

    /// Waits up to `timeout` for the journal to change.
    ///
    /// # Errors
    /// When sd-journal cannot watch the files.
    pub fn wait(&mut self, timeout: std::time::Duration) -> io::Result<Change> {
        let usec = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX);
        // SAFETY: `j` is open.
        Ok(
            match check(unsafe { sd_journal_wait(self.j, usec) }, "waiting")? {
                0 => Change::Nothing,
                1 => Change::Appended,
                _ => Change::Invalidated,
            },
        )
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // SAFETY: `j` was opened by us and is closed once.
        unsafe { sd_journal_close(self.j) };
    }
}
