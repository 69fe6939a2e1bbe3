//! Trace context on the wire: W3C `traceparent` (with `tracestate`, which passes through) and
//! Zipkin's B3, as several `x-b3-*` headers or one `b3` header, read from a request and
//! written on the one the sidecar sends on; and `x-request-id`, made when a request has none.
//!
//! Pure functions over header maps, table-tested. Values are written from one buffer per
//! request: the `traceparent` text holds the trace and span ids B3's headers repeat, so its
//! slices serve them without another allocation.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Trace header formats, as a set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Formats(u8);

impl Formats {
    pub const NONE: Formats = Formats(0);
    pub const W3C: Formats = Formats(1);
    pub const B3_MULTI: Formats = Formats(2);
    pub const B3_SINGLE: Formats = Formats(4);

    pub fn contains(self, other: Formats) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Formats {
    type Output = Formats;

    fn bitor(self, other: Formats) -> Formats {
        Formats(self.0 | other.0)
    }
}

/// What a request said about its trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    /// The caller's trace and span, when it sent them.
    pub parent: Option<(u128, u64)>,
    /// The caller's sampling decision, when it made one (B3 may send one without ids).
    pub sampled: Option<bool>,
    /// B3's debug flag: sampled, and said so on the way on.
    pub debug: bool,
    /// The formats it came in, which the request sent on is written in too.
    pub formats: Formats,
}

/// Reads a request's trace context: `traceparent` first, then `b3`, then `x-b3-*`; a
/// malformed header counts as absent.
pub fn extract(headers: &HeaderMap) -> Incoming {
    if let Some(incoming) = headers.get(TRACEPARENT).and_then(w3c) {
        return incoming;
    }
    if let Some(incoming) = headers.get(B3).and_then(b3_single) {
        return incoming;
    }
    b3_multi(headers).unwrap_or_default()
}

fn w3c(value: &HeaderValue) -> Option<Incoming> {
    let text = value.to_str().ok()?.trim();
    let mut parts = text.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    // Version 00 has exactly four fields; later versions may add some.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    u8::from_str_radix(version, 16).ok()?;
    let trace = hex_id(trace, 32)?;
    let span = hex_id(span, 16)?;
    let flags = (flags.len() == 2).then(|| u8::from_str_radix(flags, 16).ok())??;
    Some(Incoming {
        parent: Some((trace, u64::try_from(span).ok()?)),
        sampled: Some(flags & 1 == 1),
        debug: false,
        formats: Formats::W3C,
    })
}

/// `b3: {trace}-{span}[-{flag}[-{parent}]]`, or the flag alone; the flag is `1`, `0` or `d`
/// (debug).
fn b3_single(value: &HeaderValue) -> Option<Incoming> {
    let text = value.to_str().ok()?.trim();
    let mut parts = text.split('-');
    let first = parts.next()?;
    let decision = |flag: &str| match flag {
        "1" => Some((true, false)),
        "d" => Some((true, true)),
        "0" => Some((false, false)),
        _ => None,
    };
    let Some(span) = parts.next() else {
        let (sampled, debug) = decision(first)?;
        return Some(Incoming {
            parent: None,
            sampled: Some(sampled),
            debug,
            formats: Formats::B3_SINGLE,
        });
    };
    let flag = match parts.next() {
        Some(flag) => Some(decision(flag)?),
        None => None,
    };
    if let Some(parent) = parts.next() {
        hex_id(parent, 16)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Incoming {
        parent: Some((b3_trace_id(first)?, u64::try_from(hex_id(span, 16)?).ok()?)),
        sampled: flag.map(|(sampled, _)| sampled),
        debug: flag.is_some_and(|(_, debug)| debug),
        formats: Formats::B3_SINGLE,
    })
}

fn b3_multi(headers: &HeaderMap) -> Option<Incoming> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let debug = text(B3_FLAGS) == Some("1");
    let sampled = match text(B3_SAMPLED) {
        _ if debug => Some(true),
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        _ => None,
    };
    let ids = match (text(B3_TRACE_ID), text(B3_SPAN_ID)) {
        (Some(trace), Some(span)) => {
            Some((b3_trace_id(trace)?, u64::try_from(hex_id(span, 16)?).ok()?))
        }
        _ => None,
    };
    (ids.is_some() || sampled.is_some()).then_some(Incoming {
        parent: ids,
        sampled,
        debug,
        formats: Formats::B3_MULTI,
    })
}

/// A B3 trace id: 128 bits, or 64 (the high half zero).
fn b3_trace_id(text: &str) -> Option<u128> {
    hex_id(text, 32).or_else(|| hex_id(text, 16))
}

/// `text` as an id of `len` lowercase hex digits, not all zero.
fn hex_id(text: &str, len: usize) -> Option<u128> {
    if text.len() != len || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(text, 16).ok().filter(|&id| id != 0)
}

/// This hop's context, written on the request it sends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub trace_id: u128,
    /// The span the next hop is a child of.
    pub span_id: u64,
    /// Its own parent (B3 names it).
    pub parent_span_id: Option<u64>,
    pub sampled: bool,
    /// B3's debug flag, passed on.
    pub debug: bool,
}

