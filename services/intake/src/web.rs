//! The client-facing intake web page: a small, accessible reference page
//! served by the intake service on its own HTTPS listener (TLS 1.3 with the
//! service certificate, no client certificate: clients are members of the
//! public, protected by the invitation link, the one-time code and rate
//! limits). Everything is served from this binary; no external CDN.
//!
//! The invitation secret travels in the link's fragment (`#k=…`), which
//! browsers never send to a server or put in a `Referer`; the page posts it
//! in request bodies. The JSON endpoints are thin: each calls the same
//! handler as the gRPC API, so the page validates what the API validates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use confidant_proto::intake::v1 as pb;
use confidant_proto::intake::v1::intake_service_server::IntakeService;
use confidant_runtime::coord::SharedCoordinator;
use confidant_runtime::peer::PeerIdentity;
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::grpc::IntakeApi;

const INDEX: &str = include_str!("web/index.html");
const SCRIPT: &str = include_str!("web/intake.js");
const STYLE: &str = include_str!("web/intake.css");

/// The page's settings.
#[derive(Debug, Clone)]
pub struct WebSettings {
    /// Requests per minute per address.
    pub requests_per_minute: u32,
    /// Largest JSON body.
    pub max_body_bytes: usize,
    /// The identity recorded as the peer of the page's calls.
    pub peer: String,
}

#[derive(Debug)]
struct Web {
    api: IntakeApi,
    coord: SharedCoordinator,
    settings: WebSettings,
}

/// The address a request came from.
#[derive(Debug, Clone, Copy)]
struct ClientAddr(SocketAddr);

/// The page's routes.
fn router(web: Arc<Web>) -> Router {
    let max_body = web.settings.max_body_bytes;
    let json_routes = Router::new()
        .route("/api/open", post(open))
        .route("/api/code", post(send_code))
        .route("/api/verify", post(verify))
        .route("/api/submit", post(submit))
        .layer(DefaultBodyLimit::max(max_body));
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/intake.js",
            get(|| async { page(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/intake.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
        // Uploads are streamed and limited by the form field's size.
        .route(
            "/api/upload",
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .merge(json_routes)
        .layer(axum::middleware::from_fn_with_state(web.clone(), guard))
        .with_state(web)
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Rate limits per address and the security headers of every response.
async fn guard(State(web): State<Arc<Web>>, request: Request, next: Next) -> Response {
    let addr = request
        .extensions()
        .get::<ClientAddr>()
        .map_or_else(|| "unknown".to_owned(), |a| a.0.ip().to_string());
    let key = format!("intake-web:{addr}");
    let mut response = match web.coord.increment(&key, Duration::from_secs(60)).await {
        Ok(n) if n > u64::from(web.settings.requests_per_minute) => problem(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many requests from your address; wait a minute and try again.",
            None,
        ),
        Ok(_) => next.run(request).await,
        Err(e) => {
            tracing::warn!(error = %e, "web rate limit unavailable");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The service is busy; try again shortly.",
                None,
            )
        }
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("strict-transport-security", "max-age=31536000"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=()",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A JSON error: the reason, a message for people, and the fields that
/// broke a rule.
fn problem(status: StatusCode, reason: &str, message: &str, violations: Option<Json>) -> Response {
    let mut body = json!({ "reason": reason, "message": message });
    if let Some(v) = violations {
        body["violations"] = v;
    }
    (status, axum::Json(body)).into_response()
}

/// A gRPC status as the page sees it.
fn status_response(status: &tonic::Status) -> Response {
    use tonic::Code;
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let reason = details
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default();
    let code = match status.code() {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let violations = details.bad_request().map(|b| {
        Json::Array(
            b.field_violations
                .iter()
                .map(|f| json!({ "field": f.field, "description": f.description }))
                .collect(),
        )
    });
    let message = if code == StatusCode::INTERNAL_SERVER_ERROR {
        "Something went wrong on our side; try again later."
    } else {
        status.message()
    };
    problem(code, &reason, message, violations)
}

impl Web {
    /// A request to the API handlers, from the page's peer identity.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .extensions_mut()
            .insert(PeerIdentity::new(self.settings.peer.clone()));
        request
    }
}

fn kind_name(kind: i32) -> &'static str {
    match pb::FieldKind::try_from(kind).unwrap_or(pb::FieldKind::Unspecified) {
        pb::FieldKind::Email => "email",
        pb::FieldKind::Phone => "phone",
        pb::FieldKind::Date => "date",
        pb::FieldKind::Number => "number",
        pb::FieldKind::Choice => "choice",
        pb::FieldKind::NationalId => "national_id",
        pb::FieldKind::Address => "address",
        pb::FieldKind::Consent => "consent",
        pb::FieldKind::File => "file",
        _ => "text",
    }
}

#[derive(Debug, Deserialize)]
struct SecretBody {
    secret: String,
}

async fn open(State(web): State<Arc<Web>>, axum::Json(body): axum::Json<SecretBody>) -> Response {
    let opened = match web
        .api
        .open_invitation(web.request(pb::OpenInvitationRequest {
            secret: body.secret,
        }))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return status_response(&status),
    };
    let Some(form) = opened.form else {
        return problem(StatusCode::NOT_FOUND, "not_found", "no such form", None);
    };
    let fields: Vec<Json> = form
        .fields
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "label": f.label,
                "kind": kind_name(f.kind),
                "required": f.required,
                "min_length": f.min_length,
                "max_length": f.max_length,
                "pattern": f.pattern,
                "min_value": f.min_value,
                "max_value": f.max_value,
                "choices": f.choices,
                "help_text": f.help_text,
                "max_file_bytes": f.max_file_bytes,
                "media_types": f.media_types,
            })
        })
        .collect();
    let notice = opened.privacy_notice.unwrap_or_default();
    axum::Json(json!({
        "invitation_id": opened.invitation_id,
        "expire_seconds": opened.expire_time.map(|t| t.seconds),
        "form": {
            "name": form.name,
            "version": form.version,
            "title": form.title,
            "fields": fields,
        },
        "notice": { "version": notice.version, "text": notice.text },
    }))
    .into_response()
}

async fn send_code(
    State(web): State<Arc<Web>>,
    axum::Json(body): axum::Json<SecretBody>,
) -> Response {
    match web
        .api
        .start_invitation_verification(web.request(pb::StartInvitationVerificationRequest {
            secret: body.secret,
        }))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            axum::Json(json!({
                "verification_id": r.verification_id,
                "hint": r.contact_hint,
            }))
            .into_response()
        }
        Err(status) => status_response(&status),
    }
}

