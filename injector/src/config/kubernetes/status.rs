//! Istio's status writer (istiod's `PILOT_ENABLE_STATUS`, off by default as there): each Istio
//! config object gets a condition in its `status.conditions` saying whether the control plane
//! took it, and if not why, so `kubectl get virtualservice -o yaml` shows what the Events say
//! without digging through them.
//!
//! The condition is `Accepted` (`True`, or `False` with reason `Invalid` and the rejection as
//! its message), for the object's `observedGeneration`; other writers' conditions are kept.
//! An object is written only when its condition would change, through the `status`
//! subresource (`update`), and with its resourceVersion: a write that raced another (a second
//! replica writing the same condition) is refused by the API server and not retried, as the
//! next rebuild sees the other write. Every replica writes, without a leader: the condition is
//! a function of the object, so they agree.

use std::sync::Arc;

use kube::{
    api::{Api, DynamicObject, ObjectMeta, PostParams},
    core::TypeMeta,
};
use serde_json::{json, Map, Value};

use super::{kinds::KINDS, Store};

/// The condition type written.
pub(crate) const CONDITION: &str = "Accepted";

/// What the control plane made of one object: taken, or rejected and why.
pub(crate) type Verdict = Result<(), String>;

/// The `status` object `status` should become so its [`CONDITION`] says `verdict` about
/// generation `generation`, written at `now`; `None` when it already says so. The transition
/// time moves only when the condition's status flips.
pub(crate) fn updated(
    status: Option<&Value>,
    generation: Option<i64>,
    verdict: &Verdict,
    now: &str,
) -> Option<Value> {
    let (state, reason, message) = match verdict {
        Ok(()) => ("True", "Accepted", "accepted by the control plane"),
        Err(reason) => ("False", "Invalid", reason.as_str()),
    };
    let mut status = match status {
        Some(Value::Object(fields)) => fields.clone(),
        _ => Map::new(),
    };
    let mut conditions = match status.remove("conditions") {
        Some(Value::Array(conditions)) => conditions,
        _ => Vec::new(),
    };
    let position = conditions
        .iter()
        .position(|c| c.get("type").and_then(Value::as_str) == Some(CONDITION));
    let existing = position.map(|p| &conditions[p]);
    let field = |name: &str| existing.and_then(|c| c.get(name));
    let same = |name: &str, wanted: &str| field(name).and_then(Value::as_str) == Some(wanted);
    let observed = field("observedGeneration").and_then(Value::as_i64);
    if same("status", state)
        && same("reason", reason)
        && same("message", message)
        && observed == generation
    {
        return None;
    }
    let transition = match field("lastTransitionTime") {
        Some(time) if same("status", state) => time.clone(),
        _ => json!(now),
    };
    let mut condition = json!({
        "type": CONDITION,
        "status": state,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    });
    if let Some(generation) = generation {
        condition["observedGeneration"] = json!(generation);
    }
    match position {
        Some(p) => conditions[p] = condition,
        None => conditions.push(condition),
    }
    status.insert("conditions".to_owned(), Value::Array(conditions));
    Some(Value::Object(status))
}

/// Whether `status` does not say `verdict` about generation `generation` yet.
pub(crate) fn differs(status: Option<&Value>, generation: Option<i64>, verdict: &Verdict) -> bool {
    updated(status, generation, verdict, "").is_some()
}

/// Writes conditions, one batch at a time.
pub(crate) struct StatusWriter {
    client: kube::Client,
    batch: tokio::sync::Mutex<()>,
}

/// One object's verdict: the kind's index in [`KINDS`], the version its store is read in,
/// namespace and name.
pub(crate) struct Judged {
    pub(crate) kind: usize,
    pub(crate) version: &'static str,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) verdict: Verdict,
}

impl StatusWriter {
    pub(crate) fn new(client: kube::Client) -> Self {
        Self {
            client,
            batch: tokio::sync::Mutex::new(()),
        }
    }

