//! tapio-server: parse flags, then serve, or read a store for `stats` and `events`.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tapio::event::Event;
use tapio::server::{Cli, Command, EventQuery, ServeArgs, Server, store};
use tokio_util::sync::CancellationToken;

// Events are allocated on collector threads and freed on the pipeline's: glibc's arenas
// serialise that on a lock, mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tapio::panics::install();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Stats { data_dir }) => stats(&data_dir),
        Some(Command::Events {
            data_dir,
            types,
            limit,
        }) => events(&data_dir, types, limit),
        None => serve(&cli.serve),
    };
    tapio::panics::exit_code(&outcome)
}

fn stats(dir: &Path) -> Result<(), String> {
    require_store(dir)?;
    let stats = store::stats_in(dir).map_err(|e| tapio::tls::error_chain(&e))?;
    println!(
        "{}",
        serde_json::to_string(&stats).map_err(|e| tapio::tls::error_chain(&e))?
    );
    Ok(())
}

fn events(dir: &Path, types: Vec<String>, limit: u32) -> Result<(), String> {
    require_store(dir)?;
    let query = EventQuery {
        types,
        limit,
        ..EventQuery::default()
    };
    for event in store::events_in(dir, &query).map_err(|e| tapio::tls::error_chain(&e))? {
        let event = Event::try_from(event).map_err(|e| tapio::tls::error_chain(&e))?;
        println!(
            "{}",
            serde_json::to_string(&event).map_err(|e| tapio::tls::error_chain(&e))?
        );
    }
    Ok(())
}

fn require_store(dir: &Path) -> Result<(), String> {
    if dir.join("events.db").is_file() {
        Ok(())
    } else {
        Err(format!(
            "{}: no tapio-server store here (events.db is missing)",
            dir.display()
        ))
    }
}

fn serve(args: &ServeArgs) -> Result<(), String> {
    tapio::agent::init_logging(&args.log_level);
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tapio::agent::cancel_on_signals(shutdown.clone())
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        let server = Server::bind(args)
            .await
            .map_err(|e| tapio::tls::error_chain(&e))?;
        let addr = server
            .local_addr()
            .map_err(|e| tapio::tls::error_chain(&e))?;
        tracing::info!(%addr, data_dir = %args.data_dir.display(), "Listening.");
        server
            .serve(shutdown)
            .await
            .map_err(|e| tapio::tls::error_chain(&e))
    })
}