#[derive(Debug, Deserialize)]
struct VerifyBody {
    secret: String,
    verification_id: String,
    code: String,
}

async fn verify(State(web): State<Arc<Web>>, axum::Json(body): axum::Json<VerifyBody>) -> Response {
    match web
        .api
        .complete_invitation_verification(web.request(pb::CompleteInvitationVerificationRequest {
            secret: body.secret,
            verification_id: body.verification_id,
            code: body.code,
        }))
        .await
    {
        Ok(r) => axum::Json(json!({ "token": r.into_inner().client_token })).into_response(),
        Err(status) => status_response(&status),
    }
}

#[derive(Debug, Deserialize)]
struct AnswerBody {
    field: String,
    value: String,
}

#[derive(Debug, Deserialize)]
struct SubmitBody {
    secret: String,
    token: String,
    form_version: i32,
    answers: Vec<AnswerBody>,
    accepted_privacy_notice_version: i32,
    request_id: String,
}

async fn submit(State(web): State<Arc<Web>>, axum::Json(body): axum::Json<SubmitBody>) -> Response {
    let request = pb::SubmitFormRequest {
        secret: body.secret,
        client_token: body.token,
        form_version: body.form_version,
        answers: body
            .answers
            .into_iter()
            .map(|a| pb::Answer {
                field: a.field,
                value: a.value,
            })
            .collect(),
        accepted_privacy_notice_version: body.accepted_privacy_notice_version,
        request_id: body.request_id,
    };
    match web.api.submit(&web.settings.peer, request).await {
        Ok(r) => {
            let id = r.submission.map(|s| s.id).unwrap_or_default();
            axum::Json(json!({ "submission_id": id })).into_response()
        }
        Err(status) => status_response(&status),
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A file for a file field: the body is the file; the invitation secret,
/// field, name (percent-encoded) and idempotency key come in headers, the
/// client token as a bearer token, the size from Content-Length.
async fn upload(State(web): State<Arc<Web>>, headers: HeaderMap, body: Body) -> Response {
    let token = header_text(&headers, "authorization");
    let token = token.strip_prefix("Bearer ").unwrap_or_default().to_owned();
    // File names are sent percent-encoded: header values must be ASCII.
    let filename = percent_encoding::percent_decode_str(&header_text(&headers, "x-filename"))
        .decode_utf8_lossy()
        .into_owned();
    let size = header_text(&headers, "content-length")
        .parse::<i64>()
        .unwrap_or(0);
    let header = pb::UploadFormFileHeader {
        secret: header_text(&headers, "x-invitation-secret"),
        client_token: token,
        field: header_text(&headers, "x-field"),
        filename,
        media_type: header_text(&headers, "content-type"),
        size_bytes: size,
        request_id: header_text(&headers, "x-request-id"),
    };
    // The body as upload chunks of at most 1 MiB.
    let mut chunks = Box::pin(body.into_data_stream().flat_map(|item| {
        let parts: Vec<Result<pb::UploadFormFileRequest, tonic::Status>> = match item {
            Ok(bytes) => bytes
                .chunks(1024 * 1024)
                .map(|c| {
                    Ok(pb::UploadFormFileRequest {
                        part: Some(pb::upload_form_file_request::Part::Chunk(c.to_vec())),
                    })
                })
                .collect(),
            Err(_) => vec![Err(tonic::Status::cancelled("upload interrupted"))],
        };
        futures::stream::iter(parts)
    }));
    match web
        .api
        .upload_file(&web.settings.peer, header, &mut chunks)
        .await
    {
        Ok(r) => axum::Json(json!({ "upload_id": r.upload_id, "size_bytes": r.size_bytes }))
            .into_response(),
        Err(status) => status_response(&status),
    }
}

/// Serves the page on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<confidant_runtime::tls::LiveTls>,
    api: IntakeApi,
    coord: SharedCoordinator,
    settings: WebSettings,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let web = Arc::new(Web {
        api,
        coord,
        settings,
    });
    let app = router(web);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "web accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
        };
        // The certificate of the moment: a renewal serves from the next
        // connection on.
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.web_config());
        let app = app.clone().layer(axum::Extension(ClientAddr(addr)));
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "web tls handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "web connection ended");
                    }
                }
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                }
            }
        });
    }
}
