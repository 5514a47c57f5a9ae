//! The live configuration: the generation being served (a plan and the app
//! built from it), swapped whole when a reload compiles. A request is served
//! wholly by the generation current when it arrived; requests in flight finish
//! on theirs; a keep-alive connection takes the new one with its next request.
//! What did not change (pools, balancing, ejections, limits, the token cache)
//! is carried over by [`Plan::next`]; what the process owns (metrics, capacity,
//! tunnels, listeners) is never swapped.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tower::Service;
use tower_gateway::Body;
use tower_gateway::error::json_error;
use tower_gateway::upgrade::TunnelGroup;

use super::app::{App, ResponseBody, app, side_app};
use super::ops::admin_router;
use crate::config::{Config, ConfigError};
use crate::plan::Plan;

/// One generation of the configuration, and the services built from it.
pub(crate) struct Generation {
    pub(crate) number: u64,
    pub(crate) hash: String,
    pub(crate) plan: Plan,
    /// What the main listeners serve.
    pub(super) app: App,
    /// What the admin listener serves.
    pub(super) admin: App,
}

/// A gateway whose configuration can change while it serves: what
/// [`serve`](crate::serve) runs. Cloning it is cheap, and every clone reloads
/// the same gateway.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use demo_gateway::{Config, Gateway, Plan};
/// let path = std::path::PathBuf::from("gateway.toml");
/// let config = Config::load(Some(&path), |name| std::env::var(name).ok())?;
/// let gateway = Gateway::new(Plan::compile(config)?).config_file(path);
/// let listener = demo_gateway::bind(gateway.listen())?;
/// // SIGHUP, a change of gateway.toml, or `gateway.reload()` from any clone:
/// demo_gateway::serve(gateway.clone(), listener, demo_gateway::shutdown_signal()).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    current: ArcSwap<Generation>,
    source: std::sync::Mutex<Source>,
    /// One reload at a time: each compiles over the one before.
    reloading: tokio::sync::Mutex<()>,
    generations: AtomicU64,
}

/// Where the configuration is read again from.
#[derive(Debug, Clone, Default)]
struct Source {
    /// Re-read by [`Gateway::reload`]: SIGHUP, a change seen by the watcher,
    /// `POST /config/reload` without a body.
    file: Option<PathBuf>,
    /// How often the file is looked at; `None`, not watched.
    watch_every: Option<Duration>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.inner.current.load();
        f.debug_struct("Gateway")
            .field("generation", &current.number)
            .field("hash", &current.hash)
            .field("source", &self.source())
            .finish_non_exhaustive()
    }
}

/// What a reload applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The generation now served (the first is 1).
    pub generation: u64,
    /// Its configuration's hash, as `/metrics` shows it in `gateway_config_info`.
    pub hash: String,
    /// Routes, upstreams and limits, as `demo-gateway check` prints them.
    pub summary: String,
}

/// Why a reload was refused: every field at fault, each naming its field. The
/// configuration served before goes on being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadError {
    /// Each refused field, named.
    pub errors: Vec<ConfigError>,
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let errors: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        write!(f, "{}", errors.join("; "))
    }
}

impl std::error::Error for ReloadError {}

impl From<Plan> for Gateway {
    fn from(plan: Plan) -> Self {
        Self::new(plan)
    }
}

impl Gateway {
    /// A gateway serving `plan`, its first generation. Call it inside a Tokio runtime.
    pub fn new(plan: Plan) -> Self {
        let inner = Arc::new_cyclic(|weak| {
            let first = generation(1, plan, weak);
            first.plan.shared.metrics.config_served(1, first.hash.clone(), None);
            Inner {
                current: ArcSwap::from_pointee(first),
                source: std::sync::Mutex::default(),
                reloading: tokio::sync::Mutex::new(()),
                generations: AtomicU64::new(1),
            }
        });
        Self { inner }
    }

    /// Reloads from `path` on SIGHUP, on `POST /config/reload` without a body,
    /// and when its contents change (looked at every second). Set it before serving.
    pub fn config_file(self, path: impl Into<PathBuf>) -> Self {
        let mut source = self.inner.source.lock().unwrap_or_else(|e| e.into_inner());
        source.file = Some(path.into());
        source.watch_every.get_or_insert(Duration::from_secs(1));
        drop(source);
        self
    }

    /// How often the config file is looked at for a change (default: every
    /// second); a change is applied once two looks in a row agree.
    pub fn watch_every(self, every: Duration) -> Self {
        self.inner.source.lock().unwrap_or_else(|e| e.into_inner()).watch_every = Some(every);
        self
    }

    fn source(&self) -> Source {
        self.inner.source.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Where the gateway listens.
    pub fn listen(&self) -> std::net::SocketAddr {
        self.inner.current.load().plan.listen()
    }

    /// The generation being served (the first is 1).
    pub fn generation(&self) -> u64 {
        self.inner.current.load().number
    }

    /// The configuration being served, as TOML with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        self.inner.current.load().plan.to_masked_toml()
    }

