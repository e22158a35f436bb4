//! A panic anywhere in the process (a collector, the bridge, the embedded server) is a bug.
//! It is logged with where it happened and remembered, so the binary exits non-zero even
//! when the task that panicked was not the main one and the rest drained cleanly.

use std::sync::atomic::{AtomicBool, Ordering};

static PANICKED: AtomicBool = AtomicBool::new(false);

/// Exit code of a run in which some task panicked (`EX_SOFTWARE`).
pub const EXIT_CODE: u8 = 70;

/// Installs the hook; the default hook still prints the panic and its backtrace.
pub fn install() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        let thread = std::thread::current();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            %location,
            "A task panicked; this run will exit with code 70."
        );
        default(info);
    }));
}

/// How a binary ends after `outcome`: its error printed, then 70 when any task panicked,
/// else 0 or 1.
pub fn exit_code<T, E: std::fmt::Display>(outcome: &Result<T, E>) -> std::process::ExitCode {
    if let Err(e) = outcome {
        eprintln!("error: {e}");
    }
    if panicked() {
        eprintln!("error: a task panicked (a bug); see the log above");
        return std::process::ExitCode::from(EXIT_CODE);
    }
    if outcome.is_ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Whether any thread or task has panicked since [`install`].
#[must_use]
pub fn panicked() -> bool {
    PANICKED.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_on_another_thread_is_remembered() {
        install();
        let joined = std::thread::spawn(|| panic!("a bug in a task")).join();
        assert!(joined.is_err());
        assert!(panicked());
    }
}
