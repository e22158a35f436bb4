//! tapio-collector: parse flags, load the config, run the agent.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tapio::config::{self, Cli, Command, Config, RunArgs};
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
    match cli.command {
        Some(Command::Validate { config }) => validate(&config),
        Some(Command::Health { url }) => health(&url),
        None => run(&cli.run),
    }
}

/// One plain-HTTP GET of `url`: success on `200`.
fn health(url: &str) -> ExitCode {
    use std::io::{Read as _, Write as _};
    let Some(rest) = url.strip_prefix("http://") else {
        eprintln!("error: {url}: only http:// URLs");
        return ExitCode::FAILURE;
    };
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let answer = std::net::TcpStream::connect(host).and_then(|mut stream| {
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        // One write: a server that answers after the first read must see it whole.
        let request = format!(
            "GET /{} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            path.trim_start_matches('/')
        );
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    });
    match answer {
        Ok(response) if response.starts_with("HTTP/1.1 200") => {
            print!("{}", response.split_once("\r\n\r\n").map_or("", |(_, b)| b));
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!("unhealthy: {}", response.lines().next().unwrap_or_default());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(path: &Path) -> ExitCode {
    let config = match Config::from_file(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match config.validate() {
        Ok(()) => {
            println!("{}: valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_problems(&e, &path.display().to_string());
            ExitCode::FAILURE
        }
    }
}

fn print_problems(error: &config::Error, origin: &str) {
    match error {
        config::Error::Invalid(problems) => {
            for problem in problems {
                eprintln!("error: {origin}: {problem}");
            }
        }
        other => eprintln!("error: {other}"),
    }
}

fn run(args: &RunArgs) -> ExitCode {
    let config = match args.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let origin = args
        .config
        .as_ref()
        .map_or_else(|| "flags".to_owned(), |p| p.display().to_string());
    if let Err(e) = config.validate() {
        print_problems(&e, &origin);
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.orchestrator.workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    {
        // The agent's own tracing exports from a task of this runtime.
        let _inside = runtime.enter();
        let node = config.node_name();
        let traced = (config.otel.self_tracing
            && !config.otel.endpoint.eq_ignore_ascii_case("none"))
        .then_some((config.otel.endpoint.as_str(), node.as_str()));
        tapio::agent::init_logging_traced(&config.orchestrator.log_level, traced);
    }
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tapio::agent::cancel_on_signals(shutdown.clone())
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        let reload = {
            let args = args.clone();
            tapio::agent::Reload {
                watch: args.watch_config.then(|| args.config.clone()).flatten(),
                load: Box::new(move || args.load()),
            }
        };
        tapio::agent::run_reloadable(config, shutdown, Some(reload))
            .await
            .map_err(|e| tapio::tls::error_chain(&e))
    });
    tapio::panics::exit_code(&outcome)
}
