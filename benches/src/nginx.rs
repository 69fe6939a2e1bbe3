//! nginx as the benchmarks run it: in the foreground, everything it writes (pid, log, temp
//! files) in a directory of its own, and as the app, answering every request with 1 KB so the
//! app costs next to nothing.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context;

/// Writes to `dir` a config that runs `workers` workers in the foreground with `http` as its
/// whole `http {}` block; the config's path.
pub fn write_config(dir: &Path, workers: u32, http: &str) -> anyhow::Result<PathBuf> {
    let temp = dir.join("tmp");
    fs::create_dir_all(&temp).with_context(|| format!("creating {}", temp.display()))?;
    let temp = temp.display();
    let config = format!(
        "user root;
        worker_processes {workers};
        daemon off;
        pid {dir}/nginx.pid;
        error_log {dir}/error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            client_body_temp_path {temp}/body;
            proxy_temp_path {temp}/proxy;
            fastcgi_temp_path {temp}/fastcgi;
            uwsgi_temp_path {temp}/uwsgi;
            scgi_temp_path {temp}/scgi;
            {http}
        }}",
        dir = dir.display(),
    );
    let path = dir.join("nginx.conf");
    fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The `server {}` block of the app: 1 KB for every request on `port`.
pub fn one_kilobyte_app(port: u16) -> String {
    let body = "x".repeat(1024);
    format!(
        "server {{
            listen {port} reuseport;
            keepalive_requests 1000000;
            location / {{ default_type text/plain; return 200 \"{body}\"; }}
        }}"
    )
}
