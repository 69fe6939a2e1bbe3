use std::collections::BTreeMap;

use super::*;

/// An entry as a table: values by operator, headers by side and name.
#[derive(Default)]
struct Entry {
    values: Vec<(Value, &'static str)>,
    request: BTreeMap<&'static str, &'static str>,
    response: BTreeMap<&'static str, &'static str>,
}

impl Fields for Entry {
    fn value(&self, value: Value) -> Option<String> {
        self.values
            .iter()
            .find(|(v, _)| *v == value)
            .map(|(_, text)| (*text).to_owned())
    }

    fn header(&self, side: Side, name: &str) -> Option<&str> {
        match side {
            Side::Request => self.request.get(name).copied(),
            Side::Response => self.response.get(name).copied(),
        }
    }
}

fn entry() -> Entry {
    Entry {
        values: vec![
            (Value::StartTime, "2026-12-06T21:00:00.000Z"),
            (Value::Protocol, "HTTP/1.1"),
            (Value::ResponseCode, "200"),
            (Value::ResponseFlags, "-"),
            (Value::ResponseCodeDetails, "via_upstream"),
            (Value::BytesReceived, "0"),
            (Value::BytesSent, "31"),
            (Value::Duration, "3"),
            (Value::UpstreamHost, "198.18.0.11:8080"),
            (
                Value::UpstreamCluster,
                "outbound|8000||httpbin.demo.svc.cluster.local",
            ),
            (Value::DownstreamLocalAddress, "198.19.0.1:8000"),
            (Value::DownstreamRemoteAddress, "198.18.0.10:41234"),
            (Value::RouteName, "default"),
        ],
        request: [
            (":method", "GET"),
            (":path", "/ip"),
            (":authority", "httpbin.demo:8000"),
            ("user-agent", "curl/8.5.0"),
            ("x-request-id", "5e1c"),
        ]
        .into(),
        response: BTreeMap::new(),
    }
}

#[test]
fn istios_default_text_format_prints_as_envoy_prints_it() {
    let line = Format::istio(false).expect("default").render(&entry());
    assert_eq!(
        line,
        "[2026-12-06T21:00:00.000Z] \"GET /ip HTTP/1.1\" 200 - via_upstream - \"-\" 0 31 3 - \
         \"-\" \"curl/8.5.0\" \"5e1c\" \"httpbin.demo:8000\" \"198.18.0.11:8080\" \
         outbound|8000||httpbin.demo.svc.cluster.local - 198.19.0.1:8000 198.18.0.10:41234 - \
         default\n"
    );
}

#[test]
fn json_has_istios_fields_typed() {
    let line = Format::istio(true).expect("default").render(&entry());
    let json: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/ip");
    assert_eq!(json["response_code"], 200);
    assert_eq!(json["bytes_sent"], 31);
    assert_eq!(json["upstream_service_time"], serde_json::Value::Null);
    assert_eq!(json["route_name"], "default");
    let keys: Vec<&String> = json.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), ISTIO_JSON_FIELDS.len());
}

#[test]
fn custom_formats_read_headers_with_fallbacks_and_limits() {
    let cases = [
        ("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "/ip\n"),
        ("%REQ(USER-AGENT):4% 100%%", "curl 100%\n"),
        ("%RESP(X-MISSING)% %RESPONSE_CODE%\n", "- 200\n"),
        ("[%DOWNSTREAM_REMOTE_ADDRESS%]", "[198.18.0.10:41234]\n"),
    ];
    for (format, line) in cases {
        let parsed = Format::text(format).unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(parsed.render(&entry()), line, "{format}");
    }
    let headers = Format::text("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESP(Server)%").expect("ok");
    assert_eq!(
        headers.request_headers(),
        vec![":path".to_owned(), "x-envoy-original-path".to_owned()]
    );
    assert_eq!(headers.response_headers(), vec!["server".to_owned()]);
}

#[test]
fn unknown_or_broken_operators_are_refused_by_name() {
    let cases = [
        (
            "%DYNAMIC_METADATA(istio:x)%",
            FormatError::Unknown("DYNAMIC_METADATA(istio:x)".into()),
        ),
        ("%RESPONSE_CODE", FormatError::Unclosed),
        ("%REQ()%", FormatError::Header("REQ()".into())),
        ("%REQ(A?)%", FormatError::Header("REQ(A?)".into())),
        (
            "%REQ(USER-AGENT):x%",
            FormatError::Unknown("REQ(USER-AGENT):x".into()),
        ),
    ];
    for (format, error) in cases {
        assert_eq!(Format::text(format), Err(error), "{format}");
    }
}
