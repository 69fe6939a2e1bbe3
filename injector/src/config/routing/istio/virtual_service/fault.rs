//! A rule's `fault`: delays and aborts as Istio translates them, where a missing percentage means
//! no request rather than every request.

use remora_api::{proto::config as proto, route::grpc_code};

use crate::config::routing::istio::{
    checks::{ranged, Problems},
    duration::millis,
    spec::{FaultSpec, PercentSpec},
};

/// Istio's fault as it translates it: a delay or abort without a percentage applies to no
/// request (a delay falls back on the deprecated integer `percent`, itself 0 when unset); a
/// delay without `fixedDelay` or an abort without an error type injects nothing.
pub(super) fn fault(spec: FaultSpec, path: &str, p: &mut Problems) -> Option<proto::Fault> {
    if spec.delay.is_none() && spec.abort.is_none() {
        p.add(path, "delay or abort is required");
        return None;
    }
    let mut fault = proto::Fault::default();
    if let Some(delay) = spec.delay {
        let path = format!("{path}.delay");
        if let Some(percentage) = &delay.percentage {
            check_fault_percentage(percentage, &format!("{path}.percentage.value"), p);
        }
        if delay.exponential_delay.is_some() {
            p.unsupported(&format!("{path}.exponentialDelay"));
        }
        let percent = match (&delay.percentage, delay.percent) {
            (Some(percentage), _) => percentage.value(),
            (None, Some(percent)) => {
                f64::from(ranged(percent, 0..=100, &format!("{path}.percent"), p).unwrap_or(0))
            }
            (None, None) => 0.0,
        };
        if let Some(fixed) = delay.fixed_delay {
            fault.delay_ms = millis(fixed, &format!("{path}.fixedDelay"), p);
            fault.delay_percent = percent;
        }
    }
    if let Some(abort) = spec.abort {
        let path = format!("{path}.abort");
        if let Some(percentage) = &abort.percentage {
            check_fault_percentage(percentage, &format!("{path}.percentage.value"), p);
        }
        let kinds = [
            abort.http_status.is_some(),
            abort.grpc_status.is_some(),
            abort.http2_error.is_some(),
        ];
        if kinds.iter().filter(|set| **set).count() > 1 {
            p.add(
                &path,
                "only one of httpStatus, grpcStatus and http2Error may be set",
            );
        }
        if abort.http2_error.is_some() {
            p.unsupported(&format!("{path}.http2Error"));
        }
        if let Some(status) = abort.http_status {
            fault.abort_status =
                ranged(status, 200..=599, &format!("{path}.httpStatus"), p).unwrap_or(0);
        }
        if let Some(status) = abort.grpc_status {
            if status.parse::<u32>().is_ok() || grpc_code(&status).is_none() {
                p.add(
                    &format!("{path}.grpcStatus"),
                    format!("{status:?} is not a gRPC status name such as NOT_FOUND"),
                );
            }
            fault.abort_grpc_status = status;
        }
        fault.abort_percent = abort.percentage.as_ref().map_or(0.0, PercentSpec::value);
    }
    let injects =
        fault.delay_ms > 0 || fault.abort_status > 0 || !fault.abort_grpc_status.is_empty();
    injects.then_some(fault)
}

/// Istio's `validatePercentage`: 0, or between 0.0001 and 100.
fn check_fault_percentage(percentage: &PercentSpec, path: &str, p: &mut Problems) {
    let value = percentage.value();
    if !(0.0..=100.0).contains(&value) || (value > 0.0 && value < 0.0001) {
        p.add(
            path,
            format!("{value} is neither 0 nor between 0.0001 and 100"),
        );
    }
}
