//! Packet capture on the mesh bridge with tcpdump, to check what actually crossed the wire.

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::netns::{Netns, Process};

pub struct Capture {
    process: Process,
    file: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// Starts tcpdump on `br0` in `switch` and waits until it is listening.
    pub fn start(switch: &Netns, file: &Path) -> anyhow::Result<Self> {
        let file_arg = file.to_string_lossy().into_owned();
        let cmd = switch.command(&[
            "tcpdump",
            "-i",
            "br0",
            "-U",
            "--immediate-mode",
            "-s",
            "0",
            "-w",
            &file_arg,
        ]);
        let log = file.with_extension("log");
        let mut process = Process::spawn("tcpdump", cmd, &log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process.log().contains("listening on") {
            if let Some(status) = process.exited() {
                bail!("tcpdump exited ({status}): {}", process.log());
            }
            if Instant::now() > deadline {
                bail!("tcpdump did not start: {}", process.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            process,
            file: file.to_owned(),
            log,
        })
    }

    /// Stops the capture and returns the pcap file's bytes.
    pub fn finish(mut self) -> anyhow::Result<Vec<u8>> {
        // Give packets in flight a moment to be written.
        thread::sleep(Duration::from_millis(200));
        self.process.stop();
        let bytes = std::fs::read(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        let _ = std::fs::remove_file(&self.log);
        Ok(bytes)
    }
}
