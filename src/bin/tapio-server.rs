//! tapio-server: parse flags, then serve, or read a store for `stats` and `events`.

use std::process::ExitCode;

use clap::Parser;
use tapio::event::Event;
use tapio::server::{
    Cli, Command, EventQuery, Output, ServeArgs, Server, Store, StoreArgs, incidents,
};
use tokio_util::sync::CancellationToken;

// Events are allocated on collector threads and freed on the pipeline's: glibc's arenas
// serialise that on a lock, mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // mimalloc asks for transparent huge pages, which turn a few MiB of live heap into
    // tens of resident MiB; a node agent is sized by what is resident, not by TLB misses.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
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
        Some(Command::Incidents {
            store,
            since,
            min_impact,
            follow,
            output,
        }) => read(&store, |store| async move {
            incidents(&store, since, min_impact, follow, output)
                .await
                .map_err(|e| tapio::tls::error_chain(&e))
        }),
        None => serve(&cli.serve),
    };
    tapio::panics::exit_code(&outcome)
}

/// Prints the closed groups of `store`; with `follow`, the new ones every 2 s too.
async fn incidents(
    store: &Store,
    since: Option<std::time::Duration>,
    min_impact: f64,
    follow: bool,
    output: Output,
) -> Result<(), tapio::server::store::Error> {
    let start = since.map_or(0, |d| {
        tapio::event::unix_nanos_now()
            .saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    });
    let mut printed = std::collections::HashSet::new();
    loop {
        let groups = store.groups(start, 0, min_impact, 100_000).await?;
        // Closed groups carry their root cause; open ones, derived from events, do not.
        for group in groups.iter().filter(|g| !g.root_cause_event_id.is_empty()) {
            if !printed.insert(group.group_id.clone()) {
                continue;
            }
            let events = store
                .events(EventQuery {
                    group_id: group.group_id.clone(),
                    limit: 100_000,
                    ..EventQuery::default()
                })
                .await?;
            match output {
                Output::Text => {
                    print!("{}", incidents::text(printed.len(), group, &events));
                }
                Output::Json => println!("{}", incidents::json(group, &events)),
            }
        }
        if !follow {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    if output == Output::Text {
        eprintln!("{} incidents", printed.len());
    }
    Ok(())
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