    /// The generation served now, held for as long as the caller keeps it.
    pub(crate) fn current_full(&self) -> Arc<Generation> {
        self.inner.current.load_full()
    }

    /// Reads the config file again (with the environment's overrides) and
    /// applies it, as SIGHUP does.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let Some(path) = self.source().file else {
            let error = ConfigError::new("config", "the gateway was started without a config file to read again");
            return Err(self.refused(vec![error]));
        };
        match Config::load(Some(&path), |name| std::env::var(name).ok()) {
            Ok(config) => self.apply(config).await,
            Err(err) => Err(self.refused(vec![err])),
        }
    }

    /// Compiles `config` beside the configuration being served and, if it
    /// compiles and changes no setting that needs a restart, serves it from the
    /// next request on. Otherwise the old one goes on being served.
    pub async fn apply(&self, config: Config) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.inner.reloading.lock().await;
        let current = self.inner.current.load_full();
        let plan = current.plan.next(config).map_err(|errors| self.refused(errors))?;
        // A DNS upstream new in this generation has its first endpoints before it serves.
        plan.resolve_dns().await;
        plan.prefetch_keys().await;
        let number = self.inner.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let next = generation(number, plan, &Arc::downgrade(&self.inner));
        let reloaded = Reloaded { generation: number, hash: next.hash.clone(), summary: next.plan.summary() };
        let removed = removed_tunnels(&current.plan, &next.plan);
        let grace = Duration::from_millis(next.plan.config.websocket_removed_route_grace_ms);
        let shared = next.plan.shared.clone();
        self.inner.current.store(Arc::new(next));
        shared.metrics.config_served(number, reloaded.hash.clone(), Some((current.number, current.hash.clone())));
        shared.metrics.config_reload(true);
        if !removed.is_empty() {
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                for group in removed {
                    group.close();
                }
            });
        }
        tracing::info!(generation = number, hash = %reloaded.hash, summary = %reloaded.summary, "configuration reloaded");
        Ok(reloaded)
    }

    fn refused(&self, errors: Vec<ConfigError>) -> ReloadError {
        self.inner.current.load().plan.shared.metrics.config_reload(false);
        for error in &errors {
            tracing::error!(field = %error.field, error = %error.message, "configuration refused; serving the one before");
        }
        ReloadError { errors }
    }

    /// Reloads on SIGHUP and when the config file changes, for as long as the
    /// returned tasks live.
    pub(super) fn watch(&self) -> tokio::task::JoinSet<()> {
        let mut tasks = tokio::task::JoinSet::new();
        let source = self.source();
        // Registered before this returns, not when the task first runs: from
        // then on a SIGHUP reloads and never ends the process.
        #[cfg(unix)]
        if source.file.is_some()
            && let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            let gateway = self.clone();
            tasks.spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = gateway.reload().await;
                }
            });
        }
        if let (Some(path), Some(every)) = (source.file, source.watch_every) {
            let gateway = self.clone();
            tasks.spawn(async move { gateway.watch_file(path, every).await });
        }
        tasks
    }

    /// Reloads when `path`'s contents change and then hold still for one look:
    /// an editor's or `docker cp`'s write is read whole, once.
    async fn watch_file(&self, path: PathBuf, every: Duration) {
        let mut seen = tokio::fs::read(&path).await.ok();
        let mut pending: Option<Vec<u8>> = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Said once per new error, not every look.
        let mut unreadable: Option<String> = None;
        loop {
            tick.tick().await;
            let now = match tokio::fs::read(&path).await {
                Ok(now) => {
                    unreadable = None;
                    now
                }
                Err(err) => {
                    let err = err.to_string();
                    if unreadable.as_ref() != Some(&err) {
                        tracing::warn!(path = %path.display(), %err, "cannot read the config file; serving the configuration before");
                        unreadable = Some(err);
                    }
                    continue;
                }
            };
            if seen.as_ref() == Some(&now) {
                pending = None;
            } else if pending.as_ref() == Some(&now) {
                tracing::info!(path = %path.display(), "the config file changed: reloading");
                // Refused or not, this content has been tried: not again until it changes.
                seen = pending.take();
                let _ = self.reload().await;
            } else {
                pending = Some(now);
            }
        }
    }
}

/// The WebSocket groups of `old`'s routes that `new` does not carry on: routes
/// removed, or no longer taking WebSockets.
fn removed_tunnels(old: &Plan, new: &Plan) -> Vec<TunnelGroup> {
    let stays = |name: &str| new.table.routes.iter().any(|r| &*r.name == name && r.tunnels.is_some());
    old.table.routes.iter().filter(|r| !stays(&r.name)).filter_map(|r| r.tunnels.clone()).collect()
}

