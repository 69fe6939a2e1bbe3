//! The injection config: what Istio's `istio-sidecar-injector` ConfigMap holds under `config`
//! (and `istioctl kube-inject --injectConfigFile` reads): the default `policy` and the
//! `neverInjectSelector`/`alwaysInjectSelector` lists that decide for pods that say nothing,
//! and `injectedAnnotations` the webhook adds. Istio's `templates` are Go templates for
//! Envoy's sidecar; Remora injects its own, so they are noted as not used, never run.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;
use serde_json::Value;

use super::selector;

/// How pods that say nothing are decided.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InjectionPolicy {
    pub policy: Policy,
    pub never_inject_selector: Vec<LabelSelector>,
    pub always_inject_selector: Vec<LabelSelector>,
    /// Annotations the webhook adds to every pod it injects.
    pub injected_annotations: BTreeMap<String, String>,
    #[serde(rename = "templates")]
    templates: Option<Value>,
    #[serde(rename = "defaultTemplates")]
    default_templates: Option<Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Pods are injected unless they opt out.
    #[default]
    Enabled,
    /// Pods are injected only if they opt in.
    Disabled,
}

impl InjectionPolicy {
    /// Reads the `config` of the injector ConfigMap; `Err` names the field at fault. Every
    /// selector is checked now, so a bad one is refused here rather than at each pod.
    pub fn parse(text: &str) -> Result<Self, String> {
        let policy: Self = crate::config::yaml::from_str(text).map_err(|e| e.to_string())?;
        let empty = BTreeMap::new();
        for (field, selectors) in [
            ("neverInjectSelector", &policy.never_inject_selector),
            ("alwaysInjectSelector", &policy.always_inject_selector),
        ] {
            for (i, selector) in selectors.iter().enumerate() {
                selector::matches(selector, &empty).map_err(|e| format!("{field}[{i}].{e}"))?;
            }
        }
        Ok(policy)
    }

    /// What in it is Istio's and not used here.
    pub fn unused(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.templates.is_some() || self.default_templates.is_some() {
            notes.push(
                "templates and defaultTemplates are Istio's sidecar templates; Remora injects \
                 its own sidecar and does not run them"
                    .to_owned(),
            );
        }
        notes
    }

    /// The decision for a pod that names no choice of its own: the first never-selector that
    /// matches refuses, then the first always-selector accepts, else the policy decides.
    pub fn by_default(&self, labels: &BTreeMap<String, String>) -> bool {
        let any = |selectors: &[LabelSelector]| {
            selectors.iter().any(|s| {
                (s.match_labels.as_ref().is_some_and(|m| !m.is_empty())
                    || s.match_expressions.as_ref().is_some_and(|m| !m.is_empty()))
                    && selector::matches(s, labels).unwrap_or(false)
            })
        };
        if any(&self.never_inject_selector) {
            return false;
        }
        if any(&self.always_inject_selector) {
            return true;
        }
        self.policy == Policy::Enabled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors_then_the_policy_decide_for_pods_that_say_nothing() {
        let config = InjectionPolicy::parse(
            "policy: disabled\n\
             neverInjectSelector: [{matchLabels: {batch: \"true\"}}]\n\
             alwaysInjectSelector: [{matchExpressions: [{key: mesh, operator: Exists}]}, {}]\n\
             injectedAnnotations: {team.example/owner: mesh}\n",
        )
        .expect("valid");
        assert!(!config.by_default(&labels(&[])), "policy disabled");
        assert!(config.by_default(&labels(&[("mesh", "yes")])));
        assert!(
            !config.by_default(&labels(&[("mesh", "yes"), ("batch", "true")])),
            "never wins over always"
        );
        assert!(InjectionPolicy::default().by_default(&labels(&[])));
        assert_eq!(config.injected_annotations["team.example/owner"], "mesh");
        assert!(config.unused().is_empty());

        let istio = InjectionPolicy::parse(
            "policy: enabled\ndefaultTemplates: [sidecar]\ntemplates: {sidecar: '...'}\n",
        )
        .expect("Istio's config reads");
        assert_eq!(istio.unused().len(), 1);
        for (text, problem) in [
            ("policy: sometimes", "policy"),
            (
                "neverInjectSelector: [{matchExpressions: [{key: a, operator: In}]}]",
                "neverInjectSelector[0].matchExpressions[0]",
            ),
        ] {
            let err = InjectionPolicy::parse(text).expect_err("refused");
            assert!(err.contains(problem), "{problem:?} vs {err}");
        }
    }
}
