//! A rule's or a backend's `filters`: header changes, mirrors, redirects and rewrites, only those
//! Istio translates at each place ([`Place`]); any other filter rejects the route.

use remora_api::proto::config as proto;

use super::Reader;
use crate::config::routing::gateway::{
    spec::{
        FilterSpec, HeaderFilterSpec, HeaderSpec, MirrorSpec, PathModifierSpec, RedirectSpec,
        RewriteSpec,
    },
    syntax::{is_header_value, is_token},
};

/// Which filter types a place takes: what Istio translates there.
#[derive(Clone, Copy)]
pub(super) enum Place {
    HttpRule,
    GrpcRule,
    Backend,
}

impl Place {
    fn takes(self, kind: &str) -> bool {
        match self {
            Place::HttpRule => matches!(
                kind,
                "RequestHeaderModifier"
                    | "ResponseHeaderModifier"
                    | "RequestMirror"
                    | "RequestRedirect"
                    | "URLRewrite"
            ),
            Place::GrpcRule => matches!(
                kind,
                "RequestHeaderModifier" | "ResponseHeaderModifier" | "RequestMirror"
            ),
            Place::Backend => matches!(kind, "RequestHeaderModifier" | "ResponseHeaderModifier"),
        }
    }
}

/// What a list of filters does.
#[derive(Default)]
pub(super) struct Filters {
    pub(super) request_headers: Option<proto::HeaderOps>,
    pub(super) response_headers: Option<proto::HeaderOps>,
    pub(super) redirect: Option<proto::Redirect>,
    pub(super) rewrite: Option<proto::Rewrite>,
    pub(super) mirrors: Vec<proto::Mirror>,
    /// The `replacePrefixMatch` fields set, which need the rule's one match to be a prefix.
    pub(super) replaces_prefix: Vec<String>,
}

/// A path modifier's change.
enum PathChange {
    Full(String),
    Prefix(String),
}

