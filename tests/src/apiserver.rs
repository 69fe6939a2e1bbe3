//! A small fake Kubernetes API server for the end-to-end tests, since no real one can run
//! here: HTTP + JSON, enough of the API for `remora-injector serve --kubernetes`.
//!
//! - list and watch any resource (resourceVersions, `fieldSelector` on `metadata.name` and
//!   `metadata.namespace`, bookmarks, `410 Gone` for a watch from a compacted version);
//! - create, get, replace (with resourceVersion conflicts), merge-patch and delete any object,
//!   replace its `status` subresource; `metadata.generation` counts changes to what is neither
//!   metadata nor status;
//! - TokenReview, answered with the local launcher's token key, as the API server answers for
//!   its own service-account tokens;
//! - the objects of directories of manifests, kept as `kubectl apply` would keep them (files
//!   re-read when they change), and the `cacerts` Secret of a CA directory.
//!
//! Every request's verb and resource can be written to an audit file (curl's, the tests' own
//! looks, left out), so tests can check the control plane's RBAC against what it really did.

mod files;
mod spawn;
mod store;

pub use spawn::{free_port, spawn, Spawned};

use std::{
    collections::BTreeSet, convert::Infallible, io::Write, net::SocketAddr, path::PathBuf,
    sync::Arc, time::Duration,
};

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, body::Incoming, service::service_fn};
use parking_lot::Mutex;
use remora_injector::token::{Authenticator, LocalTokens};
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::watch};

use files::ROOT_NAMESPACE;
use store::{not_found, Place, Refused, Resource, Store};

/// How often the directories are checked for changes.
const POLL: Duration = Duration::from_millis(100);
/// How often a watch with bookmarks allowed gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

/// What the fake API server serves.
pub struct Options {
    pub listen: SocketAddr,
    /// Directories of manifests whose objects it holds.
    pub dirs: Vec<PathBuf>,
    /// The public key that verifies the local launcher's service-account tokens.
    pub token_key: PathBuf,
    /// A CA directory (Istio's plug-in layout) served as Secret `istio-system/cacerts`.
    pub plugged_in_ca: Option<PathBuf>,
    /// Where to write `VERB group/resource` for each kind of request made.
    pub audit: Option<PathBuf>,
}

struct Server {
    store: Mutex<Store>,
    changed: watch::Sender<u64>,
    tokens: LocalTokens,
    audit: Mutex<(BTreeSet<String>, Option<PathBuf>)>,
}

type Body = BoxBody<Bytes, Infallible>;

/// Serves until the process ends.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let tokens = LocalTokens::load(&options.token_key).context("loading the token key")?;
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding {}", options.listen))?;
    let (changed, _) = watch::channel(0);
    let server = Arc::new(Server {
        store: Mutex::new(Store::default()),
        changed,
        tokens,
        audit: Mutex::new((BTreeSet::new(), options.audit)),
    });
    if let Some(dir) = &options.plugged_in_ca {
        server.seed_ca(dir)?;
    }
    // The files' objects are there before the first request is answered.
    let (files, objects) = read_files(options.dirs.clone()).await;
    server.apply_files(&files::Objects::new(), &objects);
    tokio::spawn(follow_files(server.clone(), options.dirs, files, objects));
    eprintln!("fake API server listening on {}", options.listen);
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        let server = server.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(request).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// Keeps the store's file-made objects as the files say, re-reading them when they change.
async fn follow_files(
    server: Arc<Server>,
    dirs: Vec<PathBuf>,
    mut last_files: Vec<(String, String)>,
    mut last_objects: files::Objects,
) {
    loop {
        tokio::time::sleep(POLL).await;
        let reading = dirs.clone();
        let files = tokio::task::spawn_blocking(move || files::read(&reading))
            .await
            .unwrap_or_default();
        if files != last_files {
            let objects = files::objects(&files);
            server.apply_files(&last_objects, &objects);
            (last_files, last_objects) = (files, objects);
        }
    }
}

/// The manifests under `dirs` and their objects.
async fn read_files(dirs: Vec<PathBuf>) -> (Vec<(String, String)>, files::Objects) {
    tokio::task::spawn_blocking(move || {
        let files = files::read(&dirs);
        let objects = files::objects(&files);
        (files, objects)
    })
    .await
    .unwrap_or_default()
}

