//! A bound on the calls one service serves at once. Past it, a new call is
//! refused at once with UNAVAILABLE (reason `overloaded`, a `RetryInfo` of
//! one second) instead of queueing behind the others until its caller's
//! deadline: a saturated replica sheds load the balancer and clients can
//! route or retry around, and its memory stays bounded. A call holds its
//! place until its response has been sent whole (a streamed download until
//! its last segment; an upload until it is stored).
//!
//! Health checks and reflection never count and are never refused, so a
//! saturated replica still answers its orchestrator's probes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::ERROR_DOMAIN;

/// Calls served at once by one service when its settings do not say
/// (`services.<name>.max_in_flight`).
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 1000;

/// The reason (ErrorInfo) of a refused call.
pub const OVERLOADED: &str = "overloaded";

/// How often, at most, a service logs that it is refusing calls.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct InFlightLayer {
    permits: Arc<Semaphore>,
    refusals: Arc<Refusals>,
}

impl InFlightLayer {
    /// At most `max` calls at once (at least one) for `service`.
    pub fn new(service: crate::ServiceName, max: u32) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(usize::try_from(max.max(1)).unwrap_or(1))),
            refusals: Arc::new(Refusals::new(service, max.max(1))),
        }
    }
}

impl<S> tower::Layer<S> for InFlightLayer {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlight {
            inner,
            permits: self.permits.clone(),
            refusals: self.refusals.clone(),
        }
    }
}

/// See [`InFlightLayer`].
#[derive(Debug, Clone)]
pub struct InFlight<S> {
    inner: S,
    permits: Arc<Semaphore>,
    refusals: Arc<Refusals>,
}

/// The calls refused since the last report: an operator learns from the
/// log that a service sheds load (one line per [`REPORT_EVERY`] at most,
/// with the count), not from a line per refused call.
#[derive(Debug)]
struct Refusals {
    service: crate::ServiceName,
    limit: u32,
    state: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
}

impl Refusals {
    fn new(service: crate::ServiceName, limit: u32) -> Self {
        Self {
            service,
            limit,
            state: std::sync::Mutex::new((0, None)),
        }
    }

    /// Counts one refusal at `now`; the refusals to report, when a report
    /// is due (the first refusal, then at most one per [`REPORT_EVERY`]).
    fn count(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (refused, last) = &mut *state;
        *refused += 1;
        if last.is_some_and(|at| now.duration_since(at) < REPORT_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(refused))
    }

    fn refused(&self) {
        if let Some(refused) = self.count(std::time::Instant::now()) {
            tracing::warn!(
                service = %self.service,
                limit = self.limit,
                refused,
                "serving as many calls as max_in_flight allows; refusing new ones as overloaded"
            );
        }
    }
}

/// Calls that never count: the orchestrator's probes and reflection.
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// The refusal of a call past the bound.
fn overloaded() -> tonic::Status {
    let mut details =
        ErrorDetails::with_error_info(OVERLOADED, ERROR_DOMAIN, std::collections::HashMap::new());
    details.set_retry_info(Some(Duration::from_secs(1)));
    tonic::Status::with_error_details(
        Code::Unavailable,
        "the service is serving as many calls as it may; retry shortly",
        details,
    )
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for InFlight<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if exempt(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.refusals.refused();
            return Box::pin(std::future::ready(Ok(overloaded().into_http())));
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(Held {
                    body,
                    _permit: permit,
                })
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call's place until it is dropped.
    struct Held {
        #[pin]
        body: tonic::body::Body,
        _permit: OwnedSemaphorePermit,
    }
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_and_reflection_never_count() {
        assert!(exempt("/grpc.health.v1.Health/Check"));
        assert!(exempt("/grpc.health.v1.Health/Watch"));
        assert!(exempt(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!exempt("/confidant.vault.v1.VaultService/GetRecord"));
        assert!(!exempt("/grpc.health.v1.HealthX/Check"));
    }

    #[test]
    fn refusals_are_reported_at_once_then_at_most_every_ten_seconds_with_their_count() {
        let refusals = Refusals::new(crate::ServiceName::Vault, 1);
        let start = std::time::Instant::now();
        assert_eq!(
            refusals.count(start),
            Some(1),
            "the first is reported at once"
        );
        for s in 1..=9 {
            assert_eq!(refusals.count(start + Duration::from_secs(s)), None);
        }
        assert_eq!(
            refusals.count(start + Duration::from_secs(10)),
            Some(10),
            "the next report counts every refusal since the last"
        );
        assert_eq!(refusals.count(start + Duration::from_secs(15)), None);
        assert_eq!(refusals.count(start + Duration::from_secs(60)), Some(2));
    }

    #[test]
    fn a_refusal_is_unavailable_with_its_reason_and_a_retry_delay() {
        let status = overloaded();
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, OVERLOADED);
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(1))
        );
    }
}
