//! What a port declares it speaks, as Istio's protocol selection reads it: a Kubernetes
//! Service port's `appProtocol`, else its name's prefix (`http-web`, `grpc`, `tcp-db`), or a
//! ServiceEntry port's `protocol`. The control plane sends whichever it found; the sidecar
//! decides here how to treat connections to the port. Only an undeclared port is sniffed: a
//! declared HTTP port is always served as HTTP (nothing reaches the app as raw bytes), and a
//! declared TCP port is passed on at once, with no wait for bytes a server-first protocol's
//! client never sends.

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

#[cfg(test)]
mod tests {
    use super::Declared;

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
}
