//! A mocked Kubernetes API for unit tests, as kube-rs tests itself (`tower-test`): the test
//! holds the server's end, sees each request the code under test makes, asserts it exactly,
//! and answers it.

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle, SendResponse};

pub type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// A client whose requests arrive at the returned handle.
pub fn api(namespace: &str) -> (kube::Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, namespace.to_owned()), handle)
}

pub fn reply(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(body.to_string().into_bytes()))
        .expect("response")
}

/// The API server's `Status` for a failed request.
pub fn failure(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
           "code": code, "message": reason})
}

/// The next request, which must be `method` on `path`: its JSON body (null without one), and
/// the way to answer it.
pub async fn next(
    handle: &mut ApiHandle,
    method: Method,
    path: &str,
) -> (Value, SendResponse<Response<Body>>) {
    let (request, respond) = handle.next_request().await.expect("a request");
    assert_eq!((request.method(), request.uri().path()), (&method, path));
    (body_of(request).await, respond)
}

/// The JSON body of `request` (null without one).
pub async fn body_of(request: Request<Body>) -> Value {
    let body = request
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

/// Answers the next request, which must be `method` on `path`, with `status` and `body`;
/// returns what was sent.
pub async fn expect(
    handle: &mut ApiHandle,
    method: Method,
    path: &str,
    status: StatusCode,
    body: &Value,
) -> Value {
    let (sent, respond) = next(handle, method, path).await;
    respond.send_response(reply(status, body));
    sent
}
