//! A thin main: configuration, logging, run until SIGTERM/SIGINT, drain.

use std::process::ExitCode;

use dtr_proxy::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// jemalloc (feature `jemalloc`, the default): its thread caches make the many small,
/// short-lived allocations of a request cheaper than glibc's malloc does; see bench/README.md.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (`_RJEM_MALLOC_CONF` in the environment overrides
/// them). Every request on a busy connection takes a fresh 8 KiB read buffer: hyper reads
/// ahead into a new one while the request's head, which shares the old one, is still in
/// flight, and the OP connection's likewise while the answer streams out. With many
/// connections busy at once these outnumber jemalloc's default thread cache for the size
/// (20), and most allocations went to the arena; so the cache keeps up to 128 of them (1 MiB
/// at most) and trims itself every 4 MiB allocated rather than every 64 KiB. Under load this
/// is about 7 % fewer instructions per pass-through request (bench/README.md).
///
/// The same holds one size down: each request in flight has its answer's future in a box of
/// 0.5–4 KiB (a DTR token request's is 3.8 KiB, a pass-through's pool call 0.7 KiB), and a slab
/// of such sizes holds only a few, so the default cache (20) made a pending poll under load
/// refill and release slabs from the arena: 2 300 instructions per poll (3 %). Up to 64 of
/// each size are kept (at most 256 KiB for the largest).
///
/// The trimming runs every 16 MiB allocated (at about 70 KiB a request under load, every 240
/// requests): each run walks the cache, and every 4 MiB it cost 400 instructions a request
/// (1.2 % of a pass-through). The caches' bounds above are unchanged, and an idle process
/// allocates nothing, so this changes how soon, not how much.
#[cfg(feature = "jemalloc")]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf =
    MallocConf(c"tcache_ncached_max:1025-4096:64|4097-16384:128,tcache_gc_incr_bytes:16777216".as_ptr());

/// A C string pointer that jemalloc reads as its `malloc_conf`.
#[cfg(feature = "jemalloc")]
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points to a string literal, which is immutable and lives for the whole program.
#[cfg(feature = "jemalloc")]
unsafe impl Sync for MallocConf {}

const USAGE: &str = "usage: dtr-proxy [check-config | --version]
  (no argument)  serve, configured by DTR_* environment variables and DTR_CONFIG
  check-config   validate the configuration and print the effective settings (secrets
                 redacted); exit 2 on errors. For init containers and CI.
  --version      print the version
";

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    match command.as_deref() {
        None | Some("serve") => {}
        Some("check-config") => return check_config(),
        Some("--version" | "-V") => {
            println!("dtr-proxy {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprint!("dtr-proxy: unknown command {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_env(std::env::vars()) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("dtr-proxy: {errors}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    // One worker: the single-threaded scheduler, which has no work stealing and no cross-thread
    // wake-ups to pay for on every request.
    let mut builder = match config.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if config.worker_threads > 1 {
        builder.worker_threads(config.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dtr-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

/// `dtr-proxy check-config`: every error at once (exit 2), or the effective settings.
fn check_config() -> ExitCode {
    match Config::from_env(std::env::vars()) {
        Ok(config) => {
            let effective = config.effective();
            println!("{}", serde_json::to_string_pretty(&effective).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprint!("dtr-proxy: {errors}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal, never into a log pipeline.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(config: Config) -> ExitCode {
    if matches!(config.store, dtr_proxy::config::StoreSettings::Embedded) {
        tracing::warn!(
            "embedded store: run a single replica only; state is lost on restart (set DTR_REDIS_URL for production)"
        );
    }
    if config.webhook_secret.is_none() {
        tracing::warn!("DTR_WEBHOOK_SECRET is not set: the completion webhook refuses every call");
    }
    let drain_delay = config.shutdown_delay;
    // Listen for signals before serving: a SIGTERM that arrives as soon as /healthz answers
    // must drain, not kill.
    let stop = match StopSignal::install() {
        Ok(stop) => stop,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let running = match dtr_proxy::start(config).await {
        Ok(running) => running,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    stop.wait().await;
    // Unready first, so endpoints stop routing to us, then stop accepting and drain.
    running.begin_draining();
    tracing::info!(delay = ?drain_delay, "shutting down");
    tokio::time::sleep(drain_delay).await;
    running.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal).
struct StopSignal {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
