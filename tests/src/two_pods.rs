//! The skeleton's scenario, shared by the e2e tests and the README demo: httpbin (and a TCP
//! echo server) in one pod, a client pod running plain curl, a sidecar in front of each.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use remora_api::SpiffeId;

use crate::{CertOrigin, Mesh, Pod, SidecarOptions, TRUST_DOMAIN};

pub const HTTPBIN_PORT: u16 = 8000;
pub const ECHO_PORT: u16 = 9000;

/// Path of a helper script in `tests/fixtures/`.
pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// How the two sidecars are set up; the default is a healthy mesh.
#[derive(Clone, Debug)]
pub struct TwoPodsOptions {
    /// The service account the server pod really runs as (the client always expects `httpbin`).
    pub server_sa: String,
    pub server_cert: CertOrigin,
    pub client_cert: CertOrigin,
    /// More apps for the server pod; their ports join the client's snapshot.
    pub extra_apps: Vec<App>,
    /// Give both pods an IPv6 address too (apps listen on both families).
    pub dual_stack: bool,
}

/// An app process and the port it listens on.
#[derive(Clone, Debug)]
pub struct App {
    pub name: String,
    pub argv: Vec<String>,
    pub port: u16,
}

impl App {
    /// `python3 tests/fixtures/<script> <args...>` listening on `port`.
    pub fn fixture(script: &str, port: u16, args: &[&str]) -> Self {
        let mut argv = vec!["python3".to_owned(), fixture(script)];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        Self {
            name: script.trim_end_matches(".py").to_owned(),
            argv,
            port,
        }
    }
}

impl Default for TwoPodsOptions {
    fn default() -> Self {
        Self {
            server_sa: "httpbin".to_owned(),
            server_cert: CertOrigin::Mesh,
            client_cert: CertOrigin::Mesh,
            extra_apps: Vec::new(),
            dual_stack: false,
        }
    }
}

pub struct TwoPods {
    pub mesh: Mesh,
    /// Runs httpbin on 8000 and an echo server on 9000, as service account `server_sa`.
    pub server: Pod,
    /// Runs nothing but what a test execs in it, as service account `sleep`.
    pub client: Pod,
}

/// A response as plain curl saw it.
#[derive(Debug)]
pub struct CurlResult {
    /// 0 when curl got no HTTP response at all.
    pub status: u16,
    pub body: String,
}

impl CurlResult {
    /// What curl printed with `-w "\n%{http_code}"`: the body, then the status on a line of
    /// its own.
    pub fn from_output(out: &std::process::Output) -> Self {
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        Self {
            status: code.trim().parse().unwrap_or(0),
            body: body.to_owned(),
        }
    }
}

impl TwoPods {
    pub fn start(name: &str, options: &TwoPodsOptions) -> anyhow::Result<Self> {
        let mesh = if options.dual_stack {
            Mesh::new_dual_stack(name)?
        } else {
            Mesh::new(name)?
        };
        let server = mesh.add_pod("httpbin", "default", &options.server_sa)?;
        let client = mesh.add_pod("sleep", "default", "sleep")?;
        let access_log = server.dir.join("access.log").to_string_lossy().into_owned();
        mesh.start_app(
            &server,
            "httpbin",
            &[
                "gunicorn",
                "-b",
                if options.dual_stack {
                    "[::]:8000"
                } else {
                    "0.0.0.0:8000"
                },
                "-w",
                "1",
                "--threads",
                "16",
                "--access-logfile",
                &access_log,
                "httpbin:app",
            ],
            HTTPBIN_PORT,
        )?;
        mesh.start_app(
            &server,
            "echo",
            &[
                "python3",
                &fixture("echo_server.py"),
                &ECHO_PORT.to_string(),
            ],
            ECHO_PORT,
        )?;
        for app in &options.extra_apps {
            let argv: Vec<&str> = app.argv.iter().map(String::as_str).collect();
            mesh.start_app(&server, &app.name, &argv, app.port)?;
        }
        mesh.start_sidecar(
            &server,
            &SidecarOptions {
                endpoints: vec![],
                cert: options.server_cert,
                ..SidecarOptions::default()
            },
        )?;
        let expected = SpiffeId::new(TRUST_DOMAIN, "default", "httpbin")?;
        let server_ips: Vec<IpAddr> = std::iter::once(IpAddr::V4(server.ip))
            .chain(server.ip6.map(IpAddr::V6))
            .collect();
        mesh.start_sidecar(
            &client,
            &SidecarOptions {
                endpoints: [HTTPBIN_PORT, ECHO_PORT]
                    .into_iter()
                    .chain(options.extra_apps.iter().map(|app| app.port))
                    .flat_map(|port| server_ips.iter().map(move |ip| SocketAddr::new(*ip, port)))
                    .map(|address| (address, expected.clone()))
                    .collect(),
                cert: options.client_cert,
                ..SidecarOptions::default()
            },
        )?;
        Ok(Self {
            mesh,
            server,
            client,
        })
    }

    /// `curl http://<server>:8000<path>` from `from`, with extra `-H` headers.
    pub fn curl(&self, from: &Pod, path: &str, headers: &[&str]) -> anyhow::Result<CurlResult> {
        self.curl_ip(from, IpAddr::V4(self.server.ip), path, headers)
    }

    /// Like [`TwoPods::curl`], to one of the server's addresses (IPv4 or IPv6).
    pub fn curl_ip(
        &self,
        from: &Pod,
        ip: IpAddr,
        path: &str,
        headers: &[&str],
    ) -> anyhow::Result<CurlResult> {
        let url = format!("http://{}{path}", SocketAddr::new(ip, HTTPBIN_PORT));
        let mut argv = vec!["curl", "-sS", "-m", "10", "-w", "\n%{http_code}"];
        for header in headers {
            argv.extend(["-H", header]);
        }
        argv.push(&url);
        Ok(CurlResult::from_output(&from.exec(&argv)?))
    }

    /// httpbin's access log: every request that reached the app.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.server.dir.join("access.log")).unwrap_or_default()
    }
}
