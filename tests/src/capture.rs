//! Packet capture with tcpdump, to check what actually crossed the wire: on the mesh bridge
//! (between pods), or on one interface inside a pod (its loopback shows what the sidecar
//! handed to the app).

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::Context;

use remora_local::{run_checked, LocalPod, Netns, Process};

pub struct Capture {
    process: Process,
    file: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// Starts tcpdump on `br0` in `switch` and waits until it is listening.
    pub fn start(switch: &Netns, file: &Path) -> anyhow::Result<Self> {
        Self::spawn(|argv| switch.command(argv), "br0", None, file)
    }

    /// Starts tcpdump on `interface` inside `pod`, keeping what matches `filter`.
    pub fn in_pod(
        pod: &LocalPod,
        interface: &str,
        filter: &str,
        file: &Path,
    ) -> anyhow::Result<Self> {
        Self::spawn(|argv| pod.command(argv), interface, Some(filter), file)
    }

    fn spawn(
        command: impl FnOnce(&[&str]) -> std::process::Command,
        interface: &str,
        filter: Option<&str>,
        file: &Path,
    ) -> anyhow::Result<Self> {
        let file_arg = file.to_string_lossy().into_owned();
        let mut argv = vec![
            "tcpdump",
            "-i",
            interface,
            "-U",
            "--immediate-mode",
            "-s",
            "0",
            "-w",
            &file_arg,
        ];
        argv.extend(filter);
        let log = file.with_extension("log");
        let mut process = Process::spawn("tcpdump", command(&argv), &log)?;
        process.wait_until(
            &format!("waiting for tcpdump to listen on {interface}"),
            Duration::from_secs(10),
            || fs::read_to_string(&log).is_ok_and(|text| text.contains("listening on")),
        )?;
        Ok(Self {
            process,
            file: file.to_owned(),
            log,
        })
    }

    /// Stops the capture and returns what it recorded.
    pub fn finish(mut self) -> anyhow::Result<Pcap> {
        // Give packets in flight a moment to be written.
        thread::sleep(Duration::from_millis(200));
        self.process.stop();
        let bytes = std::fs::read(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        let _ = std::fs::remove_file(&self.log);
        Ok(Pcap {
            path: self.file.clone(),
            bytes,
        })
    }
}

/// A finished capture.
pub struct Pcap {
    path: PathBuf,
    pub bytes: Vec<u8>,
}

impl Pcap {
    /// Whether `needle` appears anywhere in the captured bytes (payloads included).
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.bytes.windows(needle.len()).any(|w| w == needle)
    }

    /// Whether a TLS ClientHello crossed: a handshake record header (type 22, version 3.x)
    /// followed by handshake type 1.
    pub fn has_tls_client_hello(&self) -> bool {
        self.bytes
            .windows(6)
            .any(|w| w[0] == 0x16 && w[1] == 0x03 && (w[2] == 0x01 || w[2] == 0x03) && w[5] == 0x01)
    }

    /// How many packets match the tcpdump `filter`.
    pub fn count(&self, filter: &str) -> anyhow::Result<usize> {
        let path = self.path.to_string_lossy();
        let out = run_checked(
            std::process::Command::new("tcpdump")
                .args(["-nn", "-r", &path])
                .arg(filter),
        )?;
        Ok(out
            .stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count())
    }

    /// Connections opened: TCP SYNs that are not SYN-ACKs, matching `filter` as well.
    pub fn connections(&self, filter: &str) -> anyhow::Result<usize> {
        // tcpdump's `tcp[...]` only reads IPv4; for IPv6 (no extension headers) the TCP flags
        // byte is at 40 + 13.
        self.count(&format!(
            "((ip and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn) \
             or (ip6 and ip6[6] == 6 and ip6[53] & 0x12 == 0x02)) and ({filter})"
        ))
    }
}
