//! `remoractl kube-inject`: `istioctl kube-inject` for Remora. Reads manifests (a file or
//! stdin), injects every pod and pod template with the control plane's own engine
//! ([`remora_injector::inject`]), and writes the stream (stdout or a file). Nothing is written
//! unless the whole stream injects: a malformed document or a bad annotation fails the command
//! with the reason, so a pipe into `kubectl apply` never applies half a file.

use std::{
    fs,
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use anyhow::Context;
use clap::Args;
use remora_injector::inject::{inject_manifests, InjectionPolicy, Injector, Values};

#[derive(Args)]
pub struct KubeInjectArgs {
    /// Manifests to inject (`-` for stdin).
    #[arg(short = 'f', long = "filename")]
    filename: PathBuf,
    /// Where to write the injected manifests (default: stdout).
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// The mesh config (`mesh.yaml`, or the `mesh` key of the `istio` ConfigMap); default:
    /// Istio's defaults.
    #[arg(long = "meshConfigFile")]
    mesh_config_file: Option<PathBuf>,
    /// The injection values (the `values` key of the `istio-sidecar-injector` ConfigMap, or
    /// `injection.yaml`); default: Istio's chart defaults.
    #[arg(long = "valuesFile")]
    values_file: Option<PathBuf>,
    /// The injection config (the `config` key of the `istio-sidecar-injector` ConfigMap):
    /// `policy`, `neverInjectSelector`, `alwaysInjectSelector` decide for pods that say nothing.
    #[arg(long = "injectConfigFile")]
    inject_config_file: Option<PathBuf>,
    /// Run the sidecar as a native sidecar (an init container that keeps running), so Jobs
    /// complete and apps start after it is ready.
    #[arg(long = "native-sidecar")]
    native_sidecar: bool,
}

pub fn run(args: KubeInjectArgs) -> anyhow::Result<()> {
    let mut values = match &args.values_file {
        Some(path) => Values::parse(&read(path)?)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{}: invalid injection values", path.display()))?,
        None => Values::default(),
    };
    if args.native_sidecar {
        values.sidecar_injector_webhook.native_sidecars = true;
    }
    let mesh = args.mesh_config_file.as_deref().map(read).transpose()?;
    let mut injector = Injector::new(values, mesh.as_deref())?;
    if let Some(path) = &args.inject_config_file {
        let policy = InjectionPolicy::parse(&read(path)?)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{}: invalid injection config", path.display()))?;
        for note in policy.unused() {
            eprintln!("===> {}: {note}", path.display());
        }
        injector = injector.with_policy(policy);
    }
    let input = if args.filename.as_os_str() == "-" {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        text
    } else {
        read(&args.filename)?
    };
    let injected = inject_manifests(&injector, &input)
        .with_context(|| format!("cannot inject {}", args.filename.display()))?;
    for note in &injected.skipped {
        eprintln!("===> {note}");
    }
    match &args.output {
        Some(path) => {
            fs::write(path, injected.text).with_context(|| format!("writing {}", path.display()))?
        }
        None => io::stdout()
            .write_all(injected.text.as_bytes())
            .context("writing stdout")?,
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
