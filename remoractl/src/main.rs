//! `remoractl`: the operator's command line for Remora.
//!
//! `remoractl ca` makes a mesh root and workload certificates with the control plane's own CA
//! code, so they are what the control plane would issue; `remoractl authz check` decides a
//! request with the sidecar's own policy engine, `remoractl route check` routes one with its
//! own router; `remoractl kube-inject` injects manifests with the control plane's own injection
//! engine; `remoractl crds` prints the CRDs the control plane's kinds are served by;
//! `remoractl local` drives the local cluster
//! launcher (`remora-local`). It is a crate of its own so that the control plane's
//! crate and image carry neither this command nor the launcher behind it.

mod args;
mod authz;
mod kube_inject;
mod local;
mod route;

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use remora_api::{SpiffeId, DEFAULT_TRUST_DOMAIN};
use remora_injector::ca::{Authority, DEFAULT_WORKLOAD_TTL};

#[derive(Parser)]
#[command(name = "remoractl", version, about = "Operate a Remora service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Local certificate authority: make a mesh root and workload certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// AuthorizationPolicy: decide a request as a workload's sidecar would, and explain why.
    #[command(subcommand)]
    Authz(authz::AuthzCommand),
    /// HTTPRoute / VirtualService: route a request as a workload's sidecar would, and explain it.
    #[command(subcommand)]
    Route(route::RouteCommand),
    /// Add the sidecar to every pod in Kubernetes manifests, as the injection webhook would.
    KubeInject(kube_inject::KubeInjectArgs),
    /// A local cluster on this machine: pods as network namespaces, no Kubernetes (needs root).
    #[command(subcommand)]
    Local(local::LocalCommand),
    /// Print the CustomResourceDefinitions of the Istio kinds Remora reads (YAML), for a
    /// cluster without Istio: what `manifests/crds.yaml` holds.
    Crds,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a new self-signed mesh root CA in DIR (ca-cert.pem, ca-key.pem, root-cert.pem).
    Init {
        dir: PathBuf,
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
    },
    /// Issue a workload certificate for spiffe://<trust-domain>/ns/<NS>/sa/<SA> into --out
    /// (cert-chain.pem, key.pem, root-cert.pem).
    Issue {
        /// Directory of the signing CA (as made by `remoractl ca init`, or Istio plug-in certs).
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        ns: String,
        #[arg(long)]
        sa: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Certificate lifetime in seconds.
        #[arg(long, default_value_t = DEFAULT_WORKLOAD_TTL.as_secs())]
        ttl_secs: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Local(command) => return local::run(command),
        Command::Authz(command) => return authz::run(command),
        Command::Route(command) => return route::run(command),
        Command::KubeInject(args) => return kube_inject::run(args),
        Command::Crds => print!("{}", remora_injector::crds::crds_yaml()?),
        Command::Ca(CaCommand::Init { dir, trust_domain }) => {
            let ca = Authority::generate(&trust_domain)?;
            ca.save_new(&dir)?;
            println!(
                "created mesh root CA for {trust_domain} in {}",
                dir.display()
            );
        }
        Command::Ca(CaCommand::Issue {
            ca,
            ns,
            sa,
            out,
            trust_domain,
            ttl_secs,
        }) => {
            let id = SpiffeId::new(&trust_domain, &ns, &sa).context("--ns/--sa/--trust-domain")?;
            let authority = Authority::load(&ca)
                .with_context(|| format!("loading the CA in {}", ca.display()))?;
            authority
                .issue(&id, Duration::from_secs(ttl_secs))?
                .save(&out)?;
            println!("issued {id} into {}", out.display());
        }
    }
    Ok(())
}