/// Writes `context` into `headers` in each of `formats`, replacing what was there.
pub fn inject(headers: &mut HeaderMap, context: &Outgoing, formats: Formats) {
    if formats == Formats::NONE {
        return;
    }
    // One buffer: "00-<trace>-<span>-0x" (trace id at 3..35, span id at 36..52), then the
    // parent span id (55..71).
    let mut text = BytesMut::with_capacity(71);
    text.put_slice(b"00-");
    put_hex(&mut text, context.trace_id, 32);
    text.put_u8(b'-');
    put_hex(&mut text, u128::from(context.span_id), 16);
    text.put_slice(if context.sampled { b"-01" } else { b"-00" });
    if let Some(parent) = context.parent_span_id {
        put_hex(&mut text, u128::from(parent), 16);
    }
    let text = text.freeze();
    let value = |bytes: Bytes| HeaderValue::from_maybe_shared(bytes).ok();
    if formats.contains(Formats::W3C) {
        if let Some(v) = value(text.slice(..55)) {
            headers.insert(TRACEPARENT, v);
        }
    }
    if formats.contains(Formats::B3_MULTI) {
        if let Some(v) = value(text.slice(3..35)) {
            headers.insert(B3_TRACE_ID, v);
        }
        if let Some(v) = value(text.slice(36..52)) {
            headers.insert(B3_SPAN_ID, v);
        }
        match context
            .parent_span_id
            .and_then(|_| value(text.slice(55..71)))
        {
            Some(parent) => headers.insert(B3_PARENT_SPAN_ID, parent),
            None => headers.remove(B3_PARENT_SPAN_ID),
        };
        // Debug implies sampled, and B3 sends it instead of the sampling decision.
        if context.debug {
            headers.insert(B3_FLAGS, HeaderValue::from_static("1"));
            headers.remove(B3_SAMPLED);
        } else {
            let sampled = if context.sampled { "1" } else { "0" };
            headers.insert(B3_SAMPLED, HeaderValue::from_static(sampled));
            headers.remove(B3_FLAGS);
        }
    }
    if formats.contains(Formats::B3_SINGLE) {
        let mut single = BytesMut::with_capacity(68);
        single.put_slice(&text[3..52]);
        single.put_slice(match (context.debug, context.sampled) {
            (true, _) => b"-d",
            (false, true) => b"-1",
            (false, false) => b"-0",
        });
        if context.parent_span_id.is_some() {
            single.put_u8(b'-');
            single.put_slice(&text[55..71]);
        }
        if let Some(v) = value(single.freeze()) {
            headers.insert(B3, v);
        }
    }
}

