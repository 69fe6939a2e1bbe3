//! PeerAuthentication as the sidecar applies it: the workload's mTLS mode, per port. The control
//! plane resolved which policy wins (workload over namespace over mesh, `UNSET` inheriting), so
//! the sidecar only looks a port up.

use crate::proto::config as proto;

/// How a workload port takes its callers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MtlsMode {
    /// Mesh mTLS only: plaintext and other TLS are refused before a byte reaches the app.
    Strict,
    /// Mesh mTLS and plaintext alike, told apart per connection (Istio's default).
    #[default]
    Permissive,
    /// The sidecar does not terminate mesh mTLS: bytes pass to the app as they come.
    Disable,
}

impl MtlsMode {
    fn parse(text: &str, path: &str, problems: &mut Vec<String>) -> Self {
        match text {
            "" | "PERMISSIVE" => Self::Permissive,
            "STRICT" => Self::Strict,
            "DISABLE" => Self::Disable,
            other => {
                problems.push(format!(
                    "{path}: {other:?} is not one of STRICT, PERMISSIVE, DISABLE"
                ));
                Self::Permissive
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Strict => "STRICT",
            Self::Permissive => "PERMISSIVE",
            Self::Disable => "DISABLE",
        }
    }
}

/// The effective PeerAuthentication of a workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerAuthn {
    mode: MtlsMode,
    ports: Vec<(u16, MtlsMode)>,
    /// `namespace/name` of the policy that decided, if any.
    pub policy: Option<String>,
}

impl PeerAuthn {
    pub fn compile(source: &proto::PeerAuthentication) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mode = MtlsMode::parse(&source.mode, "mode", &mut problems);
        let ports = source
            .port_mtls
            .iter()
            .enumerate()
            .filter_map(|(i, port)| {
                let mode =
                    MtlsMode::parse(&port.mode, &format!("portMtls[{i}].mode"), &mut problems);
                match u16::try_from(port.port).ok().filter(|p| *p != 0) {
                    Some(number) => Some((number, mode)),
                    None => {
                        problems.push(format!(
                            "portMtls[{i}].port: {} is not a port number",
                            port.port
                        ));
                        None
                    }
                }
            })
            .collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            mode,
            ports,
            policy: Some(source.policy.clone()).filter(|p| !p.is_empty()),
        })
    }

    /// The mode for workload port `port`.
    pub fn mode(&self, port: u16) -> MtlsMode {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(self.mode, |(_, mode)| *mode)
    }
}
