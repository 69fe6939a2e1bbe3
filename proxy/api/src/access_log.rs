//! Access log formats: Envoy's command operators (`%RESPONSE_CODE%`, `%REQ(USER-AGENT)%`, ...)
//! as Istio's `accessLogFormat` and `accessLogEncoding` use them, parsed once per config push
//! and rendered per entry from whatever the proxy recorded ([`Fields`]).
//!
//! [`ISTIO_TEXT_FORMAT`] and [`ISTIO_JSON_FIELDS`] are the formats istiod configures when the
//! mesh config sets none. An operator Remora does not know is an error naming it, so the
//! control plane refuses the mesh config instead of a sidecar printing something else.

use std::fmt::Write as _;

/// istiod's default text format (`EnvoyTextLogFormat`).
pub const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% \
    %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% \
    %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \
    \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \
    %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \
    \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% \
    %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% \
    %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// istiod's default JSON fields (`EnvoyJSONLogFormatIstio`), in its order.
pub const ISTIO_JSON_FIELDS: [(&str, &str); 22] = [
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
];

/// A value an entry has: each operator that is not a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    StartTime,
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    RequestedServerName,
    RouteName,
}

impl Value {
    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "START_TIME" => Value::StartTime,
            "PROTOCOL" => Value::Protocol,
            "RESPONSE_CODE" => Value::ResponseCode,
            "RESPONSE_FLAGS" => Value::ResponseFlags,
            "RESPONSE_CODE_DETAILS" => Value::ResponseCodeDetails,
            "CONNECTION_TERMINATION_DETAILS" => Value::ConnectionTerminationDetails,
            "UPSTREAM_TRANSPORT_FAILURE_REASON" => Value::UpstreamTransportFailureReason,
            "BYTES_RECEIVED" => Value::BytesReceived,
            "BYTES_SENT" => Value::BytesSent,
            "DURATION" => Value::Duration,
            "UPSTREAM_HOST" => Value::UpstreamHost,
            "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Value::UpstreamCluster,
            "UPSTREAM_LOCAL_ADDRESS" => Value::UpstreamLocalAddress,
            "DOWNSTREAM_LOCAL_ADDRESS" => Value::DownstreamLocalAddress,
            "DOWNSTREAM_REMOTE_ADDRESS" => Value::DownstreamRemoteAddress,
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Value::DownstreamRemoteAddressWithoutPort,
            "REQUESTED_SERVER_NAME" => Value::RequestedServerName,
            "ROUTE_NAME" => Value::RouteName,
            _ => return None,
        })
    }
}

/// Which headers a header operator reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// One piece of a format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Value(Value),
    /// `%REQ(A?B)%` / `%RESP(A)%`: header `A` (lowercase; `:method`, `:path`, `:authority`
    /// for the request's own), else `B`, cut to `max` characters.
    Header {
        side: Side,
        name: String,
        fallback: Option<String>,
        max: Option<usize>,
    },
}

/// What a format reads from one entry; `None` prints as Envoy's `-`.
pub trait Fields {
    fn value(&self, value: Value) -> Option<String>;
    /// Header `name` (lowercase) of the request or response.
    fn header(&self, side: Side, name: &str) -> Option<&str>;
}

/// A parsed format: text with operators, or JSON fields whose values are formats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    Text(Vec<Piece>),
    Json(Vec<(String, Vec<Piece>)>),
}

/// Why a format cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("%{0}% is not a command operator Remora supports")]
    Unknown(String),
    #[error("an operator opened with % is not closed")]
    Unclosed,
    #[error("{0}: a header operator needs a header name, as in %REQ(USER-AGENT)%")]
    Header(String),
}

fn parse_pieces(text: &str) -> Result<Vec<Piece>, FormatError> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut literal = String::new();
    while let Some(start) = rest.find('%') {
        literal.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        // `%%` is a literal percent sign.
        if let Some(tail) = after.strip_prefix('%') {
            literal.push('%');
            rest = tail;
            continue;
        }
        let end = after.find('%').ok_or(FormatError::Unclosed)?;
        let operator = &after[..end];
        rest = &after[end + 1..];
        if !literal.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut literal)));
        }
        pieces.push(operator_piece(operator)?);
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    Ok(pieces)
}