/// Gives a request without an `x-request-id` a new one (a random UUID, as Envoy makes; the
/// draw only happens then).
pub fn ensure_request_id(headers: &mut HeaderMap, random: impl FnOnce() -> u128) {
    if headers.contains_key(REQUEST_ID) {
        return;
    }
    // Version 4, variant 10.
    let id = (random() & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let mut text = BytesMut::with_capacity(36);
    // 8-4-4-4-12 digits.
    for (shift, digits) in [(96, 8), (80, 4), (64, 4), (48, 4), (0, 12)] {
        if shift != 96 {
            text.put_u8(b'-');
        }
        put_hex(&mut text, id >> shift, digits);
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(text.freeze()) {
        headers.insert(REQUEST_ID, value);
    }
}

/// The low `digits` hex digits of `id`.
fn put_hex(out: &mut BytesMut, id: u128, digits: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.put_u8(DIGITS[((id >> (i * 4)) & 0xf) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                )
            })
            .collect()
    }

    const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
    const SPAN: u64 = 0x00f0_67aa_0ba9_02b7;

    #[test]
    fn every_format_is_read_and_malformed_headers_are_absent() {
        let traced = |sampled, formats| Incoming {
            parent: Some((TRACE, SPAN)),
            sampled,
            debug: false,
            formats,
        };
        let short = Incoming {
            parent: Some((0xa3ce_929d_0e0e_4736, SPAN)),
            sampled: Some(true),
            debug: true,
            formats: Formats::B3_MULTI,
        };
        let cases: Vec<(Vec<(&str, &str)>, Incoming)> = vec![
            (
                vec![(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )],
                traced(Some(true), Formats::W3C),
            ),
            (
                vec![(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                )],
                traced(Some(false), Formats::W3C),
            ),
            // A later version may carry more fields.
            (
                vec![(
                    "traceparent",
                    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
                )],
                traced(Some(true), Formats::W3C),
            ),
            (
                vec![(
                    "b3",
                    "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90",
                )],
                traced(Some(true), Formats::B3_SINGLE),
            ),
            (
                vec![("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7")],
                traced(None, Formats::B3_SINGLE),
            ),
            (
                vec![("b3", "0")],
                Incoming {
                    parent: None,
                    sampled: Some(false),
                    debug: false,
                    formats: Formats::B3_SINGLE,
                },
            ),
            (
                vec![("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-d")],
                Incoming {
                    debug: true,
                    ..traced(Some(true), Formats::B3_SINGLE)
                },
            ),
            (
                vec![
                    ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
                    ("x-b3-spanid", "00f067aa0ba902b7"),
                    ("x-b3-sampled", "0"),
                ],
                traced(Some(false), Formats::B3_MULTI),
            ),
            (
                vec![
                    ("x-b3-traceid", "a3ce929d0e0e4736"),
                    ("x-b3-spanid", "00f067aa0ba902b7"),
                    ("x-b3-flags", "1"),
                ],
                short,
            ),
            // traceparent wins over B3.
            (
                vec![
                    (
                        "traceparent",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    ),
                    ("x-b3-traceid", "a3ce929d0e0e4736"),
                    ("x-b3-spanid", "1111111111111111"),
                ],
                traced(Some(true), Formats::W3C),
            ),
            // Malformed: all-zero ids, uppercase, wrong lengths, version ff, extra fields.
            (
                vec![(
                    "traceparent",
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                )],
                Incoming::default(),
            ),
            (
                vec![(
                    "traceparent",
                    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                )],
                Incoming::default(),
            ),
            (
                vec![(
                    "traceparent",
                    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )],
                Incoming::default(),
            ),
            (
                vec![(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                )],
                Incoming::default(),
            ),
            (vec![("b3", "4bf92f3577b34da6-1")], Incoming::default()),
            (
                vec![("x-b3-traceid", "4bf92f3577b34da6")],
                Incoming::default(),
            ),
            (vec![], Incoming::default()),
        ];
        for (pairs, expected) in cases {
            assert_eq!(extract(&headers(&pairs)), expected, "{pairs:?}");
        }
    }

    #[test]
    fn written_context_reads_back_in_every_format() {
        let context = Outgoing {
            trace_id: TRACE,
            span_id: 0x1234_5678_9abc_def0,
            parent_span_id: Some(SPAN),
            sampled: true,
            debug: false,
        };
        let mut written = headers(&[("x-b3-flags", "1"), ("tracestate", "vendor=1")]);
        inject(
            &mut written,
            &context,
            Formats::W3C | Formats::B3_MULTI | Formats::B3_SINGLE,
        );
        assert_eq!(
            written[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-123456789abcdef0-01"
        );
        assert_eq!(written[B3_TRACE_ID], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(written[B3_SPAN_ID], "123456789abcdef0");
        assert_eq!(written[B3_PARENT_SPAN_ID], "00f067aa0ba902b7");
        assert_eq!(written[B3_SAMPLED], "1");
        assert!(!written.contains_key(B3_FLAGS));
        assert_eq!(
            written[B3],
            "4bf92f3577b34da6a3ce929d0e0e4736-123456789abcdef0-1-00f067aa0ba902b7"
        );
        assert_eq!(
            written["tracestate"], "vendor=1",
            "tracestate passes through"
        );
        let read = Incoming {
            parent: Some((TRACE, 0x1234_5678_9abc_def0)),
            sampled: Some(true),
            debug: false,
            formats: Formats::W3C,
        };
        assert_eq!(extract(&written), read);
        written.remove(TRACEPARENT);
        assert_eq!(extract(&written).parent, read.parent);
        written.remove(B3);
        assert_eq!(extract(&written).parent, read.parent);
        // Only the formats asked for.
        let mut w3c_only = HeaderMap::new();
        inject(
            &mut w3c_only,
            &Outgoing {
                sampled: false,
                ..context
            },
            Formats::W3C,
        );
        assert_eq!(w3c_only.len(), 1);
        assert!(w3c_only[TRACEPARENT]
            .to_str()
            .expect("ascii")
            .ends_with("-00"));
        // B3's debug flag travels on, in place of the sampling decision.
        let mut debug = headers(&[("x-b3-sampled", "1")]);
        let context = Outgoing {
            debug: true,
            parent_span_id: None,
            ..context
        };
        inject(&mut debug, &context, Formats::B3_MULTI | Formats::B3_SINGLE);
        assert_eq!(debug[B3_FLAGS], "1");
        assert!(!debug.contains_key(B3_SAMPLED) && !debug.contains_key(B3_PARENT_SPAN_ID));
        assert!(debug[B3]
            .to_str()
            .expect("ascii")
            .ends_with("-123456789abcdef0-d"));
        assert!(extract(&debug).debug);
    }

    #[test]
    fn a_request_id_is_made_only_when_missing() {
        let mut made = HeaderMap::new();
        ensure_request_id(&mut made, || u128::MAX);
        let id = made[REQUEST_ID].to_str().expect("ascii").to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "version 4: {id}");
        assert!(
            matches!(&id[19..20], "8" | "9" | "a" | "b"),
            "variant: {id}"
        );
        assert_eq!(id.matches('-').count(), 4);
        let mut kept = headers(&[("x-request-id", "from-the-app")]);
        ensure_request_id(&mut kept, || {
            unreachable!("no draw when the request has an id")
        });
        assert_eq!(kept[REQUEST_ID], "from-the-app");
    }
}
