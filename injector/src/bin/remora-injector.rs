//! `remora-injector`: Remora's control plane (istiod's role): the mesh CA and config discovery
//! for sidecars, reading its config from a source (directories of manifests in local mode).

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use remora_injector::{
    config::DirectorySource,
    server::{self, Options},
    token::LocalTokens,
};

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
        /// A directory of manifests (multi-document YAML) and `mesh.yaml`; repeat for more.
        /// Files are re-read when they change.
        #[arg(long = "config-dir", required = true)]
        config_dirs: Vec<PathBuf>,
        /// CA directory (Istio plug-in certs: ca-cert.pem, ca-key.pem, root-cert.pem,
        /// cert-chain.pem); a new root is created there if it holds none.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Public key (PEM) that verifies service-account tokens minted by the local launcher.
        #[arg(long)]
        token_key: PathBuf,
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
    match Cli::parse().command {
        Command::Serve {
            config_dirs,
            ca_dir,
            token_key,
            grpc_addr,
            http_addr,
            webhook_addr,
        } => {
            let tokens = LocalTokens::load(&token_key).context("loading --token-key")?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(async {
                server::run(
                    Options {
                        grpc: grpc_addr,
                        http: http_addr,
                        webhook: webhook_addr,
                        ca_dir,
                    },
                    Box::new(DirectorySource::new(config_dirs)),
                    tokens,
                )
                .await
                .context("control plane")
            })
        }
    }
}
