//! `remora-injector`: Remora's control plane (istiod's role): the mesh CA and config discovery
//! for sidecars, reading its config from a source (directories of manifests in local mode, the
//! Kubernetes API in a cluster).

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use remora_injector::{
    config::{DirectorySource, KubernetesSource},
    server::{self, CaStore, Options},
    token::{LocalTokens, TokenReviews},
};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (before `main`). A control plane's memory comes in
/// bursts (a catalog built while the old one is still held, a push's encoded parts) from many
/// blocking threads; with jemalloc's defaults each of those threads' arenas keeps its own
/// freed pages for 10 s, and only purges them when that arena is next used. One arena, a
/// background thread that purges, and freed pages given back after a second keep the
/// resident set close to what is live (the scale bench at 10,000 pods: 257–274 MiB at peak
/// rather than 322 MiB, pushes as fast). `_RJEM_MALLOC_CONF` in the environment still overrides these.
#[cfg(feature = "jemalloc")]
#[allow(unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 70] =
    b"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(name = "remora-injector", version, about = "Remora control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CA and config discovery (gRPC over TLS), the injection webhook (HTTPS) and
    /// metrics.
    Serve {
        /// Run in a Kubernetes cluster: config, CA material and token checks come from the
        /// API server (in-cluster config, else KUBECONFIG), as istiod's do.
        #[arg(long, conflicts_with_all = ["config_dirs", "ca_dir", "token_key"])]
        kubernetes: bool,
        /// The control plane's namespace in a cluster (istiod reads the same variable): only
        /// `istio-system`, whose name the mesh config's ConfigMap and the serving certificate
        /// are read and made for.
        #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
        namespace: String,
        /// In a cluster, the MutatingWebhookConfiguration whose `caBundle` is kept at the mesh
        /// root.
        #[arg(long, default_value = "istio-sidecar-injector")]
        webhook_configuration: String,
        /// In a cluster, keep a condition in every Istio object's `status` saying whether the
        /// control plane took it and, if not, why (istiod's variable of the same name).
        #[arg(long, env = "PILOT_ENABLE_STATUS", requires = "kubernetes")]
        write_status: bool,
        /// A directory of manifests (multi-document YAML) and `mesh.yaml`; repeat for more.
        /// Files are re-read when they change.
        #[arg(long = "config-dir", required_unless_present = "kubernetes")]
        config_dirs: Vec<PathBuf>,
        /// CA directory (Istio plug-in certs: ca-cert.pem, ca-key.pem, root-cert.pem,
        /// cert-chain.pem); a new root is created there if it holds none.
        #[arg(long, required_unless_present = "kubernetes")]
        ca_dir: Option<PathBuf>,
        /// Public key (PEM) that verifies service-account tokens minted by the local launcher.
        #[arg(long, required_unless_present = "kubernetes")]
        token_key: Option<PathBuf>,
        /// gRPC (CA and discovery) listen address.
        #[arg(long, default_value = "0.0.0.0:15012")]
        grpc_addr: SocketAddr,
        /// Metrics and readiness listen address.
        #[arg(long, default_value = "0.0.0.0:15014")]
        http_addr: SocketAddr,
        /// Sidecar injection webhook (HTTPS) listen address.
        #[arg(long, default_value = "0.0.0.0:15017")]
        webhook_addr: SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve {
        kubernetes,
        namespace,
        webhook_configuration,
        write_status,
        config_dirs,
        ca_dir,
        token_key,
        grpc_addr,
        http_addr,
        webhook_addr,
    } = Cli::parse().command;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let listen = |ca| Options {
        grpc: grpc_addr,
        http: http_addr,
        webhook: webhook_addr,
        ca,
    };
    runtime.block_on(async {
        match (kubernetes, ca_dir, token_key) {
            (true, _, _) => {
                anyhow::ensure!(
                    namespace == "istio-system",
                    "--namespace (POD_NAMESPACE) {namespace:?}: the control plane runs in istio-system"
                );
                let client = kube::Client::try_default().await.context(
                    "connecting to the Kubernetes API (in-cluster config or KUBECONFIG)",
                )?;
                let mut source = KubernetesSource::new(
                    client.clone(),
                    &namespace,
                    std::env::var("POD_NAME").ok(),
                );
                if write_status {
                    source = source.writing_status();
                }
                let ca = CaStore::Cluster {
                    client: client.clone(),
                    namespace,
                    webhook: webhook_configuration,
                };
                server::run(listen(ca), Box::new(source), TokenReviews::new(client)).await
            }
            (false, Some(ca_dir), Some(token_key)) => {
                let tokens = LocalTokens::load(&token_key).context("loading --token-key")?;
                let source = DirectorySource::new(config_dirs);
                server::run(listen(CaStore::Directory(ca_dir)), Box::new(source), tokens).await
            }
            (false, _, _) => {
                anyhow::bail!("--ca-dir and --token-key are needed without --kubernetes")
            }
        }
        .context("control plane")
    })
}
