//! ReferenceGrant reading. Mesh routes never consult grants (GEP-1294), but a malformed grant is
//! still reported, as the gateways that share the manifests would act on it.

use serde_json::Value;

use super::{
    spec::{parse, ReferenceGrantSpec},
    ReferenceGrant,
};

pub(super) fn read(value: Value) -> Result<ReferenceGrant, String> {
    let (_, spec): (_, ReferenceGrantSpec) = parse(value)?;
    let mut problems = Vec::new();
    let mut required = |field: String, value: &str| {
        if value.is_empty() {
            problems.push(format!("{field}: required"));
        }
    };
    for (i, from) in spec.from.iter().enumerate() {
        required(format!("spec.from[{i}].kind"), &from.kind);
        required(format!("spec.from[{i}].namespace"), &from.namespace);
    }
    for (i, to) in spec.to.iter().enumerate() {
        required(format!("spec.to[{i}].kind"), &to.kind);
        if let Some(name) = &to.name {
            required(format!("spec.to[{i}].name"), name);
        }
    }
    if spec.from.is_empty() {
        problems.push("spec.from: must list at least one source".to_owned());
    }
    if spec.to.is_empty() {
        problems.push("spec.to: must list at least one target".to_owned());
    }
    if problems.is_empty() {
        Ok(ReferenceGrant { _checked: () })
    } else {
        Err(problems.join("; "))
    }
}
