//! The service: one request through the guard.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use eventonce_core::{GuardError, Identity, StoredOutcome};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower_service::Service;

use crate::fingerprint::{fingerprint_input, key_of};
use crate::layer::Options;
use crate::stored::{problem, StoredResponse};

/// The service [`IdempotencyLayer`](crate::IdempotencyLayer) wraps around `S`.
#[derive(Clone)]
pub struct Idempotency<S> {
    inner: S,
    options: Arc<Options>,
}

impl<S> std::fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("event_type", &self.options.event_type)
            .finish_non_exhaustive()
    }
}

impl<S> Idempotency<S> {
    pub(crate) fn new(inner: S, options: Arc<Options>) -> Self {
        Idempotency { inner, options }
    }
}

/// The future of [`Idempotency`]'s responses.
pub type ResponseFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B, RB> Service<Request<B>> for Idempotency<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    RB: Body + From<Bytes> + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<Response<RB>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The service made ready by `poll_ready` runs this request; its clone serves the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(guarded(inner, Arc::clone(&self.options), request))
    }
}

/// How the inner service's run ended, when it is not a response to store.
enum Ended<E, RB> {
    /// The service failed: its error is the layer's.
    Inner(E),
    /// A response not to store (a 5xx by default): sent as it is, the claim released.
    NotStored(Response<RB>),
    /// The response's body could not be read.
    Body(String),
}

impl<E, RB> std::fmt::Display for Ended<E, RB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Inner(_) => f.write_str("the inner service failed"),
            Ended::NotStored(r) => write!(f, "response {} not stored", r.status()),
            Ended::Body(e) => write!(f, "the response body could not be read: {e}"),
        }
    }
}

/// One request: passed through, refused, run once under its key, or answered with the
/// stored response of its key.
async fn guarded<S, B, RB>(
    mut inner: S,
    options: Arc<Options>,
    request: Request<B>,
) -> Result<Response<RB>, S::Error>
where
    S: Service<Request<B>, Response = Response<RB>> + Send,
    S::Future: Send,
    B: Body + From<Bytes> + Send,
    B::Error: Into<BoxError>,
    RB: Body + From<Bytes> + Send,
    RB::Error: Into<BoxError>,
{
    if !options.methods.contains(request.method()) {
        return inner.call(request).await;
    }
    let (parts, body) = request.into_parts();
    let key = match key_of(&parts) {
        Ok(Some(key)) => key,
        Ok(None) if !options.require_key => {
            return inner.call(Request::from_parts(parts, body)).await
        }
        Ok(None) => {
            let detail = "this request requires an Idempotency-Key header";
            return Ok(problem(StatusCode::BAD_REQUEST, detail));
        }
        Err(why) => return Ok(problem(StatusCode::BAD_REQUEST, why)),
    };
    let body = match Limited::new(body, options.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            let detail = format!("the request body is over {} bytes", options.max_body_bytes);
            return Ok(problem(StatusCode::PAYLOAD_TOO_LARGE, &detail));
        }
        Err(_) => {
            let detail = "the request body could not be read";
            return Ok(problem(StatusCode::BAD_REQUEST, detail));
        }
    };
    let identity = Identity::new(options.event_type.as_str(), key.as_bytes())
        .with_fingerprint(fingerprint_input(&parts, &body));
    let request = Request::from_parts(parts, B::from(body));
    // The fresh response goes out as the service made it; only a replay is rebuilt.
    let fresh = Mutex::new(None);
    let store_when = options.store_when;
    let run = async {
        let response = inner.call(request).await.map_err(Ended::Inner)?;
        let (parts, body) = response.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => return Err(Ended::Body(error.into().to_string())),
        };
        let stored = StoredResponse::new(&parts, &body);
        let response = Response::from_parts(parts, RB::from(body));
        if !store_when(response.status()) {
            return Err(Ended::NotStored(response));
        }
        *fresh.lock().unwrap_or_else(PoisonError::into_inner) = Some(response);
        Ok(stored)
    };
    let outcome = options.guard.run_stored(&identity, run).await;
    let fresh = fresh.into_inner().unwrap_or_else(PoisonError::into_inner);
    answer(outcome, fresh)
}

/// The response to a guarded request's outcome.
fn answer<E, RB: From<Bytes>>(
    outcome: Result<StoredOutcome<StoredResponse>, GuardError<Ended<E, RB>>>,
    fresh: Option<Response<RB>>,
) -> Result<Response<RB>, E> {
    let (status, detail) = match outcome {
        Ok(StoredOutcome::Processed(stored) | StoredOutcome::Unprotected(stored)) => {
            return Ok(fresh.unwrap_or_else(|| stored.into_response(false)))
        }
        Ok(StoredOutcome::Replayed(stored)) => return Ok(stored.into_response(true)),
        Err(GuardError::Handler(Ended::Inner(error))) => return Err(error),
        Err(GuardError::Handler(Ended::NotStored(response))) => return Ok(response),
        Ok(StoredOutcome::Duplicate) => (
            StatusCode::CONFLICT,
            "a request with this key was processed; its response was not kept".to_owned(),
        ),
        Err(GuardError::InProgress) => (
            StatusCode::CONFLICT,
            "a request with this key is being processed; retry later".to_owned(),
        ),
        Err(GuardError::Conflict { .. }) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "this key was used with another request (method, path, query or body)".to_owned(),
        ),
        Err(GuardError::InvalidEvent(error)) => (StatusCode::BAD_REQUEST, error.to_string()),
        Err(GuardError::Handler(Ended::Body(error))) => (StatusCode::BAD_GATEWAY, error),
        Err(GuardError::Store(error)) => {
            tracing::warn!(error = %error, "IDEMPOTENCY_STORE_ERROR: request refused");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the idempotency store is unavailable; retry later".to_owned(),
            )
        }
        Err(other) => (StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    };
    Ok(problem(status, &detail))
}