impl Server {
    /// Makes the file-made objects go from `before` to `after`: what the files no longer hold
    /// is deleted, what changed in them is written (over anything written through the API).
    fn apply_files(&self, before: &files::Objects, after: &files::Objects) {
        let mut store = self.store.lock();
        for (resource, place) in before.keys().filter(|key| !after.contains_key(*key)) {
            let _ = store.delete(resource, place);
        }
        for ((resource, place), object) in after {
            if before.get(&(resource.clone(), place.clone())) == Some(object) {
                continue;
            }
            let mut object = object.clone();
            let written = match store.get(resource, place) {
                Some(stored) => {
                    object["metadata"]["resourceVersion"] =
                        stored["metadata"]["resourceVersion"].clone();
                    store.replace(resource, place.clone(), object)
                }
                None => store.create(resource, place.clone(), object),
            };
            if let Err(Refused(_, _, message)) = written {
                eprintln!("fake API server: {message}");
            }
        }
        self.changed.send_replace(store.version());
    }

    fn seed_ca(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        let mut data = serde_json::Map::new();
        // A self-signed root has no chain of its own.
        for (file, required) in [
            ("ca-cert.pem", true),
            ("ca-key.pem", true),
            ("root-cert.pem", true),
            ("cert-chain.pem", false),
        ] {
            let path = dir.join(file);
            let pem = match std::fs::read(&path) {
                Ok(pem) => pem,
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            data.insert(
                file.to_owned(),
                json!(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    pem
                )),
            );
        }
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": "cacerts", "namespace": ROOT_NAMESPACE},
                            "data": data});
        let resource = (String::new(), "secrets".to_owned());
        let place = (ROOT_NAMESPACE.to_owned(), "cacerts".to_owned());
        let mut store = self.store.lock();
        store
            .create(&resource, place, secret)
            .map_err(|Refused(_, _, message)| anyhow::anyhow!(message))?;
        self.changed.send_replace(store.version());
        Ok(())
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let method = request.method().clone();
        let Some(target) = Target::parse(request.uri().path()) else {
            return status(&refused(404, "NotFound", "no such path"));
        };
        let query = Query::parse(request.uri().query().unwrap_or_default());
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        // The tests' own looks (curl) are not what the control plane asked for.
        let audited = !request
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|agent| agent.starts_with("curl/"));
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return status(&refused(400, "BadRequest", "unreadable body")),
        };
        let verb = match (&method, target.name.is_some(), query.watch) {
            (&Method::GET, _, true) => "watch",
            (&Method::GET, true, _) => "get",
            (&Method::GET, false, _) => "list",
            (&Method::POST, ..) => "create",
            (&Method::PUT, ..) => "update",
            (&Method::PATCH, ..) => "patch",
            (&Method::DELETE, ..) => "delete",
            _ => return status(&refused(405, "MethodNotAllowed", "method not allowed")),
        };
        if audited {
            self.audit(verb, &target);
        }
        // Only objects are written: anything else is refused as the API server refuses it.
        let parsed = || match serde_json::from_slice::<Value>(&body) {
            Ok(value)
                if value.is_object() && value.get("metadata").is_none_or(Value::is_object) =>
            {
                Ok(value)
            }
            Ok(_) => Err("the body is not an object with object metadata".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        let answer = match verb {
            "watch" => return self.watch(&target, &query),
            "list" => Ok(self.list(&target, &query)),
            "get" => self.get(&target),
            "create" if target.resource.1 == "tokenreviews" => match parsed() {
                Ok(review) => Ok(self.review(review).await),
                Err(e) => Err(refused(400, "BadRequest", &e)),
            },
            "create" | "update" => match parsed() {
                Ok(object) => self.write(verb, &target, object),
                Err(e) => Err(refused(400, "BadRequest", &e)),
            },
            "patch" => match serde_json::from_slice::<Value>(&body) {
                Ok(patch) => self.patch(&target, &content_type, &patch),
                Err(e) => Err(refused(400, "BadRequest", &e.to_string())),
            },
            _ => self.delete(&target),
        };
        match answer {
            Ok((code, value)) => json_response(code, &value),
            Err(refusal) => status(&refusal),
        }
    }

    fn audit(&self, verb: &str, target: &Target) {
        let mut line = format!("{verb} {}/{}", target.resource.0, target.resource.1);
        if let Some(sub) = &target.subresource {
            line = format!("{line}/{sub}");
        }
        let mut audit = self.audit.lock();
        let (seen, path) = &mut *audit;
        if let Some(path) = path.as_ref().filter(|_| seen.insert(line.clone())) {
            if let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(file, "{line}");
            }
        }
    }

    fn list(&self, target: &Target, query: &Query) -> (u16, Value) {
        let store = self.store.lock();
        let items: Vec<Value> = store
            .list(&target.resource, target.namespace.as_deref(), |o| {
                query.selects(o)
            })
            .into_iter()
            .map(|o| target.served(o))
            .collect();
        let kind = items
            .first()
            .and_then(|o| o["kind"].as_str())
            .map_or_else(|| "List".to_owned(), |k| format!("{k}List"));
        (
            200,
            json!({"apiVersion": target.api_version(), "kind": kind,
                   "metadata": {"resourceVersion": store.version().to_string()},
                   "items": items}),
        )
    }

    fn get(&self, target: &Target) -> Result<(u16, Value), Refused> {
        let place = target.place()?;
        let store = self.store.lock();
        store
            .get(&target.resource, &place)
            .map(|o| (200, target.served(o.clone())))
            .ok_or_else(|| not_found(&target.resource, &place))
    }

    fn write(&self, verb: &str, target: &Target, object: Value) -> Result<(u16, Value), Refused> {
        let name = target
            .name
            .clone()
            .or_else(|| object["metadata"]["name"].as_str().map(str::to_owned))
            .ok_or_else(|| refused(422, "Invalid", "metadata.name: Required value"))?;
        let place = (target.namespace.clone().unwrap_or_default(), name);
        let mut store = self.store.lock();
        let object = match target.subresource.as_deref() {
            None => object,
            // The status subresource takes the status alone, the rest stays as stored.
            Some("status") if verb == "update" => {
                let mut stored = store
                    .get(&target.resource, &place)
                    .cloned()
                    .ok_or_else(|| not_found(&target.resource, &place))?;
                stored["metadata"]["resourceVersion"] =
                    object["metadata"]["resourceVersion"].clone();
                stored["status"] = object["status"].clone();
                stored
            }
            Some(other) => {
                return Err(refused(404, "NotFound", &format!("no subresource {other}")))
            }
        };
        let written = if verb == "create" {
            store
                .create(&target.resource, place, object)
                .map(|o| (201, o))
        } else {
            store
                .replace(&target.resource, place, object)
                .map(|o| (200, o))
        }?;
        self.changed.send_replace(store.version());
        Ok((written.0, target.served(written.1)))
    }

    fn patch(
        &self,
        target: &Target,
        content_type: &str,
        patch: &Value,
    ) -> Result<(u16, Value), Refused> {
        let place = target.place()?;
        let mut store = self.store.lock();
        let mut object = store
            .get(&target.resource, &place)
            .cloned()
            .ok_or_else(|| not_found(&target.resource, &place))?;
        if content_type.starts_with("application/json-patch+json") {
            let operations: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| refused(400, "BadRequest", &e.to_string()))?;
            json_patch::patch(&mut object, &operations)
                .map_err(|e| refused(422, "Invalid", &e.to_string()))?;
        } else {
            json_patch::merge(&mut object, patch);
        }
        if !object.get("metadata").is_some_and(Value::is_object) {
            return Err(refused(
                422,
                "Invalid",
                "the patched object has no metadata",
            ));
        }
        object["metadata"]["resourceVersion"] = Value::Null;
        let written = store.replace(&target.resource, place, object)?;
        self.changed.send_replace(store.version());
        Ok((200, target.served(written)))
    }

    fn delete(&self, target: &Target) -> Result<(u16, Value), Refused> {
        let place = target.place()?;
        let mut store = self.store.lock();
        let deleted = store.delete(&target.resource, &place)?;
        self.changed.send_replace(store.version());
        Ok((200, target.served(deleted)))
    }

    /// A TokenReview, answered as the API server answers for its own tokens: the service
    /// account and the pod the token is bound to.
    async fn review(&self, mut review: Value) -> (u16, Value) {
        let token = review["spec"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        review["status"] = match self.tokens.authenticate(&token).await {
            Ok(account) => {
                let mut extra = serde_json::Map::new();
                if let Some(pod) = account.pod {
                    extra.insert("authentication.kubernetes.io/pod-name".into(), json!([pod]));
                }
                json!({"authenticated": true,
                       "audiences": review["spec"]["audiences"].clone(),
                       "user": {"username": format!("system:serviceaccount:{}:{}",
                                                    account.namespace, account.name),
                                "extra": extra}})
            }
            Err(e) => json!({"authenticated": false, "error": e.to_string()}),
        };
        (201, review)
    }

    /// A watch: changes after the requested version as JSON lines, bookmarks when allowed,
    /// until the requested timeout or the caller leaves.
    fn watch(self: Arc<Self>, target: &Target, query: &Query) -> Response<Body> {
        let (frames, body) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let (target, query) = (target.clone(), query.clone());
        tokio::spawn(async move {
            let mut changed = self.changed.subscribe();
            let deadline = tokio::time::Instant::now()
                + Duration::from_secs(query.timeout_seconds.unwrap_or(300));
            let mut seen = match query.resource_version {
                Some(version) if version > 0 => version,
                _ => {
                    // From now, after the objects there are.
                    let (version, current) = {
                        let store = self.store.lock();
                        let objects =
                            store.list(&target.resource, target.namespace.as_deref(), |o| {
                                query.selects(o)
                            });
                        (store.version(), objects)
                    };
                    for object in current {
                        if !send(&frames, "ADDED", target.served(object)).await {
                            return;
                        }
                    }
                    version
                }
            };
            loop {
                let changes = self.store.lock().changes_since(seen);
                let Some(changes) = changes else {
                    let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "code": 410, "reason": "Expired",
                                      "message": format!("too old resource version: {seen}")});
                    let _ = send(&frames, "ERROR", gone).await;
                    return;
                };
                for change in changes {
                    seen = change.version;
                    let place_namespace = change.object["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default();
                    let relevant = change.resource == target.resource
                        && target
                            .namespace
                            .as_deref()
                            .is_none_or(|ns| ns == place_namespace)
                        && query.selects(&change.object);
                    if relevant && !send(&frames, change.kind, target.served(change.object)).await {
                        return;
                    }
                }
                tokio::select! {
                    _ = changed.changed() => {}
                    () = tokio::time::sleep(BOOKMARK_EVERY), if query.bookmarks => {
                        let bookmark = json!({"apiVersion": target.api_version(),
                                              "kind": "Bookmark",
                                              "metadata": {"resourceVersion": seen.to_string()}});
                        if !send(&frames, "BOOKMARK", bookmark).await {
                            return;
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => return,
                    () = frames.closed() => return,
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(body);
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap_or_else(|_| Response::new(empty()))
    }
}

/// Sends one watch event; false once the caller has gone.
async fn send(
    frames: &tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    kind: &str,
    object: Value,
) -> bool {
    let line = format!("{}\n", json!({"type": kind, "object": object}));
    frames
        .send(Ok(Frame::data(Bytes::from(line))))
        .await
        .is_ok()
}

/// What a request is about: `/api/v1/...` or `/apis/GROUP/VERSION/...`, then
/// `[namespaces/NS/]PLURAL[/NAME[/SUBRESOURCE]]`.
#[derive(Clone, Debug)]
struct Target {
    resource: Resource,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", namespace, plural, rest @ ..] => {
                (Some((*namespace).to_owned()), [&[*plural], rest].concat())
            }
            rest => (None, rest.to_vec()),
        };
        let (plural, name, subresource) = match rest.as_slice() {
            [plural] => (*plural, None, None),
            [plural, name] => (*plural, Some(*name), None),
            [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
            _ => return None,
        };
        Some(Self {
            resource: (group.to_owned(), plural.to_owned()),
            version: version.to_owned(),
            namespace,
            name: name.map(str::to_owned),
            subresource: subresource.map(str::to_owned),
        })
    }

    fn api_version(&self) -> String {
        match self.resource.0.as_str() {
            "" => self.version.clone(),
            group => format!("{group}/{}", self.version),
        }
    }

    fn place(&self) -> Result<Place, Refused> {
        let name = self
            .name
            .clone()
            .ok_or_else(|| refused(405, "MethodNotAllowed", "a collection"))?;
        Ok((self.namespace.clone().unwrap_or_default(), name))
    }

    /// `object` in the version asked for (the API server converts between served versions).
    fn served(&self, mut object: Value) -> Value {
        object["apiVersion"] = json!(self.api_version());
        object
    }
}

/// The query parameters the fake server understands.
#[derive(Clone, Debug, Default)]
struct Query {
    watch: bool,
    resource_version: Option<u64>,
    timeout_seconds: Option<u64>,
    bookmarks: bool,
    /// `(field, value)` pairs of `fieldSelector`, all of which must match.
    fields: Vec<(String, String)>,
}

impl Query {
    fn parse(query: &str) -> Self {
        let mut parsed = Self::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "watch" => parsed.watch = value == "true" || value == "1",
                "resourceVersion" => parsed.resource_version = value.parse().ok(),
                "timeoutSeconds" => parsed.timeout_seconds = value.parse().ok(),
                "allowWatchBookmarks" => parsed.bookmarks = value == "true",
                "fieldSelector" => {
                    parsed.fields = value
                        .split(',')
                        .filter_map(|term| term.split_once('='))
                        .map(|(f, v)| (f.to_owned(), v.to_owned()))
                        .collect();
                }
                _ => {}
            }
        }
        parsed
    }

    fn selects(&self, object: &Value) -> bool {
        self.fields.iter().all(|(field, value)| {
            let path: Vec<&str> = field.split('.').collect();
            let found = path.iter().try_fold(object, |v, key| v.get(*key));
            found.and_then(Value::as_str).unwrap_or_default() == value
        })
    }
}

fn refused(code: u16, reason: &'static str, message: &str) -> Refused {
    Refused(code, reason, message.to_owned())
}

fn status(Refused(code, reason, message): &Refused) -> Response<Body> {
    json_response(
        *code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(value.to_string()))))
        .unwrap_or_else(|_| Response::new(empty()))
}

fn empty() -> Body {
    BodyExt::boxed(Full::new(Bytes::new()))
}
