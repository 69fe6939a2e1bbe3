//! The local pod network: a bridge in a namespace of its own and pods hanging off it.
//!
//! Each pod gets `eth0` (a veth whose peer sits on the bridge), a /32 address in
//! [`POD_CIDR`] and exactly one route, [`MESH_ROUTE`] via `eth0`. Service cluster IPs
//! (198.19.0.0/16, see [`remora_injector::config::cluster_ip`]) are inside that route, so a
//! connection to one leaves the pod's stack and is captured by the sidecar's iptables rules;
//! there is no default route, so nothing reaches the host's network or beyond. The host's own
//! namespace is never touched.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU32, Ordering},
};

use ipnet::{Ipv4Net, Ipv6Net};

use super::netns::{CommandError, Netns};

/// Pod addresses (RFC 2544's benchmarking range, never routed on the internet).
pub const POD_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 16);
/// The only route in a pod: pods and Services, nothing else.
pub const MESH_ROUTE: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15);
/// Pod addresses in a dual-stack network (the IPv6 benchmarking range).
pub const POD_CIDR6: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0), 48);

/// Host numbers below this are kept for fixed roles (the control plane takes the first).
const FIRST_POD_HOST: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("the pod network {POD_CIDR} is full")]
    Exhausted,
}

/// The bridge and the address plan.
#[derive(Debug)]
pub struct Network {
    switch: Netns,
    next_host: AtomicU32,
    next_reserved: AtomicU32,
    dual_stack: bool,
}

/// A pod's namespace, attached to the bridge.
#[derive(Debug)]
pub struct PodNetwork {
    pub netns: Netns,
    pub ip: Ipv4Addr,
    /// Set in a dual-stack network.
    pub ip6: Option<Ipv6Addr>,
}

impl Network {
    /// Whether pods also get an IPv6 address.
    pub fn dual_stack(&self) -> bool {
        self.dual_stack
    }

    /// Creates namespace `switch_name` holding bridge `br0`. With `dual_stack`, pods also get
    /// an address in [`POD_CIDR6`].
    pub fn create(switch_name: &str, dual_stack: bool) -> Result<Self, NetworkError> {
        let switch = Netns::create(switch_name)?;
        switch.run(&["ip", "link", "add", "br0", "type", "bridge"])?;
        switch.run(&["ip", "link", "set", "br0", "up"])?;
        Ok(Self {
            switch,
            next_host: AtomicU32::new(FIRST_POD_HOST),
            next_reserved: AtomicU32::new(2),
            dual_stack,
        })
    }

    /// The namespace holding the bridge (e.g. to capture packets on `br0`).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// Creates namespace `netns_name` with the next pod address.
    pub fn add_pod(&self, netns_name: &str) -> Result<PodNetwork, NetworkError> {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        self.attach(netns_name, host)
    }

    /// Like [`Network::add_pod`], with an address below the ones pods get, for infrastructure
    /// such as the control plane.
    pub fn add_reserved(&self, netns_name: &str) -> Result<PodNetwork, NetworkError> {
        let host = self.next_reserved.fetch_add(1, Ordering::Relaxed);
        if host >= FIRST_POD_HOST {
            return Err(NetworkError::Exhausted);
        }
        self.attach(netns_name, host)
    }

    fn attach(&self, netns_name: &str, host: u32) -> Result<PodNetwork, NetworkError> {
        // The last address of the range stays free, as a broadcast address would be.
        if host >= (1 << (32 - POD_CIDR.prefix_len())) - 1 {
            return Err(NetworkError::Exhausted);
        }
        let ip = Ipv4Addr::from(u32::from(POD_CIDR.network()) + host);
        let netns = Netns::create(netns_name)?;
        let veth = format!("veth{host}");
        self.switch.run(&[
            "ip",
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ])?;
        self.switch
            .run(&["ip", "link", "set", &veth, "master", "br0", "up"])?;
        netns.run(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        netns.run(&["ip", "link", "set", "eth0", "up"])?;
        netns.run(&["ip", "route", "add", &MESH_ROUTE.to_string(), "dev", "eth0"])?;
        let ip6 = if self.dual_stack {
            let ip6 = Ipv6Addr::from(u128::from(POD_CIDR6.network()) + u128::from(host));
            // nodad: usable at once, no duplicate address detection delay.
            netns.run(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{ip6}/128"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            netns.run(&[
                "ip",
                "-6",
                "route",
                "add",
                &POD_CIDR6.to_string(),
                "dev",
                "eth0",
            ])?;
            Some(ip6)
        } else {
            None
        };
        Ok(PodNetwork { netns, ip, ip6 })
    }
}
