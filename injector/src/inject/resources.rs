//! The injected containers' resources and image, as Istio's template sets them: the values'
//! defaults, or, when the pod sets any of `sidecar.istio.io/proxyCPU`, `proxyMemory`,
//! `proxyCPULimit`, `proxyMemoryLimit`, exactly what those say (nothing merged with the
//! defaults); `sidecar.istio.io/proxyImage` replaces the image when it is a full reference.

use std::{collections::BTreeMap, sync::LazyLock};

use k8s_openapi::{
    api::core::v1::ResourceRequirements, apimachinery::pkg::api::resource::Quantity,
};
use regex::Regex;

use super::{values::Values, InjectError};

const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";

/// Kubernetes' quantity grammar: a signed decimal number, then an optional binary (`Ki`..`Ei`)
/// or decimal (`n u m k M G T P E`) suffix or an exponent.
static QUANTITY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$",
    )
    .unwrap_or_else(|e| panic!("the quantity pattern: {e}"))
});

/// The resources of both injected containers.
pub fn proxy_resources(
    values: &Values,
    annotations: &BTreeMap<String, String>,
) -> Result<ResourceRequirements, InjectError> {
    let set = [PROXY_CPU, PROXY_MEMORY, PROXY_CPU_LIMIT, PROXY_MEMORY_LIMIT];
    if !set.iter().any(|a| annotations.contains_key(*a)) {
        let quantities = |map: &BTreeMap<String, String>| {
            Some(
                map.iter()
                    .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                    .collect::<BTreeMap<_, _>>(),
            )
            .filter(|m| !m.is_empty())
        };
        let resources = &values.global.proxy.resources;
        return Ok(ResourceRequirements {
            requests: quantities(&resources.requests),
            limits: quantities(&resources.limits),
            ..ResourceRequirements::default()
        });
    }
    let pair =
        |cpu: &str, memory: &str| -> Result<Option<BTreeMap<String, Quantity>>, InjectError> {
            let mut map = BTreeMap::new();
            for (resource, annotation) in [("cpu", cpu), ("memory", memory)] {
                if let Some(value) = annotations.get(annotation) {
                    if !QUANTITY.is_match(value) {
                        return Err(InjectError::annotation(
                            annotation,
                            value,
                            "not a resource quantity such as 100m or 128Mi",
                        ));
                    }
                    map.insert(resource.to_owned(), Quantity(value.clone()));
                }
            }
            Ok(Some(map).filter(|m| !m.is_empty()))
        };
    Ok(ResourceRequirements {
        requests: pair(PROXY_CPU, PROXY_MEMORY)?,
        limits: pair(PROXY_CPU_LIMIT, PROXY_MEMORY_LIMIT)?,
        ..ResourceRequirements::default()
    })
}

/// The image of an injected container whose values name `image`: the pod's
/// `sidecar.istio.io/proxyImage` when it is a full reference (has a `/`), else `image` made one.
pub fn image(values: &Values, image: &str, annotations: &BTreeMap<String, String>) -> String {
    match annotations.get(PROXY_IMAGE) {
        Some(annotated) if annotated.contains('/') => annotated.clone(),
        _ => values.image_reference(image),
    }
}
