//! The sidecar's ports, Istio's numbers, so `remora-init`'s rules, kubelet probes, Prometheus
//! scrapes and Envoy peers find Remora where they find Envoy.

/// Outbound capture: everything the app dials is redirected here.
pub const OUTBOUND: u16 = 15001;
/// Inbound capture: everything dialled to the pod is redirected here.
pub const INBOUND: u16 = 15006;
/// The sidecar-to-sidecar tunnel (Istio's HBONE port), exempt from capture.
pub const TUNNEL: u16 = 15008;
/// Admin, bound to 127.0.0.1 only.
pub const ADMIN: u16 = 15000;
/// `/healthz/ready`.
pub const HEALTH: u16 = 15021;
/// The status port: readiness, the app's probes, merged metrics.
pub const STATUS: u16 = 15020;
/// `/stats/prometheus`.
pub const STATS: u16 = 15090;

/// Whether `port` is one the sidecar listens on for traffic to forward. A connection addressed
/// to one of them (e.g. a caller dialing `<pod-ip>:15006` directly) would be forwarded back to
/// the same listener forever, so it is refused, as Envoy's listeners do.
pub fn is_proxy_port(port: u16) -> bool {
    matches!(port, OUTBOUND | INBOUND | TUNNEL)
}