/// Generation `number` of `plan`, its apps built; `gateway` is the gateway it
/// will be served by, for the admin endpoints.
fn generation(number: u64, plan: Plan, gateway: &std::sync::Weak<Inner>) -> Generation {
    let gateway = gateway.clone();
    let handle = move || gateway.upgrade().map(|inner| Gateway { inner });
    Generation { number, hash: plan.hash(), app: app(&plan), admin: admin_app(&plan, Arc::new(handle)), plan }
}

/// What finds the gateway a generation is served by, for a reload.
type Reloader = Arc<dyn Fn() -> Option<Gateway> + Send + Sync>;

/// The admin listener's app: `/readyz` and `/metrics`, and with an admin token
/// `GET /config` (the configuration served, secrets masked) and `POST
/// /config/reload` (the config file read again or, with a body, that TOML
/// applied), each refused `401` without the token.
fn admin_app(plan: &Plan, reloader: Reloader) -> App {
    let mut router = admin_router(plan);
    if let Some(token) = &plan.settings.admin_token {
        let (token, masked) = (token.clone(), plan.to_masked_toml());
        let show = move |headers: HeaderMap| {
            let response = if is_authorized(&headers, &token) {
                ([(header::CONTENT_TYPE, "application/toml")], masked.clone()).into_response()
            } else {
                unauthorized()
            };
            std::future::ready(response)
        };
        let token = plan.settings.admin_token.clone().expect("checked above");
        let reload = move |headers: HeaderMap, body: Bytes| {
            let (token, reloader) = (token.clone(), reloader.clone());
            async move {
                if !is_authorized(&headers, &token) {
                    return unauthorized();
                }
                let Some(gateway) = reloader() else {
                    return json_error::<Body>(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "shutting_down",
                        "the gateway is stopping",
                    )
                    .into_response();
                };
                let outcome = if body.is_empty() {
                    gateway.reload().await
                } else {
                    match std::str::from_utf8(&body)
                        .map_err(|e| ConfigError::new("body", e))
                        .and_then(|text| Config::from_toml(text, "body", |name| std::env::var(name).ok()))
                    {
                        Ok(config) => gateway.apply(config).await,
                        Err(err) => Err(gateway.refused(vec![err])),
                    }
                };
                match outcome {
                    Ok(reloaded) => axum::Json(serde_json::json!({
                        "status": "applied",
                        "generation": reloaded.generation,
                        "hash": reloaded.hash,
                        "summary": reloaded.summary,
                    }))
                    .into_response(),
                    Err(refused) => refused_response(&refused).into_response(),
                }
            }
        };
        router = router.route("/config", get(show)).route("/config/reload", post(reload));
    }
    let router = router.method_not_allowed_fallback(|| async {
        json_error::<Body>(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this path takes another method")
    });
    let router = router.fallback(|| async { json_error::<Body>(StatusCode::NOT_FOUND, "not_found", "no such path") });
    side_app(router)
}

/// `422` with every refused field, the configuration before kept.
fn refused_response(refused: &ReloadError) -> (StatusCode, axum::Json<serde_json::Value>) {
    let fields: Vec<serde_json::Value> =
        refused.errors.iter().map(|e| serde_json::json!({ "field": e.field, "message": e.message })).collect();
    let body = serde_json::json!({ "error": {
        "code": "config_refused",
        "message": format!("the configuration was refused, and the one before is still served: {refused}"),
        "fields": fields,
    }});
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body))
}

/// Whether `headers` carry `Authorization: Bearer TOKEN`, compared in constant time.
fn is_authorized(headers: &HeaderMap, token: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0, |d, (a, b)| d | (a ^ b)) == 0
}

/// The `401` for a request without the admin token.
fn unauthorized() -> axum::response::Response {
    let mut refused =
        json_error::<Body>(StatusCode::UNAUTHORIZED, "unauthorized", "the admin token is missing or wrong");
    refused.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    refused.into_response()
}

/// A listener's service: the current generation's app for each request, or one
/// that never changes.
#[derive(Clone)]
pub(super) enum Current {
    /// The main listeners' app, or the admin listener's.
    Live(Gateway, fn(&Generation) -> &App),
    Fixed(App),
    /// The redirect listener serving gRPC: gRPC calls to the main app, the
    /// rest to the redirect.
    GrpcOr(Gateway, App),
}

impl Service<Request<Incoming>> for Current {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<ResponseBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        // Each request is taken by a fresh clone of an app, made ready then.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        match self {
            Self::Live(gateway, pick) => pick(&gateway.inner.current.load()).run(req),
            Self::Fixed(app) => app.run(req),
            Self::GrpcOr(gateway, _) if tower_gateway::grpc::is_grpc(req.headers()) => {
                gateway.inner.current.load().app.run(req)
            }
            Self::GrpcOr(_, redirect) => redirect.run(req),
        }
    }
}