fn operator_piece(operator: &str) -> Result<Piece, FormatError> {
    let header = |side, args: &str, max: Option<usize>| {
        let (name, fallback) = match args.split_once('?') {
            Some((name, fallback)) => (name, Some(fallback.to_ascii_lowercase())),
            None => (args, None),
        };
        if name.is_empty() || fallback.as_deref() == Some("") {
            return Err(FormatError::Header(operator.to_owned()));
        }
        Ok(Piece::Header {
            side,
            name: name.to_ascii_lowercase(),
            fallback,
            max,
        })
    };
    for (prefix, side) in [("REQ(", Side::Request), ("RESP(", Side::Response)] {
        if let Some(args) = operator.strip_prefix(prefix) {
            let (args, max) = match args.split_once("):") {
                Some((args, max)) => (
                    args,
                    Some(
                        max.parse()
                            .map_err(|_| FormatError::Unknown(operator.to_owned()))?,
                    ),
                ),
                None => (
                    args.strip_suffix(')')
                        .ok_or_else(|| FormatError::Header(operator.to_owned()))?,
                    None,
                ),
            };
            return header(side, args, max);
        }
    }
    Value::named(operator)
        .map(Piece::Value)
        .ok_or_else(|| FormatError::Unknown(operator.to_owned()))
}

impl Format {
    /// A text format (`accessLogFormat`); a missing final newline is added, as istiod does.
    pub fn text(text: &str) -> Result<Self, FormatError> {
        let mut pieces = parse_pieces(text)?;
        if !text.ends_with('\n') {
            pieces.push(Piece::Text("\n".to_owned()));
        }
        Ok(Format::Text(pieces))
    }

    /// A JSON format: `fields` in order, each a text with operators.
    pub fn json<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, FormatError> {
        fields
            .into_iter()
            .map(|(key, value)| Ok((key.to_owned(), parse_pieces(value)?)))
            .collect::<Result<_, _>>()
            .map(Format::Json)
    }

    /// Istio's default format: its text line, or with `json`, its JSON fields.
    pub fn istio(json: bool) -> Result<Self, FormatError> {
        if json {
            Self::json(ISTIO_JSON_FIELDS)
        } else {
            Self::text(ISTIO_TEXT_FORMAT)
        }
    }

    /// The request headers entries must keep for this format.
    pub fn request_headers(&self) -> Vec<String> {
        self.headers(Side::Request)
    }

    /// The response headers entries must keep for this format.
    pub fn response_headers(&self) -> Vec<String> {
        self.headers(Side::Response)
    }

    fn headers(&self, wanted: Side) -> Vec<String> {
        let pieces: Vec<&Piece> = match self {
            Format::Text(pieces) => pieces.iter().collect(),
            Format::Json(fields) => fields.iter().flat_map(|(_, p)| p).collect(),
        };
        let mut names = Vec::new();
        for piece in pieces {
            if let Piece::Header {
                side,
                name,
                fallback,
                ..
            } = piece
            {
                if *side == wanted {
                    names.extend(
                        [Some(name), fallback.as_ref()]
                            .into_iter()
                            .flatten()
                            .cloned(),
                    );
                }
            }
        }
        names.sort();
        names.dedup();
        names
    }

    /// One line for `fields`, ending in a newline.
    pub fn render(&self, fields: &impl Fields) -> String {
        let mut out = String::new();
        match self {
            Format::Text(pieces) => render_pieces(pieces, fields, &mut out),
            Format::Json(entries) => {
                let mut object = serde_json::Map::new();
                for (key, pieces) in entries {
                    let mut value = String::new();
                    render_pieces(pieces, fields, &mut value);
                    object.insert(key.clone(), json_value(value));
                }
                out = serde_json::Value::Object(object).to_string();
                out.push('\n');
            }
        }
        out
    }
}

/// Numbers print as JSON numbers and `-` as null, as Envoy's JSON formatter types them.
fn json_value(text: String) -> serde_json::Value {
    if text == "-" {
        return serde_json::Value::Null;
    }
    match text.parse::<u64>() {
        Ok(number) => serde_json::Value::from(number),
        Err(_) => serde_json::Value::String(text),
    }
}

fn render_pieces(pieces: &[Piece], fields: &impl Fields, out: &mut String) {
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Value(value) => match fields.value(*value) {
                Some(text) => out.push_str(&text),
                None => out.push('-'),
            },
            Piece::Header {
                side,
                name,
                fallback,
                max,
            } => {
                let found = fields
                    .header(*side, name)
                    .or_else(|| fallback.as_deref().and_then(|f| fields.header(*side, f)));
                match found {
                    Some(text) => {
                        let text = match max {
                            Some(max) => text
                                .char_indices()
                                .nth(*max)
                                .map_or(text, |(i, _)| &text[..i]),
                            None => text,
                        };
                        let _ = write!(out, "{text}");
                    }
                    None => out.push('-'),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
