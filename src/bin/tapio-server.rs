//! tapio-server: parse flags, then serve, or read a store for `stats` and `events`.

use std::process::ExitCode;

use clap::Parser;
use tapio::event::Event;
use tapio::server::{Cli, Command, EventQuery, ServeArgs, Server, Store, StoreArgs};
use tokio_util::sync::CancellationToken;

// Events are allocated on collector threads and freed on the pipeline's: glibc's arenas
// serialise that on a lock, mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tapio::panics::install();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Stats { store }) => read(&store, |store| async move {
            let stats = store
                .stats()
                .await
                .map_err(|e| tapio::tls::error_chain(&e))?;
            println!(
                "{}",
                serde_json::to_string(&stats).map_err(|e| tapio::tls::error_chain(&e))?
            );
            Ok(())
        }),
        Some(Command::Events {
            store,
            types,
            limit,
        }) => read(&store, |store| async move {
            let query = EventQuery {
                types,
                limit,
                ..EventQuery::default()
            };
            let events = store
                .events(query)
                .await
                .map_err(|e| tapio::tls::error_chain(&e))?;
            for event in events {
                let event = Event::try_from(event).map_err(|e| tapio::tls::error_chain(&e))?;
                println!(
                    "{}",
                    serde_json::to_string(&event).map_err(|e| tapio::tls::error_chain(&e))?
                );
            }
            Ok(())
        }),
        None => serve(&cli.serve),
    };
    tapio::panics::exit_code(&outcome)
}

/// Opens the store `args` names (it must exist) and runs `read` on it.
fn read<F, R>(args: &StoreArgs, read: F) -> Result<(), String>
where
    F: FnOnce(Store) -> R,
    R: Future<Output = Result<(), String>>,
{
    let location = args.location().map_err(|e| tapio::tls::error_chain(&e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let store = Store::open_existing(&location)
            .await
            .map_err(|e| tapio::tls::error_chain(&e))?;
        read(store).await
    })
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
        tracing::info!(%addr, store = %server.store_location(), "Listening.");
        server
            .serve(shutdown)
            .await
            .map_err(|e| tapio::tls::error_chain(&e))
    })
}
