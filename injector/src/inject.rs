//! Sidecar injection, the transform istiod's webhook and `istioctl kube-inject` make: a pod in,
//! the pod with Remora's init container, sidecar, volumes and metadata out. Pure (no I/O), so
//! the admission webhook, `remoractl kube-inject` and the local launcher run the very same
//! code, and it is tested with tables and golden files.

pub mod decision;
