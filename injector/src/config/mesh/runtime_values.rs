//! `ProxyConfig.runtimeValues`: Envoy's runtime keys, as Istio passes them to its sidecars. The
//! ones Remora's sidecar honours limit how much load it takes: Envoy's own
//! `overload.global_downstream_max_connections`, and per listener, keys named in Remora's
//! namespace since Envoy sets those through filters rather than runtime. Others are kept and
//! ignored, as Envoy ignores keys nothing reads. A value Remora reads must be a whole number
//! above zero: anything else rejects the config it is in, naming the key.

use std::collections::BTreeMap;

use remora_api::proto::config as proto;
use serde::{de, Deserialize, Deserializer};

/// Connections open at once over all of the sidecar's listeners (Envoy's key).
pub(crate) const GLOBAL_MAX_CONNECTIONS: &str = "overload.global_downstream_max_connections";
/// Connections open at once on each listener.
pub(crate) const LISTENER_MAX_CONNECTIONS: &str = "remora.listener_max_connections";
/// Requests on each listener waiting for their response's head.
pub(crate) const LISTENER_MAX_PENDING_REQUESTS: &str = "remora.listener_max_pending_requests";

const LIMITS: [&str; 3] = [
    GLOBAL_MAX_CONNECTIONS,
    LISTENER_MAX_CONNECTIONS,
    LISTENER_MAX_PENDING_REQUESTS,
];

/// The runtime values of a `ProxyConfig`, the ones Remora reads already checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RuntimeValues(BTreeMap<String, String>);

/// A runtime value as YAML may spell it: Istio's strings, or a bare scalar.
#[derive(Deserialize)]
#[serde(untagged)]
enum Value {
    Text(String),
    Whole(u64),
    Number(f64),
    Flag(bool),
}

impl<'de> Deserialize<'de> for RuntimeValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, Value>::deserialize(deserializer)?;
        let values: BTreeMap<String, String> = raw
            .into_iter()
            .map(|(key, value)| match value {
                Value::Text(text) => (key, text),
                Value::Whole(number) => (key, number.to_string()),
                Value::Number(number) => (key, number.to_string()),
                Value::Flag(flag) => (key, flag.to_string()),
            })
            .collect();
        for key in LIMITS {
            if let Some(text) = values.get(key) {
                if limit(text).is_none() {
                    return Err(de::Error::custom(format!(
                        "runtimeValues[{key:?}]: {text:?} is not a whole number above zero"
                    )));
                }
            }
        }
        Ok(Self(values))
    }
}

/// A checked limit's value.
fn limit(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|n| *n > 0)
}

impl RuntimeValues {
    /// `self` with `pod`'s keys set over it, key by key.
    pub(crate) fn overridden_by(&self, pod: &Self) -> Self {
        let mut values = self.0.clone();
        values.extend(pod.0.clone());
        Self(values)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn values(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// The load limits they set (0 for each one unset: the sidecar's default).
    pub(crate) fn overload(&self) -> proto::OverloadLimits {
        let value = |key: &str| self.0.get(key).and_then(|text| limit(text)).unwrap_or(0);
        proto::OverloadLimits {
            listener_max_connections: value(LISTENER_MAX_CONNECTIONS),
            global_max_connections: value(GLOBAL_MAX_CONNECTIONS),
            listener_max_pending_requests: value(LISTENER_MAX_PENDING_REQUESTS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RuntimeValues, String> {
        serde_saphyr::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn limits_are_read_from_strings_or_numbers_and_checked() {
        let values = parse(
            "overload.global_downstream_max_connections: \"5000\"\n\
             remora.listener_max_connections: 100\n\
             re2.max_program_size.error_level: \"32768\"\n",
        )
        .expect("valid");
        assert_eq!(
            values.overload(),
            proto::OverloadLimits {
                listener_max_connections: 100,
                global_max_connections: 5000,
                listener_max_pending_requests: 0,
            }
        );
        for bad in ["\"0\"", "\"-1\"", "\"many\"", "1.5"] {
            let error =
                parse(&format!("remora.listener_max_pending_requests: {bad}")).expect_err(bad);
            assert!(
                error.contains("runtimeValues[\"remora.listener_max_pending_requests\"]"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn a_pod_overrides_key_by_key() {
        let mesh = parse("remora.listener_max_connections: 100\na: \"1\"\n").expect("valid");
        let pod = parse("remora.listener_max_connections: 7\n").expect("valid");
        let merged = mesh.overridden_by(&pod);
        assert_eq!(merged.overload().listener_max_connections, 7);
        assert_eq!(merged.values().get("a").map(String::as_str), Some("1"));
    }
}
