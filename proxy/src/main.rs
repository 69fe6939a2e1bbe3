//! `remora-proxy`: the Remora sidecar's binary edge: flags, logging, the runtime, signals. What
//! it runs is the library's [`app::run`].

use std::{io::IsTerminal, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use remora_api::Bootstrap;
use remora_proxy::{admin, app};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (before `main`). With its defaults, pages a burst
/// freed (connections that came and went, a config push put together) stay in the process for
/// as long as nothing allocates again, so an idle sidecar keeps its busiest moment's size. One
/// background thread gives freed pages back after about a second (at 10,000 pods, the memory
/// a full push leaves behind drops from 54 to 27 MiB). Threads cache freed blocks of up to
/// 4 KiB only (jemalloc's default is 32 KiB): the connection buffers a burst of connections
/// grew would otherwise stay cached per thread, where no purge reaches them. Blocks of 4 and
/// 8 KiB (a connection's task, hyper's buffers) are carved eight and four to a 32 KiB slab
/// instead of one to a slab of their own: jemalloc never frees the record it made of a slab,
/// so a burst's slabs outlive it; after 2,000 abandoned requests RSS settled 24% above its
/// level before with one block to a slab, 12% with these (release build, 30 s on).
/// `_RJEM_MALLOC_CONF` in the environment still overrides these.
#[cfg(feature = "jemalloc")]
#[allow(unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 136] =
    b"tcache_max:4096,background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0,slab_sizes:4096-4096:8|8192-8192:8\0";

#[derive(Parser)]
#[command(name = "remora-proxy", version, about = "Remora sidecar proxy")]
struct Args {
    /// Bootstrap file (YAML): pod metadata, identity, and a control-plane address or a static
    /// snapshot. Without it the sidecar bootstraps as Istio's injected one does, from `POD_NAME`,
    /// `POD_NAMESPACE`, `SERVICE_ACCOUNT`, `INSTANCE_IP`, `CA_ADDR`, `SECRET_TTL` and the token and
    /// root certificate mounted at Istio's paths.
    #[arg(long, env = "REMORA_CONFIG")]
    config: Option<PathBuf>,
    /// Worker threads (Istio's `concurrency`, as the injection template passes it; 0: one per
    /// CPU). Overrides the bootstrap's `concurrency`; default 1.
    #[arg(long)]
    concurrency: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let log = init_logging();
    // Every sidecar runs as uid 1337: without this, one sidecar could read another's private
    // key from its memory, or its token through `/proc/<pid>/root`, as the same user.
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(%error, "cannot make the process non-dumpable");
    }
    let args = Args::parse();
    let mut bootstrap = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Bootstrap::from_yaml(&text)
                .with_context(|| format!("invalid bootstrap {}", path.display()))?
        }
        None => Bootstrap::from_env(|name| std::env::var(name).ok())
            .context("invalid sidecar environment")?,
    };
    if args.concurrency.is_some() {
        bootstrap.concurrency = args.concurrency;
    }
    // Istio's `concurrency`: worker threads. One runs everything on this thread, with no
    // cross-thread wake-ups, which costs the least CPU per request for a sidecar.
    let runtime = match bootstrap.concurrency() {
        1 => tokio::runtime::Builder::new_current_thread(),
        workers => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
    }
    .enable_all()
    .build()
    .context("starting the runtime")?;
    runtime.block_on(app::run(bootstrap, shutdown_signal(), log))
}

/// Logs to stderr with the filter from `RUST_LOG` (default `info`), changeable at run time
/// through the admin endpoint.
fn init_logging() -> admin::LogControl {
    use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .init();
    std::sync::Arc::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid log filter: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the proxy");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
