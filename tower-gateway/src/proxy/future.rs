//! The response future of [`Proxy`].

#[allow(clippy::wildcard_imports)]
use super::*;

pin_project! {
    /// The response future of [`Proxy`].
    #[derive(Debug)]
    pub struct ResponseFuture {
        #[pin]
        pub(super) state: State,
        // The attempt's span until it ends (`Span::none()` after).
        pub(super) span: tracing::Span,
    }

    impl PinnedDrop for ResponseFuture {
        fn drop(this: Pin<&mut Self>) {
            // Given up before an answer: a timeout above, or the client gone.
            let span = this.project().span;
            if !span.is_disabled() {
                span.record("error.type", "cancelled");
                span.record("otel.status_code", "ERROR");
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    pub(super) enum State {
        Sending {
            #[pin]
            future: hyper_util::client::legacy::ResponseFuture,
            // A WebSocket upgrade's place, the client's side and its key,
            // until the upstream answers.
            upgrade: Option<Pending>,
        },
        Failed { kind: UpstreamErrorKind },
        Answered { response: Option<Response<Body>> },
    }
}

impl ResponseFuture {
    pub(super) fn failed(kind: UpstreamErrorKind) -> Self {
        Self { state: State::Failed { kind }, span: tracing::Span::none() }
    }

    pub(super) fn answered(response: Response<Body>) -> Self {
        Self { state: State::Answered { response: Some(response) }, span: tracing::Span::none() }
    }
}

/// Records how an attempt ended on its span, and ends it.
fn end(span: &mut tracing::Span, response: &Response<Body>) {
    if span.is_disabled() {
        return;
    }
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if let Some(error) = response.extensions().get::<UpstreamError>() {
        span.record("error.type", error.kind().code());
        span.record("otel.status_code", "ERROR");
    } else if status.is_server_error() {
        // Client spans: a 5xx from the upstream is an error of the call.
        span.record("error.type", status.as_str());
        span.record("otel.status_code", "ERROR");
    }
    *span = tracing::Span::none();
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = {
            let _entered = this.span.enter();
            std::task::ready!(poll_state(this.state, cx))
        };
        end(this.span, &response);
        Poll::Ready(Ok(response))
    }
}

fn poll_state(state: Pin<&mut State>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
    let kind = match state.project() {
        StateProj::Failed { kind } => *kind,
        StateProj::Answered { response } => {
            return Poll::Ready(response.take().expect("polled after completion"));
        }
        StateProj::Sending { future, upgrade } => match std::task::ready!(future.poll(cx)) {
            Ok(mut response) if response.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                let Some(Pending { place, client, key }) = upgrade.take() else {
                    // Nothing asked for it: the connection is not the client's to have.
                    tracing::debug!("the upstream switched protocols unasked");
                    return Poll::Ready(UpstreamError::new(UpstreamErrorKind::Upgrade).into_response());
                };
                // Only the WebSocket asked for, accepted for this key: any
                // other protocol would hand the client a tunnel past
                // everything in front of the proxy.
                if !upgrade::accepts(response.headers(), &key) {
                    tracing::debug!("the upstream switched protocols without accepting the WebSocket");
                    return Poll::Ready(UpstreamError::new(UpstreamErrorKind::Upgrade).into_response());
                }
                let upstream = hyper::upgrade::on(&mut response);
                let (mut parts, _) = response.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                upgrade::restore(&mut parts.headers);
                tokio::spawn(upgrade::splice(place, client, upstream));
                return Poll::Ready(Response::from_parts(parts, Body::empty()));
            }
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                // RFC 9112 §6.3: with Transfer-Encoding, a Content-Length means
                // nothing (hyper decoded the chunks); relayed, it would make the
                // client cut the body short.
                if parts.headers.contains_key(header::TRANSFER_ENCODING) {
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                remove_hop_by_hop(&mut parts.headers);
                return Poll::Ready(Response::from_parts(parts, Body::streamed(body)));
            }
            Err(err) => {
                let kind = if err.is_connect() && from_tls(&err) {
                    UpstreamErrorKind::Tls
                } else if err.is_connect() {
                    UpstreamErrorKind::Connect
                } else if from_request_body(&err) {
                    UpstreamErrorKind::RequestBody
                } else {
                    UpstreamErrorKind::Reset
                };
                tracing::debug!(error = %ErrorChain(&err), ?kind, "upstream request failed");
                kind
            }
        },
    };
    Poll::Ready(UpstreamError::new(kind).into_response())
}

/// The causes of `err`, nearest first: its sources, and inside each
/// `io::Error` the error it carries (`io::Error::source` skips that one).
fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(err.source(), |err| {
        match err.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        }
    })
}

/// Whether a connection failed in the TLS handshake: a rustls error among its
/// causes (tokio-rustls and hyper-rustls each wrap it in an `io::Error`).
fn from_tls(err: &(dyn std::error::Error + 'static)) -> bool {
    causes(err).any(|cause| cause.is::<rustls::Error>())
}

/// Whether the request failed because the body being sent failed to arrive from
/// the client (hyper's "user" body error), rather than the upstream.
fn from_request_body(err: &(dyn std::error::Error + 'static)) -> bool {
    causes(err).any(|cause| cause.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_user))
}

/// Displays an error with its sources, which is where hyper keeps the detail.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}