    /// Writes the condition of each of `judged` whose object (in `stores`, looked at again
    /// just before writing: an earlier batch may have written it) does not say it yet. The
    /// object is sent with its status alone: the API server keeps the rest of it as stored.
    pub(crate) async fn write(self: Arc<Self>, stores: Vec<Store>, judged: Vec<Judged>) {
        let _batch = self.batch.lock().await;
        for judged in judged {
            let now = k8s_openapi::jiff::Timestamp::now()
                .round(k8s_openapi::jiff::Unit::Second)
                .map_or_else(|_| String::new(), |t| t.to_string());
            let (status, resource_version) = {
                let store = stores[judged.kind].lock();
                let Some(stored) = store.find(&judged.namespace, &judged.name) else {
                    continue;
                };
                let status = stored.status.as_ref();
                let Some(status) = updated(status, stored.generation, &judged.verdict, &now) else {
                    continue;
                };
                (status, stored.resource_version.clone())
            };
            let resource = KINDS[judged.kind].resource_in(judged.version);
            let object = DynamicObject {
                types: Some(TypeMeta {
                    api_version: resource.api_version.clone(),
                    kind: resource.kind.clone(),
                }),
                metadata: ObjectMeta {
                    name: Some(judged.name.clone()),
                    namespace: Some(judged.namespace.clone()),
                    resource_version: Some(resource_version),
                    ..ObjectMeta::default()
                },
                data: json!({ "status": status }),
            };
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &judged.namespace, &resource);
            match api
                .replace_status(&judged.name, &PostParams::default(), &object)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {
                    tracing::debug!(object = %judged.name, reason = %status.reason, "status not written: the object changed meanwhile");
                }
                Err(e) => {
                    tracing::warn!(kind = %KINDS[judged.kind], namespace = %judged.namespace, object = %judged.name, error = %e, "cannot write the object's status");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-12-07T10:00:00Z";

    fn condition(status: &Value) -> &Value {
        status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == CONDITION))
            .expect("the condition is there")
    }

    #[test]
    fn conditions_change_only_when_what_they_say_changes() {
        let rejected: Verdict = Err("spec.http[0].route: required".to_owned());
        // No status yet: one condition, other status fields untouched.
        let first = updated(None, Some(1), &Ok(()), NOW).expect("written");
        assert_eq!(
            condition(&first),
            &json!({"type": "Accepted", "status": "True", "reason": "Accepted",
                    "message": "accepted by the control plane",
                    "lastTransitionTime": NOW, "observedGeneration": 1})
        );
        // The same verdict for the same generation: nothing to write.
        assert_eq!(updated(Some(&first), Some(1), &Ok(()), "later"), None);
        // A new generation, still accepted: written, the transition time kept.
        let second = updated(Some(&first), Some(2), &Ok(()), "later").expect("written");
        assert_eq!(condition(&second)["observedGeneration"], 2);
        assert_eq!(condition(&second)["lastTransitionTime"], NOW);
        // Rejected: the status flips, the transition time moves, the reason is the message.
        let third = updated(Some(&second), Some(3), &rejected, "later").expect("written");
        assert_eq!(condition(&third)["status"], "False");
        assert_eq!(condition(&third)["reason"], "Invalid");
        assert_eq!(condition(&third)["message"], "spec.http[0].route: required");
        assert_eq!(condition(&third)["lastTransitionTime"], "later");
        assert_eq!(updated(Some(&third), Some(3), &rejected, "again"), None);
        // Rejected for another reason: the message changes, the transition time does not.
        let other: Verdict = Err("spec.hosts: required".to_owned());
        let fourth = updated(Some(&third), Some(3), &other, "again").expect("written");
        assert_eq!(condition(&fourth)["message"], "spec.hosts: required");
        assert_eq!(condition(&fourth)["lastTransitionTime"], "later");
    }

    #[test]
    fn other_writers_conditions_and_fields_are_kept() {
        let status = json!({
            "observedGeneration": "4",
            "validationMessages": [{"level": "WARNING"}],
            "conditions": [
                {"type": "Reconciled", "status": "True"},
                {"type": "Accepted", "status": "True", "reason": "Accepted",
                 "message": "accepted by the control plane", "lastTransitionTime": NOW},
            ],
        });
        let written =
            updated(Some(&status), None, &Err("bad".to_owned()), "later").expect("written");
        assert_eq!(written["observedGeneration"], "4");
        assert_eq!(written["validationMessages"], status["validationMessages"]);
        let conditions = written["conditions"].as_array().expect("conditions");
        assert_eq!(conditions.len(), 2);
        assert_eq!(
            conditions[0],
            json!({"type": "Reconciled", "status": "True"})
        );
        assert_eq!(conditions[1]["message"], "bad");
        // Without a generation (an API server that keeps none), none is claimed, and the
        // same verdict is not written again.
        assert!(conditions[1].get("observedGeneration").is_none());
        assert_eq!(
            updated(Some(&written), None, &Err("bad".to_owned()), "x"),
            None
        );
        // A status that is not an object is replaced.
        assert!(updated(Some(&json!("odd")), Some(1), &Ok(()), NOW).is_some());
    }
}
