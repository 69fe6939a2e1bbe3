//! `fake-apiserver`: the end-to-end tests' stand-in for a Kubernetes API server (see
//! `remora_e2e::apiserver`).

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use remora_e2e::apiserver::{self, Options};

#[derive(Parser)]
#[command(
    name = "fake-apiserver",
    about = "A small fake Kubernetes API server for tests"
)]
struct Cli {
    /// Address to serve plain HTTP on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// A directory of manifests whose objects are served (re-read when it changes); repeat.
    #[arg(long = "config-dir")]
    config_dirs: Vec<PathBuf>,
    /// The public key (PEM) of the local launcher's service-account tokens, for TokenReview.
    #[arg(long)]
    token_key: PathBuf,
    /// A CA directory (Istio's plug-in layout) served as Secret istio-system/cacerts.
    #[arg(long)]
    plugged_in_ca: Option<PathBuf>,
    /// Write each kind of request made (`VERB group/resource`) to this file.
    #[arg(long)]
    audit: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(apiserver::run(Options {
        listen: cli.listen,
        dirs: cli.config_dirs,
        token_key: cli.token_key,
        plugged_in_ca: cli.plugged_in_ca,
        audit: cli.audit,
    }))
}
