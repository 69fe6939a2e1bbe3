//! Cluster IPs for Services that do not set `spec.clusterIP`.
//!
//! In a cluster the API server assigns them; in local mode there is none, yet the control
//! plane (for the snapshot) and the local launcher (for each pod's `/etc/hosts`) must agree on
//! the same address without talking to each other. So the choice is a pure function of the set
//! of Services: the same manifests always give the same addresses, on any machine, in any
//! process.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

pub use remora_api::resources::fnv1a64;

/// First and last assignable addresses of 198.19.0.0/16, the local Service range (the network
/// and broadcast addresses are left out).
const FIRST: u32 = u32::from_be_bytes([198, 19, 0, 1]);
const LAST: u32 = u32::from_be_bytes([198, 19, 255, 254]);

/// The cluster IP of every Service given as `(namespace, name, explicit spec.clusterIP)`.
///
/// A Service with an explicit address keeps it. The others get
/// `198.19.0.1 + fnv1a64("namespace/name") mod 65534`, visited in (namespace, name) order and
/// moving to the next free address (wrapping) when that one is taken by an explicit address or
/// by an earlier Service. Headless Services (`clusterIP: None`) should not be passed in. When
/// the range is exhausted, the remaining Services get no address.
pub fn allocate(services: &[(&str, &str, Option<IpAddr>)]) -> BTreeMap<(String, String), IpAddr> {
    let mut assigned = BTreeMap::new();
    let mut taken = BTreeSet::new();
    for (namespace, name, ip) in services {
        if let Some(ip) = ip {
            taken.insert(*ip);
            assigned.insert(((*namespace).to_owned(), (*name).to_owned()), *ip);
        }
    }
    let mut pending: Vec<(&str, &str)> = services
        .iter()
        .filter(|(_, _, ip)| ip.is_none())
        .map(|(namespace, name, _)| (*namespace, *name))
        .collect();
    pending.sort_unstable();
    pending.dedup();
    let size = LAST - FIRST + 1;
    for (namespace, name) in pending {
        let key = (namespace.to_owned(), name.to_owned());
        if assigned.contains_key(&key) {
            continue;
        }
        let hash = fnv1a64(format!("{namespace}/{name}").as_bytes());
        let start = u32::try_from(hash % u64::from(size)).unwrap_or(0);
        let free = (0..size)
            .map(|step| IpAddr::V4(Ipv4Addr::from(FIRST + (start + step) % size)))
            .find(|ip| !taken.contains(ip));
        if let Some(ip) = free {
            taken.insert(ip);
            assigned.insert(key, ip);
        }
    }
    assigned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test IP")
    }

    fn key(namespace: &str, name: &str) -> (String, String) {
        (namespace.to_owned(), name.to_owned())
    }

    #[test]
    fn stable_in_range_and_independent_of_input_order() {
        let services: Vec<(String, String)> = (0..500)
            .map(|i| (format!("ns{}", i % 7), format!("svc{i}")))
            .collect();
        let forward: Vec<(&str, &str, Option<IpAddr>)> = services
            .iter()
            .map(|(ns, name)| (ns.as_str(), name.as_str(), None))
            .collect();
        let mut backward = forward.clone();
        backward.reverse();
        let first = allocate(&forward);
        assert_eq!(first, allocate(&backward));
        assert_eq!(first.len(), 500);
        let distinct: BTreeSet<_> = first.values().collect();
        assert_eq!(distinct.len(), 500);
        for ip in first.values() {
            let IpAddr::V4(v4) = ip else {
                panic!("{ip} is not IPv4");
            };
            let n = u32::from(*v4);
            assert!((FIRST..=LAST).contains(&n), "{ip} out of range");
        }
        // Pinned, so a change of hash or range (which would renumber every local Service) is
        // deliberate.
        let pinned = allocate(&[
            ("default", "httpbin", None),
            ("istio-system", "istiod", None),
        ]);
        assert_eq!(pinned[&key("default", "httpbin")], ip("198.19.151.147"));
        assert_eq!(pinned[&key("istio-system", "istiod")], ip("198.19.192.183"));
    }

    fn first_choice(namespace: &str, name: &str) -> IpAddr {
        let hash = fnv1a64(format!("{namespace}/{name}").as_bytes());
        let offset = u32::try_from(hash % u64::from(LAST - FIRST + 1)).expect("fits");
        IpAddr::V4(Ipv4Addr::from(FIRST + offset))
    }

    #[test]
    fn explicit_addresses_are_kept_and_skipped() {
        let natural = first_choice("default", "b");
        type Service<'a> = (&'a str, &'a str, Option<IpAddr>);
        type Assigned<'a> = ((&'a str, &'a str), IpAddr);
        let cases: [(&str, Vec<Service>, Vec<Assigned>); 3] = [
            (
                "explicit address kept",
                vec![("default", "a", Some(ip("10.96.0.10")))],
                vec![(("default", "a"), ip("10.96.0.10"))],
            ),
            (
                "explicit address taken by another Service is skipped",
                vec![("default", "b", None), ("other", "a", Some(natural))],
                vec![(("default", "b"), next(natural)), (("other", "a"), natural)],
            ),
            (
                "duplicates collapse",
                vec![("default", "b", None), ("default", "b", None)],
                vec![(("default", "b"), natural)],
            ),
        ];
        for (what, input, expected) in cases {
            let expected: BTreeMap<_, _> = expected
                .into_iter()
                .map(|((ns, name), ip)| (key(ns, name), ip))
                .collect();
            assert_eq!(allocate(&input), expected, "{what}");
        }
    }

    fn next(ip: IpAddr) -> IpAddr {
        let IpAddr::V4(v4) = ip else {
            panic!("{ip} is not IPv4");
        };
        let n = u32::from(v4);
        IpAddr::V4(Ipv4Addr::from(if n == LAST { FIRST } else { n + 1 }))
    }

    #[test]
    fn collisions_probe_forward_in_name_order() {
        // Find two names hashing to the same first choice.
        let mut seen = BTreeMap::new();
        let (first, second) = (0..)
            .find_map(|i| {
                let name = format!("svc{i}");
                let choice = first_choice("default", &name);
                seen.insert(choice, name.clone())
                    .map(|earlier| (earlier, name))
            })
            .expect("a collision exists among 65534 addresses");
        let (low, high) = if first < second {
            (first, second)
        } else {
            (second, first)
        };
        let choice = first_choice("default", &low);
        let result = allocate(&[("default", &high, None), ("default", &low, None)]);
        assert_eq!(result[&key("default", &low)], choice);
        assert_eq!(result[&key("default", &high)], next(choice));
    }
}
