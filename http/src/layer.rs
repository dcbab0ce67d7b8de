//! The layer and its options.

use std::sync::Arc;

use eventonce_core::Guard;
use http::{Method, StatusCode};

use crate::service::Idempotency;

/// The event type the layer's records are kept under (its TTL is the guard's TTL for it).
pub const DEFAULT_EVENT_TYPE: &str = "http.request.v1";
/// The default largest request body read (and fingerprinted): 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The longest key accepted, in bytes; a longer one is answered `400`.
pub const MAX_KEY_LENGTH: usize = 255;

/// A `tower` layer adding the `Idempotency-Key` semantics to a service (see the crate
/// documentation). Cheap to clone.
#[derive(Clone)]
pub struct IdempotencyLayer {
    pub(crate) options: Arc<Options>,
}

/// What the layer does, shared by its services.
pub(crate) struct Options {
    pub(crate) guard: Guard,
    pub(crate) require_key: bool,
    pub(crate) methods: Vec<Method>,
    pub(crate) event_type: String,
    pub(crate) max_body_bytes: usize,
    pub(crate) store_when: fn(StatusCode) -> bool,
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("guard", &self.options.guard)
            .field("require_key", &self.options.require_key)
            .field("methods", &self.options.methods)
            .field("event_type", &self.options.event_type)
            .field("max_body_bytes", &self.options.max_body_bytes)
            .finish()
    }
}

/// The default of [`IdempotencyLayer::store_when`]: 2xx and 4xx responses are stored,
/// 1xx, 3xx and 5xx are not.
pub fn default_store_when(status: StatusCode) -> bool {
    status.is_success() || status.is_client_error()
}

impl IdempotencyLayer {
    /// A layer over `guard`: requests of method `POST` and `PATCH` with a key are run once
    /// per key; a request without one passes through (see [`require_key`](Self::require_key)).
    pub fn new(guard: Guard) -> Self {
        IdempotencyLayer {
            options: Arc::new(Options {
                guard,
                require_key: false,
                methods: vec![Method::POST, Method::PATCH],
                event_type: DEFAULT_EVENT_TYPE.to_owned(),
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                store_when: default_store_when,
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Options)) -> Self {
        // The layer is configured before it is cloned into services: no copy then.
        if let Some(options) = Arc::get_mut(&mut self.options) {
            change(options);
            return self;
        }
        let o = &self.options;
        let mut options = Options {
            guard: o.guard.clone(),
            require_key: o.require_key,
            methods: o.methods.clone(),
            event_type: o.event_type.clone(),
            max_body_bytes: o.max_body_bytes,
            store_when: o.store_when,
        };
        change(&mut options);
        IdempotencyLayer {
            options: Arc::new(options),
        }
    }

    /// Whether a request of a guarded method without an `Idempotency-Key` is refused with
    /// `400 Bad Request` (default `false`: it passes through, unguarded).
    pub fn require_key(self, require: bool) -> Self {
        self.with(|o| o.require_key = require)
    }

    /// The methods guarded (default `POST` and `PATCH`); a request of another method passes
    /// through untouched, key or not.
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods = methods.into_iter().collect();
        self.with(|o| o.methods = methods)
    }

    /// The event type of the layer's records (default [`DEFAULT_EVENT_TYPE`]): keys of two
    /// layers with different event types never meet, and the guard's TTL for it is how
    /// long a key is remembered.
    pub fn event_type(self, event_type: impl Into<String>) -> Self {
        let event_type = event_type.into();
        self.with(|o| o.event_type = event_type)
    }

    /// The largest request body read, in bytes (default [`DEFAULT_MAX_BODY_BYTES`]); a
    /// larger one is answered `413 Content Too Large` without running the service.
    pub fn max_body_bytes(self, bytes: usize) -> Self {
        self.with(|o| o.max_body_bytes = bytes)
    }

    /// Which responses are stored and replayed (default: 2xx and 4xx). A response not
    /// stored is sent as it is and releases the key's claim, so a retry runs the request
    /// again.
    pub fn store_when(self, store: fn(StatusCode) -> bool) -> Self {
        self.with(|o| o.store_when = store)
    }
}

impl<S> tower_layer::Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::new(inner, Arc::clone(&self.options))
    }
}
