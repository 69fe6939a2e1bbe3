//! The string syntax the Gateway API CRDs impose on paths, header names and values and gRPC
//! names (their patterns and CEL rules), and GEP-2257 durations, as plain functions of the text:
//! the readers call them to name the field that breaks a rule.

/// What is wrong with an `Exact` or `PathPrefix` path, by the CRD's CEL rules.
pub(super) fn path_problem(value: &str) -> Option<&'static str> {
    if !value.starts_with('/') {
        return Some("does not start with /");
    }
    for (part, problem) in [
        ("//", "contains //"),
        ("/./", "contains /./"),
        ("/../", "contains /../"),
        ("%2f", "contains %2f"),
        ("%2F", "contains %2F"),
        ("#", "contains #"),
    ] {
        if value.contains(part) {
            return Some(problem);
        }
    }
    if value.ends_with("/..") || value.ends_with("/.") {
        return Some("ends with /. or /..");
    }
    // `^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$`
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return Some("has a % not followed by two hex digits");
                }
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b"-/._~!$&'()*+,;=:@".contains(&b) => i += 1,
            _ => return Some("has a character a path cannot hold unescaped"),
        }
    }
    None
}

/// An HTTP token (RFC 7230), as `HTTPHeaderName` requires.
pub(super) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Istio's `isValidHeaderValue`: no control character but tab.
pub(super) fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// `^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`
pub(super) fn is_grpc_service(service: &str) -> bool {
    let service = service.strip_prefix('.').unwrap_or(service);
    service.split('.').all(is_grpc_method)
}

/// `^[A-Za-z_][A-Za-z_0-9]*$`
pub(super) fn is_grpc_method(method: &str) -> bool {
    let mut bytes = method.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A Gateway API duration (GEP-2257): one to four components of one to five digits and a unit
/// (`h`, `m`, `s`, `ms`), summed.
pub(super) fn parse_duration(value: &str) -> Option<u64> {
    let mut rest = value;
    let mut total = 0u64;
    let mut components = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=5).contains(&digits) {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.as_bytes().first() {
                Some(b'h') => (3_600_000, 1),
                Some(b'm') => (60_000, 1),
                Some(b's') => (1_000, 1),
                _ => return None,
            }
        };
        rest = &rest[len..];
        total += number * unit;
        components += 1;
    }
    (1..=4).contains(&components).then_some(total)
}