impl Reader<'_> {
    pub(super) fn filters(&mut self, field: &str, list: Vec<FilterSpec>, place: Place) -> Filters {
        let mut filters = Filters::default();
        let mut seen: Vec<String> = Vec::new();
        for (j, spec) in list.into_iter().enumerate() {
            let item = format!("{field}[{j}]");
            if !place.takes(&spec.kind) {
                self.problem(
                    format!("{item}.type"),
                    format!("{} is not supported", spec.kind),
                );
                continue;
            }
            // The CRD's CEL rules: every type but RequestMirror at most once.
            if spec.kind != "RequestMirror" && seen.contains(&spec.kind) {
                self.problem(
                    format!("{item}.type"),
                    format!("{} is listed twice", spec.kind),
                );
                continue;
            }
            seen.push(spec.kind.clone());
            let set = [
                (
                    "RequestHeaderModifier",
                    "requestHeaderModifier",
                    spec.request_header_modifier.is_some(),
                ),
                (
                    "ResponseHeaderModifier",
                    "responseHeaderModifier",
                    spec.response_header_modifier.is_some(),
                ),
                (
                    "RequestMirror",
                    "requestMirror",
                    spec.request_mirror.is_some(),
                ),
                (
                    "RequestRedirect",
                    "requestRedirect",
                    spec.request_redirect.is_some(),
                ),
                ("URLRewrite", "urlRewrite", spec.url_rewrite.is_some()),
                ("CORS", "cors", spec.cors.is_some()),
                ("ExternalAuth", "externalAuth", spec.external_auth.is_some()),
                ("ExtensionRef", "extensionRef", spec.extension_ref.is_some()),
            ];
            for (kind, name, present) in set {
                if present && kind != spec.kind {
                    self.problem(
                        format!("{item}.{name}"),
                        format!("set, but the type is {}", spec.kind),
                    );
                } else if !present && kind == spec.kind {
                    self.problem(format!("{item}.{name}"), format!("required by type {kind}"));
                }
            }
            if let Some(ops) = spec.request_header_modifier {
                filters.request_headers =
                    Some(self.header_ops(&format!("{item}.requestHeaderModifier"), ops));
            }
            if let Some(ops) = spec.response_header_modifier {
                filters.response_headers =
                    Some(self.header_ops(&format!("{item}.responseHeaderModifier"), ops));
            }
            if let Some(mirror) = spec.request_mirror {
                let mirror = self.mirror(&format!("{item}.requestMirror"), mirror);
                filters.mirrors.push(mirror);
            }
            if let Some(redirect) = spec.request_redirect {
                let redirect = self.redirect(
                    &format!("{item}.requestRedirect"),
                    redirect,
                    &mut filters.replaces_prefix,
                );
                filters.redirect = Some(redirect);
            }
            if let Some(rewrite) = spec.url_rewrite {
                filters.rewrite = self.rewrite(
                    &format!("{item}.urlRewrite"),
                    rewrite,
                    &mut filters.replaces_prefix,
                );
            }
        }
        let rewrites = seen.iter().any(|k| k == "URLRewrite");
        if seen.iter().any(|k| k == "RequestRedirect") && rewrites {
            self.problem(field, "RequestRedirect and URLRewrite cannot be combined");
        }
        filters
    }

    /// Header changes. Names are compared without case, so they are lowercased; of names
    /// equal but for case only the first counts (Gateway API; Istio's `headerListToMap`), a
    /// name listed twice exactly is refused (a map list); values must be header values
    /// (Istio's `isValidHeaderValue`).
    fn header_ops(&mut self, field: &str, spec: HeaderFilterSpec) -> proto::HeaderOps {
        let set = self.headers(&format!("{field}.set"), spec.set.unwrap_or_default());
        let add = self.headers(&format!("{field}.add"), spec.add.unwrap_or_default());
        let mut remove: Vec<String> = Vec::new();
        for (k, name) in spec.remove.unwrap_or_default().into_iter().enumerate() {
            if !is_token(&name) {
                self.problem(
                    format!("{field}.remove[{k}]"),
                    format!("{name:?} is not a header name"),
                );
                continue;
            }
            let name = name.to_ascii_lowercase();
            if !remove.contains(&name) {
                remove.push(name);
            }
        }
        proto::HeaderOps { set, add, remove }
    }

    fn headers(&mut self, field: &str, list: Vec<HeaderSpec>) -> Vec<proto::Header> {
        let mut written: Vec<String> = Vec::new();
        let mut kept: Vec<proto::Header> = Vec::new();
        for (k, header) in list.into_iter().enumerate() {
            let item = format!("{field}[{k}]");
            if !is_token(&header.name) {
                self.problem(
                    format!("{item}.name"),
                    format!("{:?} is not a header name", header.name),
                );
                continue;
            }
            if written.contains(&header.name) {
                self.problem(
                    format!("{item}.name"),
                    format!("{:?} is listed twice", header.name),
                );
                continue;
            }
            written.push(header.name.clone());
            if header.value.is_empty() {
                self.problem(format!("{item}.value"), "required");
            } else if !is_header_value(&header.value) {
                self.problem(
                    format!("{item}.value"),
                    format!("{:?} is not a header value", header.value),
                );
            }
            let name = header.name.to_ascii_lowercase();
            if kept.iter().any(|h| h.name == name) {
                continue;
            }
            kept.push(proto::Header {
                name,
                value: header.value,
            });
        }
        kept
    }

    /// A mirror; one whose backend is not a Service keeps an empty host, which the sidecar
    /// skips (Istio drops it).
    fn mirror(&mut self, field: &str, spec: MirrorSpec) -> proto::Mirror {
        let percent = match (spec.percent, spec.fraction) {
            (Some(_), Some(_)) => {
                self.problem(field, "set percent or fraction, not both");
                100.0
            }
            (Some(percent), None) => {
                if !(0..=100).contains(&percent) {
                    self.problem(
                        format!("{field}.percent"),
                        format!("{percent} is not between 0 and 100"),
                    );
                }
                percent.clamp(0, 100) as f64
            }
            (None, Some(fraction)) => {
                let denominator = fraction.denominator.unwrap_or(100);
                if denominator < 1 {
                    self.problem(
                        format!("{field}.fraction.denominator"),
                        format!("{denominator} is less than 1"),
                    );
                }
                if !(0..=denominator).contains(&fraction.numerator) {
                    self.problem(
                        format!("{field}.fraction.numerator"),
                        format!(
                            "{} is not between 0 and the denominator ({denominator})",
                            fraction.numerator
                        ),
                    );
                }
                if denominator < 1 || !(0..=denominator).contains(&fraction.numerator) {
                    100.0
                } else {
                    100.0 * fraction.numerator as f64 / denominator as f64
                }
            }
            // "If neither field is specified, 100% of requests will be mirrored."
            (None, None) => 100.0,
        };
        let (host, port) = self.target(&format!("{field}.backendRef"), spec.backend_ref);
        proto::Mirror {
            host,
            port,
            subset: String::new(),
            percent,
        }
    }

    fn redirect(
        &mut self,
        field: &str,
        spec: RedirectSpec,
        replaces_prefix: &mut Vec<String>,
    ) -> proto::Redirect {
        let mut redirect = proto::Redirect::default();
        match spec.scheme {
            None => {}
            Some(scheme) if scheme == "http" || scheme == "https" => redirect.scheme = scheme,
            Some(other) => self.problem(
                format!("{field}.scheme"),
                format!("{other:?} is not one of http, https"),
            ),
        }
        if let Some(hostname) = spec.hostname {
            self.check_hostname(&format!("{field}.hostname"), &hostname);
            redirect.host = hostname;
        }
        match spec.port {
            Some(0) => self.problem(format!("{field}.port"), "must be between 1 and 65535"),
            // Unset, the sidecar keeps the request's port, or the scheme's when the scheme
            // changes, as the spec asks.
            port => redirect.port = u32::from(port.unwrap_or(0)),
        }
        // The CRD's default is 302 (the proto's own, 0, means 301).
        redirect.status = match spec.status_code.unwrap_or(302) {
            code @ (301 | 302 | 303 | 307 | 308) => code as u32,
            other => {
                self.problem(
                    format!("{field}.statusCode"),
                    format!("{other} is not one of 301, 302, 303, 307, 308"),
                );
                302
            }
        };
        if let Some(path) = spec.path {
            match self.path_change(&format!("{field}.path"), path, replaces_prefix) {
                Some(PathChange::Full(path)) => redirect.path = path,
                Some(PathChange::Prefix(prefix)) => redirect.prefix = prefix,
                None => {}
            }
        }
        redirect
    }

    /// A rewrite, `None` when it changes nothing (Istio).
    fn rewrite(
        &mut self,
        field: &str,
        spec: RewriteSpec,
        replaces_prefix: &mut Vec<String>,
    ) -> Option<proto::Rewrite> {
        let mut rewrite = proto::Rewrite::default();
        if let Some(hostname) = spec.hostname {
            self.check_hostname(&format!("{field}.hostname"), &hostname);
            rewrite.authority = hostname;
        }
        if let Some(path) = spec.path {
            match self.path_change(&format!("{field}.path"), path, replaces_prefix) {
                Some(PathChange::Full(path)) => rewrite.path = path,
                Some(PathChange::Prefix(prefix)) => rewrite.prefix = prefix,
                None => {}
            }
        }
        (rewrite != proto::Rewrite::default()).then_some(rewrite)
    }

    fn path_change(
        &mut self,
        field: &str,
        spec: PathModifierSpec,
        replaces_prefix: &mut Vec<String>,
    ) -> Option<PathChange> {
        let full = spec.replace_full_path;
        let prefix = spec.replace_prefix_match;
        let (wanted, unwanted) = match spec.kind.as_str() {
            "ReplaceFullPath" => ("replaceFullPath", ("replacePrefixMatch", prefix.is_some())),
            "ReplacePrefixMatch" => ("replacePrefixMatch", ("replaceFullPath", full.is_some())),
            other => {
                self.problem(
                    format!("{field}.type"),
                    format!("{other:?} is not one of ReplaceFullPath, ReplacePrefixMatch"),
                );
                return None;
            }
        };
        if unwanted.1 {
            self.problem(
                format!("{field}.{}", unwanted.0),
                format!("set, but the type is {}", spec.kind),
            );
        }
        // An empty value would read as "unset" in the proto; both empty paths mean `/`.
        let slash = |value: &str| if value.is_empty() { "/" } else { value }.to_owned();
        match (spec.kind.as_str(), full, prefix) {
            ("ReplaceFullPath", Some(full), _) => Some(PathChange::Full(slash(&full))),
            ("ReplacePrefixMatch", _, Some(prefix)) => {
                replaces_prefix.push(format!("{field}.replacePrefixMatch"));
                // The spec's table treats `/xyz/` as `/xyz` and `/` as the empty string, as
                // Istio does by trimming one trailing `/`.
                Some(PathChange::Prefix(slash(prefix.trim_end_matches('/'))))
            }
            (kind, ..) => {
                self.problem(
                    format!("{field}.{wanted}"),
                    format!("required by type {kind}"),
                );
                None
            }
        }
    }

    /// `PreciseHostname`: lowercase DNS labels, no wildcard.
    fn check_hostname(&mut self, field: &str, hostname: &str) {
        let label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if hostname.len() > 253 || !hostname.split('.').all(label) {
            self.problem(field, format!("{hostname:?} is not a hostname"));
        }
    }
}
