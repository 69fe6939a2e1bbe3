//! What a port declares it speaks, as Istio's protocol selection reads it: a Kubernetes
//! Service port's `appProtocol`, else its name's prefix (`http-web`, `grpc`, `tcp-db`), or a
//! ServiceEntry port's `protocol`. The control plane sends whichever it found; the sidecar
//! decides here how to treat connections to the port. Only an undeclared port is sniffed: a
//! declared HTTP port is always served as HTTP (nothing reaches the app as raw bytes), and a
//! declared TCP port is passed on at once, with no wait for bytes a server-first protocol's
//! client never sends.

use crate::proto::config as proto;

/// How connections to a port are served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Declared {
    /// Nothing the mesh recognises: the first bytes decide (HTTP, TLS, or opaque).
    #[default]
    Undeclared,
    /// `http`, `http2`, `grpc`, `grpc-web` (and Kubernetes' `kubernetes.io/h2c`,
    /// `kubernetes.io/ws`): served as HTTP whatever arrives.
    Http,
    /// `tls`, `https` (and `kubernetes.io/wss`): TCP whose client speaks first with a
    /// ClientHello, read for the name it asks for.
    Tls,
    /// `tcp`, `mongo`, `redis`, `mysql`: opaque from the start.
    Tcp,
}

impl Declared {
    /// What `declared` (an `appProtocol`, a port name or its prefix, or a ServiceEntry
    /// protocol; any case) makes of a port.
    pub fn of(declared: &str) -> Self {
        match declared {
            "kubernetes.io/h2c" | "kubernetes.io/ws" => return Self::Http,
            "kubernetes.io/wss" => return Self::Tls,
            _ => {}
        }
        let lower = declared.to_ascii_lowercase();
        // `grpc-web` holds the `-` that otherwise ends a name's protocol prefix.
        if lower.starts_with("grpc-web") {
            return Self::Http;
        }
        let prefix = lower.split('-').next().unwrap_or_default();
        match prefix {
            "http" | "http2" | "http_proxy" | "grpc" => Self::Http,
            "tls" | "https" => Self::Tls,
            "tcp" | "mongo" | "redis" | "mysql" => Self::Tcp,
            _ => Self::Undeclared,
        }
    }
}

/// What each of a workload's own ports declares (the inbound half of protocol selection),
/// compiled once per push; a port not listed is [`Declared::Undeclared`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboundPorts(Box<[(u16, Declared)]>);

impl InboundPorts {
    /// Compiles `ports` (`inboundPorts`), recording each problem with its path.
    pub fn compile(ports: &[proto::InboundPort], problems: &mut Vec<String>) -> Self {
        let mut compiled: Vec<(u16, Declared)> = Vec::with_capacity(ports.len());
        for (i, port) in ports.iter().enumerate() {
            let path = format!("inboundPorts[{i}].port");
            match u16::try_from(port.port) {
                Ok(0) | Err(_) => problems.push(format!("{path}: {} is not a port", port.port)),
                Ok(number) if compiled.iter().any(|(p, _)| *p == number) => {
                    problems.push(format!("{path}: {number} is listed twice"));
                }
                Ok(number) => compiled.push((number, Declared::of(&port.app_protocol))),
            }
        }
        Self(compiled.into_boxed_slice())
    }

    /// What connections to own port `port` are served as.
    pub fn declared(&self, port: u16) -> Declared {
        self.0
            .iter()
            .find_map(|(p, declared)| (*p == port).then_some(*declared))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::{proto, Declared, InboundPorts};

    #[test]
    fn ports_are_declared_as_istio_reads_them() {
        for (declared, expected) in [
            ("", Declared::Undeclared),
            ("http", Declared::Http),
            ("HTTP", Declared::Http),
            ("http2", Declared::Http),
            ("http-web", Declared::Http),
            ("grpc", Declared::Http),
            ("GRPC", Declared::Http),
            ("grpc-web", Declared::Http),
            ("grpc-web-ui", Declared::Http),
            ("grpc-status", Declared::Http),
            ("kubernetes.io/h2c", Declared::Http),
            ("kubernetes.io/ws", Declared::Http),
            ("kubernetes.io/wss", Declared::Tls),
            ("https", Declared::Tls),
            ("TLS", Declared::Tls),
            ("tcp", Declared::Tcp),
            ("tcp-db", Declared::Tcp),
            ("mysql", Declared::Tcp),
            ("MONGO", Declared::Tcp),
            ("redis-cache", Declared::Tcp),
            ("udp", Declared::Undeclared),
            ("web", Declared::Undeclared),
            ("httpbin", Declared::Undeclared),
            ("example.com/custom", Declared::Undeclared),
        ] {
            assert_eq!(Declared::of(declared), expected, "{declared:?}");
        }
    }

    #[test]
    fn own_ports_are_looked_up_and_checked() {
        let port = |port, app_protocol: &str| proto::InboundPort {
            port,
            app_protocol: app_protocol.to_owned(),
        };
        let mut problems = Vec::new();
        let ports = InboundPorts::compile(
            &[
                port(8080, "http"),
                port(5432, "tcp-db"),
                port(70_000, "http"),
                port(0, "tcp"),
                port(8080, "tcp"),
            ],
            &mut problems,
        );
        assert_eq!(ports.declared(8080), Declared::Http);
        assert_eq!(ports.declared(5432), Declared::Tcp);
        assert_eq!(ports.declared(9090), Declared::Undeclared);
        assert_eq!(
            problems,
            [
                "inboundPorts[2].port: 70000 is not a port",
                "inboundPorts[3].port: 0 is not a port",
                "inboundPorts[4].port: 8080 is listed twice",
            ]
        );
    }
}
