//! Kubernetes label selectors (`matchLabels`, `matchExpressions` with `In`, `NotIn`, `Exists`,
//! `DoesNotExist`), as the API server evaluates a webhook's `namespaceSelector` and
//! `objectSelector` and as injection evaluates `neverInjectSelector`/`alwaysInjectSelector`:
//! every requirement must hold; an empty selector selects everything.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `selector` is well formed; `Err` names the requirement that is not.
pub fn check(selector: &LabelSelector) -> Result<(), String> {
    matches(selector, &BTreeMap::new()).map(drop)
}

/// Whether `labels` satisfy `selector`; `Err` names a requirement that is not well formed
/// (whatever the labels).
pub fn matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    let exact = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let mut holds_all = exact;
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let values = requirement.values.as_deref().unwrap_or_default();
        let value = labels.get(&requirement.key);
        let holds = match requirement.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "matchExpressions[{i}]: {} needs values",
                    requirement.operator
                ))
            }
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!(
                    "matchExpressions[{i}]: {} takes no values",
                    requirement.operator
                ))
            }
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => {
                return Err(format!(
                    "matchExpressions[{i}].operator: {other:?} is not one of In, NotIn, Exists, DoesNotExist"
                ))
            }
        };
        holds_all &= holds;
    }
    Ok(holds_all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(yaml: &str) -> LabelSelector {
        serde_saphyr::from_str(yaml).expect("selector")
    }

    #[test]
    fn requirements_hold_together() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let cases = [
            ("{}", true),
            ("{matchLabels: {app: web}}", true),
            ("{matchLabels: {app: db}}", false),
            ("{matchExpressions: [{key: tier, operator: In, values: [front, back]}]}", true),
            ("{matchExpressions: [{key: tier, operator: NotIn, values: [front]}]}", false),
            ("{matchExpressions: [{key: missing, operator: NotIn, values: [x]}]}", true),
            ("{matchExpressions: [{key: app, operator: Exists}]}", true),
            ("{matchExpressions: [{key: app, operator: DoesNotExist}]}", false),
            (
                "{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: In, values: [back]}]}",
                false,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(matches(&selector(text), &labels), Ok(expected), "{text}");
        }
        for (text, problem) in [
            (
                "{matchExpressions: [{key: a, operator: In}]}",
                "In needs values",
            ),
            (
                "{matchExpressions: [{key: a, operator: Exists, values: [x]}]}",
                "takes no values",
            ),
            (
                "{matchExpressions: [{key: a, operator: Gt, values: ['1']}]}",
                "\"Gt\" is not one of",
            ),
        ] {
            let err = matches(&selector(text), &labels).expect_err("malformed");
            assert!(err.contains(problem), "{problem:?} vs {err}");
        }
    }
}
