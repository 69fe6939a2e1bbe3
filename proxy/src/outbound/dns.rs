//! The addresses of names the snapshot asks this sidecar to resolve (ServiceEntry `resolution:
//! DNS` and `DNS_ROUND_ROBIN`), kept fresh. As Envoy does for its DNS clusters, the sidecar
//! resolves them itself, with the pod's own resolver (its `/etc/hosts` and `resolv.conf`), so a
//! name means what it means to the app.
//!
//! Each name is resolved by a task of its own while some snapshot lists it: once before the
//! snapshot's balancers are built (so a new entry's first request finds its endpoints, as
//! Envoy warms a cluster before using it), then every [`REFRESH`]. A failed lookup keeps the
//! addresses the name had and is tried again sooner. A change wakes whoever follows
//! [`Dns::changes`], which hands the balancers their new endpoints.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Weak},
    time::Duration,
};

use parking_lot::Mutex;
use remora_api::DnsName;
use tokio::{sync::watch, task::AbortHandle};

/// How often a name is resolved again (the usual cluster DNS cache time).
const REFRESH: Duration = Duration::from_secs(30);
/// How soon a failed lookup is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// How long a snapshot waits for the first answer of a name new to it before it is used
/// anyway (its backend then has no endpoint until the answer comes).
const FIRST_ANSWER: Duration = Duration::from_secs(5);

/// The names in use and what they resolved to.
pub struct Dns {
    names: Mutex<HashMap<DnsName, Tracked>>,
    changed: watch::Sender<()>,
}

struct Tracked {
    addresses: Arc<[IpAddr]>,
    task: AbortHandle,
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            names: Mutex::new(HashMap::new()),
            changed: watch::channel(()).0,
        }
    }
}

impl Dns {
    /// What `name` resolved to last; empty before its first answer or once it is forgotten.
    pub fn addresses(&self, name: &DnsName) -> Arc<[IpAddr]> {
        self.names
            .lock()
            .get(name)
            .map_or_else(|| Arc::from([]), |tracked| tracked.addresses.clone())
    }

    /// Notified whenever a name's addresses change.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Resolves exactly `wanted` from now on: names new to it are looked up (and waited for,
    /// up to [`FIRST_ANSWER`]), names no longer in it forgotten.
    pub async fn track<'a>(self: &Arc<Self>, wanted: impl Iterator<Item = &'a DnsName>) {
        let wanted: HashMap<&DnsName, ()> = wanted.map(|name| (name, ())).collect();
        let mut first_answers = Vec::new();
        {
            let mut names = self.names.lock();
            names.retain(|name, tracked| {
                let keep = wanted.contains_key(name);
                if !keep {
                    tracked.task.abort();
                }
                keep
            });
            for name in wanted.into_keys() {
                if names.contains_key(name) {
                    continue;
                }
                let (answered, first) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(refresh(Arc::downgrade(self), name.clone(), answered));
                names.insert(
                    name.clone(),
                    Tracked {
                        addresses: Arc::from([]),
                        task: task.abort_handle(),
                    },
                );
                first_answers.push(first);
            }
        }
        for first in first_answers {
            let _ = tokio::time::timeout(FIRST_ANSWER, first).await;
        }
    }

    /// Records `addresses` for `name` if it is still tracked; whether they changed.
    fn store(&self, name: &DnsName, addresses: Vec<IpAddr>) -> bool {
        let mut names = self.names.lock();
        match names.get_mut(name) {
            Some(tracked) if *tracked.addresses != addresses[..] => {
                tracked.addresses = Arc::from(addresses);
                true
            }
            _ => false,
        }
    }
}

/// Resolves `name` until it is forgotten, reporting its first answer (or failure) on `answered`.
async fn refresh(dns: Weak<Dns>, name: DnsName, answered: tokio::sync::oneshot::Sender<()>) {
    let mut answered = Some(answered);
    // A name that keeps failing is reported once, not on every retry.
    let mut failing = false;
    loop {
        let found = tokio::net::lookup_host((&*name.host, name.port)).await;
        let Some(dns) = dns.upgrade() else {
            return;
        };
        let wait = match found {
            Ok(addresses) => {
                let mut ips: Vec<IpAddr> = addresses.map(|a| a.ip()).collect();
                // getaddrinfo lists an address once per socket type it could serve.
                let mut seen = Vec::with_capacity(ips.len());
                ips.retain(|ip| {
                    let new = !seen.contains(ip);
                    seen.push(*ip);
                    new
                });
                if dns.store(&name, ips) {
                    dns.changed.send_replace(());
                }
                failing = false;
                REFRESH
            }
            Err(error) => {
                if std::mem::replace(&mut failing, true) {
                    tracing::debug!(%name, %error, "resolving a ServiceEntry endpoint failed again");
                } else {
                    tracing::warn!(%name, %error, "resolving a ServiceEntry endpoint failed");
                }
                RETRY
            }
        };
        if let Some(answered) = answered.take() {
            let _ = answered.send(());
        }
        drop(dns);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(host: &str) -> DnsName {
        DnsName {
            host: Arc::from(host),
            port: 8080,
        }
    }

    #[tokio::test]
    async fn tracked_names_are_resolved_before_use_and_forgotten_when_dropped() {
        let dns = Arc::new(Dns::default());
        let mut changes = dns.changes();
        let localhost = name("localhost");
        let literal = name("198.18.7.7");
        dns.track([&localhost, &literal].into_iter()).await;
        assert!(dns
            .addresses(&localhost)
            .contains(&IpAddr::from([127, 0, 0, 1])));
        assert_eq!(*dns.addresses(&literal), [IpAddr::from([198, 18, 7, 7])]);
        assert!(changes.has_changed().expect("open"));
        changes.mark_unchanged();

        dns.track([&literal].into_iter()).await;
        assert!(dns.addresses(&localhost).is_empty());
        assert_eq!(dns.addresses(&literal).len(), 1);
        assert!(!changes.has_changed().expect("open"));
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_has_no_addresses_yet() {
        let dns = Arc::new(Dns::default());
        let unknown = name("no-such-host.invalid");
        dns.track([&unknown].into_iter()).await;
        assert!(dns.addresses(&unknown).is_empty());
    }
}
