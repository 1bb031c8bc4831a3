//! Staff authentication in every service: a tower layer that verifies the
//! `authorization: Bearer` access token of a request locally, against the
//! identity service's JWKS (cached, refetched when a key id is unknown), and
//! against the session revocations identity publishes in the coordinator.
//!
//! A verified token becomes a [`StaffPrincipal`] in the request's
//! extensions; a request without a token passes through (the handler decides
//! whether it needs one); a bad, expired or revoked token is UNAUTHENTICATED.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::coord::SharedCoordinator;
use crate::gather::{Bounds, Gather};

/// The audience of every access token.
pub const AUDIENCE: &str = "confidant";

/// The coordinator key that marks a session revoked.
pub fn revoked_session_key(session_id: &str) -> String {
    format!("revoked-session:{session_id}")
}

/// The coordinator channel on which identity announces each revoked
/// session (the message is the session id), after marking it revoked.
pub const REVOCATIONS_CHANNEL: &str = "revoked-sessions";

/// Ends a session everywhere: marks it revoked in the coordinator for `ttl`
/// (as long as its access tokens can live), then announces it so that every
/// service forgets at once that it found the session live.
pub async fn revoke_session(
    coord: &dyn crate::coord::Coordinator,
    session_id: &str,
    ttl: Duration,
) -> Result<(), crate::coord::Error> {
    coord
        .put(&revoked_session_key(session_id), b"1", ttl)
        .await?;
    coord.publish(REVOCATIONS_CHANNEL, session_id).await
}

/// Most sessions remembered live at once; past it the memory starts over.
const MAX_LIVE_SESSIONS: usize = 100_000;

/// Sessions a service found not revoked in the last `window`, trusted
/// without asking the coordinator again, but only while it is subscribed
/// to [`REVOCATIONS_CHANNEL`]: an announced revocation is forgotten the
/// moment it arrives, and while the subscription is down (or was ever lost
/// since the answer was asked for) nothing is remembered and every request
/// asks. `window` bounds how long a session stays trusted if an
/// announcement were lost while the subscription looked healthy.
#[derive(Debug)]
struct LiveSessions {
    window: Duration,
    state: std::sync::Mutex<LiveState>,
}

#[derive(Debug, Default)]
struct LiveState {
    subscribed: bool,
    /// Grows with every announcement and every change of subscription: an
    /// answer asked for before it changed is not remembered.
    epoch: u64,
    found_live: HashMap<String, Instant>,
}

impl LiveSessions {
    fn new(window: Duration) -> Self {
        Self {
            window,
            state: std::sync::Mutex::new(LiveState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `session` was found live within the window.
    fn known_live(&self, session: &str) -> bool {
        if self.window.is_zero() {
            return false;
        }
        let state = self.state();
        state.subscribed
            && state
                .found_live
                .get(session)
                .is_some_and(|at| at.elapsed() < self.window)
    }

    /// The epoch to quote when remembering an answer about to be asked for;
    /// `None` when nothing can be remembered now.
    fn epoch(&self) -> Option<u64> {
        let state = self.state();
        (state.subscribed && !self.window.is_zero()).then_some(state.epoch)
    }

    /// Remembers that `session` was found live, unless anything was
    /// announced (or the subscription changed) since `epoch`.
    fn remember(&self, session: &str, epoch: u64, asked_at: Instant) {
        let mut state = self.state();
        if !state.subscribed || state.epoch != epoch {
            return;
        }
        if state.found_live.len() >= MAX_LIVE_SESSIONS {
            let window = self.window;
            state.found_live.retain(|_, at| at.elapsed() < window);
            if state.found_live.len() >= MAX_LIVE_SESSIONS {
                state.found_live.clear();
            }
        }
        state.found_live.insert(session.to_owned(), asked_at);
    }

    fn announced(&self, session: &str) {
        let mut state = self.state();
        state.epoch += 1;
        state.found_live.remove(session);
    }

    fn subscription(&self, subscribed: bool) {
        let mut state = self.state();
        state.epoch += 1;
        state.subscribed = subscribed;
        state.found_live.clear();
    }
}

/// Keeps `live` subscribed to the announcements of revoked sessions for as
/// long as it exists, resubscribing after a loss. With a coordinator that
/// announces nothing, every request asks.
fn follow_revocations(live: &Arc<LiveSessions>, coord: SharedCoordinator) {
    use crate::coord::Heard;
    if live.window.is_zero() {
        return;
    }
    crate::coord::follow(
        coord,
        REVOCATIONS_CHANNEL,
        live,
        |sessions, heard| match heard {
            Heard::Subscribed => sessions.subscription(true),
            Heard::Notice(session) => sessions.announced(session),
            Heard::Lost => {
                sessions.subscription(false);
                tracing::warn!(
                    "revocation announcements lost; every request asks until resubscribed"
                );
            }
        },
    );
}

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: `<trust domain>/identity`.
    pub iss: String,
    /// Audience: [`AUDIENCE`].
    pub aud: String,
    /// The staff member.
    pub sub: String,
    /// The session.
    pub sid: String,
    /// Roles at issue time.
    pub roles: Vec<String>,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expires at (unix seconds).
    pub exp: i64,
    /// Token id.
    pub jti: String,
}

/// The audience of client tokens: a client token is never a staff token.
pub const CLIENT_AUDIENCE: &str = "confidant:client";

/// What a client token says: a client who proved control of a contact
/// channel, for one purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientClaims {
    /// Issuer: `<trust domain>/identity`.
    pub iss: String,
    /// Audience: [`CLIENT_AUDIENCE`].
    pub aud: String,
    /// The client.
    pub sub: String,
    /// What the verification was for (e.g. an intake invitation id).
    pub reference: String,
    /// Verification level: 1 contact proven, 2 identity document checked.
    pub level: i32,
    /// Issued at.
    pub iat: i64,
    /// Expires at.
    pub exp: i64,
    /// Token id.
    pub jti: String,
}

/// A token that does not verify. The reason stays in the log; the caller
/// learns only that it was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid access token")]
pub struct InvalidToken;

/// Verifies access tokens against a JWKS.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: BTreeMap<String, DecodingKey>,
    issuer: String,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier for the Ed25519 keys of a JWKS document, accepting `issuer`.
    pub fn from_jwks(jwks: &str, issuer: &str) -> Result<Self, InvalidToken> {
        let doc: serde_json::Value = serde_json::from_str(jwks).map_err(|_| InvalidToken)?;
        let mut keys = BTreeMap::new();
        for k in doc["keys"].as_array().ok_or(InvalidToken)? {
            if k["kty"] != "OKP" || k["crv"] != "Ed25519" {
                continue;
            }
            let (Some(kid), Some(x)) = (k["kid"].as_str(), k["x"].as_str()) else {
                continue;
            };
            keys.insert(
                kid.to_owned(),
                DecodingKey::from_ed_components(x).map_err(|_| InvalidToken)?,
            );
        }
        Ok(Self {
            keys,
            issuer: issuer.to_owned(),
        })
    }

    /// Whether the token names a key this verifier knows.
    pub fn knows(&self, token: &str) -> bool {
        jsonwebtoken::decode_header(token)
            .ok()
            .and_then(|h| h.kid)
            .is_some_and(|kid| self.keys.contains_key(&kid))
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<T, InvalidToken> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| InvalidToken)?;
        if header.alg != Algorithm::EdDSA {
            return Err(InvalidToken);
        }
        let key = header
            .kid
            .as_ref()
            .and_then(|k| self.keys.get(k))
            .ok_or(InvalidToken)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<T>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|_| InvalidToken)
    }

    /// Checks the signature of a signed document (a JWS such as a wall
    /// certification) and returns its payload; no expiry or audience.
    pub fn verify_document(&self, jws: &str) -> Result<serde_json::Value, InvalidToken> {
        let header = jsonwebtoken::decode_header(jws).map_err(|_| InvalidToken)?;
        if header.alg != Algorithm::EdDSA {
            return Err(InvalidToken);
        }
        let key = header
            .kid
            .as_ref()
            .and_then(|k| self.keys.get(k))
            .ok_or(InvalidToken)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims::<&str>(&[]);
        jsonwebtoken::decode::<serde_json::Value>(jws, key, &validation)
            .map(|data| data.claims)
            .map_err(|_| InvalidToken)
    }

    /// Checks a client token: signature, expiry, issuer, client audience.
    pub fn verify_client(&self, token: &str) -> Result<ClientClaims, InvalidToken> {
        self.decode(token, CLIENT_AUDIENCE)
    }

    /// Checks a staff access token: signature, expiry, issuer, audience.
    pub fn verify(&self, token: &str) -> Result<Claims, InvalidToken> {
        self.decode(token, AUDIENCE)
    }
}

/// The staff member a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffPrincipal {
    /// Staff id.
    pub staff_id: String,
    /// Session id.
    pub session_id: String,
    /// Roles when the token was issued.
    pub roles: Vec<String>,
}

impl StaffPrincipal {
    /// The principal of a tonic request, if it carried a valid token.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<StaffPrincipal> {
        request.extensions().get::<StaffPrincipal>().cloned()
    }
}

/// Where the JWKS comes from.
#[async_trait::async_trait]
pub trait JwksSource: Send + Sync + std::fmt::Debug {
    /// The current JWKS document and issuer.
    async fn fetch(&self) -> Result<(String, String), String>;
}

/// The identity service's `GetJwks`, over a peer channel.
#[derive(Debug, Clone)]
pub struct IdentityJwks(pub crate::client::PeerChannel);

#[async_trait::async_trait]
impl JwksSource for IdentityJwks {
    async fn fetch(&self) -> Result<(String, String), String> {
        use confidant_proto::identity::v1::GetJwksRequest;
        use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
        let response = IdentityServiceClient::new(self.0.clone())
            .get_jwks(GetJwksRequest {})
            .await
            .map_err(|s| format!("{:?}", s.code()))?
            .into_inner();
        Ok((response.jwks_json, response.issuer))
    }
}

/// How long a fetched JWKS is trusted before it is fetched again.
const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// Least time between two fetches triggered by unknown key ids.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(5);

/// At most this many verified tokens are remembered per key set.
const VERIFIED_CAPACITY: usize = 10_000;

#[derive(Debug)]
struct Cached {
    verifier: TokenVerifier,
    fetched: Instant,
    verified: Arc<Verified>,
}

/// Staff tokens whose signature and claims were checked against this key
/// set, by the SHA-256 of the token (the token itself is not kept): a
/// repeated token costs a hash instead of a signature check until it
/// expires. A new key set starts empty, so a withdrawn key's tokens are
/// checked again (and refused). Revocation is checked on every request.
#[derive(Debug, Default)]
struct Verified(std::sync::Mutex<HashMap<[u8; 32], Claims>>);

impl Verified {
    fn digest(token: &str) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    fn get(&self, key: &[u8; 32], now: i64) -> Option<Claims> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(key).filter(|c| c.exp > now).cloned()
    }

    fn put(&self, key: [u8; 32], claims: &Claims, now: i64) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= VERIFIED_CAPACITY {
            map.retain(|_, c| c.exp > now);
            if map.len() >= VERIFIED_CAPACITY {
                map.clear();
            }
        }
        map.insert(key, claims.clone());
    }
}

/// Verifies bearer tokens for a service: cached JWKS plus revocation checks.
#[derive(Debug, Clone)]
pub struct StaffAuth {
    source: Arc<dyn JwksSource>,
    revocations: Gather<RevocationCheck>,
    live: Arc<LiveSessions>,
    cache: Arc<RwLock<Option<Cached>>>,
}

/// A revocation check waiting for its answer: the session's coordinator
/// key, and where to send whether it is revoked (`Err` when the coordinator
/// could not be read).
type RevocationCheck = (String, tokio::sync::oneshot::Sender<Result<bool, ()>>);

/// Most revocation checks one read of the coordinator carries.
const MAX_CHECKS: usize = 256;

/// Revocation checks shared among concurrent requests. Under load many
/// requests check their sessions at the same moment; whoever waits is
/// checked with one read of the coordinator (one MGET) instead of one GET
/// each. A check still reads the coordinator after its request asked
/// (nothing is answered from an earlier read), so a session revoked before
/// a request arrived is refused exactly as with a read of its own. A lone
/// request's check goes out after one turn of the scheduler, with any
/// check that arrived in that turn.
fn revocation_checks(coord: SharedCoordinator) -> Gather<RevocationCheck> {
    Gather::new(
        Bounds {
            max_weight: MAX_CHECKS,
            // While one read is out, the next requests gather for the
            // following one.
            in_flight: 2,
        },
        |_| 1,
        move |group: Vec<RevocationCheck>| {
            let coord = coord.clone();
            async move {
                let mut keys: Vec<String> = group.iter().map(|(key, _)| key.clone()).collect();
                keys.sort_unstable();
                keys.dedup();
                let revoked: Option<HashMap<&str, bool>> = match coord.get_many(&keys).await {
                    Ok(values) if values.len() == keys.len() => Some(
                        keys.iter()
                            .map(String::as_str)
                            .zip(values.iter().map(Option::is_some))
                            .collect(),
                    ),
                    Ok(_) => {
                        tracing::warn!("revocation check: the coordinator answered for other keys");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "revocation check failed");
                        None
                    }
                };
                for (key, reply) in group {
                    let answer = revoked
                        .as_ref()
                        .and_then(|r| r.get(key.as_str()).copied())
                        .ok_or(());
                    let _ = reply.send(answer);
                }
            }
        },
    )
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// Bad signature, expired, wrong issuer or audience, unknown key.
    #[error("invalid access token")]
    Invalid,
    /// The session was ended.
    #[error("session revoked")]
    Revoked,
    /// The JWKS or the coordinator could not be reached.
    #[error("cannot verify tokens right now")]
    Unavailable,
}

impl StaffAuth {
    /// Verification against keys from `source`, revocations in `coord`,
    /// every request asking the coordinator.
    /// Must be called on a Tokio runtime (checks are served on it).
    pub fn new(source: Arc<dyn JwksSource>, coord: SharedCoordinator) -> Self {
        Self::with_live_window(source, coord, Duration::ZERO)
    }

    /// As [`StaffAuth::new`], but a session found not revoked is trusted for
    /// `window` without asking again, while revocation announcements are
    /// subscribed (see `identity.session_check_cache_millis`).
    pub fn with_live_window(
        source: Arc<dyn JwksSource>,
        coord: SharedCoordinator,
        window: Duration,
    ) -> Self {
        let live = Arc::new(LiveSessions::new(window));
        follow_revocations(&live, coord.clone());
        Self {
            source,
            revocations: revocation_checks(coord),
            live,
            cache: Arc::new(RwLock::new(None)),
        }
    }

    /// Whether revocation announcements are being followed now (sessions
    /// found live are then trusted for the window).
    pub fn follows_announcements(&self) -> bool {
        self.live.epoch().is_some()
    }

    async fn verifier_for(&self, token: &str) -> Result<TokenVerifier, AuthFailure> {
        Ok(self.key_set_for(token).await?.0)
    }

    async fn key_set_for(
        &self,
        token: &str,
    ) -> Result<(TokenVerifier, Arc<Verified>), AuthFailure> {
        {
            let cache = self.cache.read().await;
            if let Some(c) = cache.as_ref()
                && c.fetched.elapsed() < JWKS_MAX_AGE
                && (c.verifier.knows(token) || c.fetched.elapsed() < JWKS_MIN_REFETCH)
            {
                return Ok((c.verifier.clone(), c.verified.clone()));
            }
        }
        let mut cache = self.cache.write().await;
        // Another request may have refreshed it meanwhile.
        if let Some(c) = cache.as_ref()
            && c.fetched.elapsed() < JWKS_MIN_REFETCH
        {
            return Ok((c.verifier.clone(), c.verified.clone()));
        }
        let (jwks, issuer) = self.source.fetch().await.map_err(|e| {
            tracing::warn!(error = %e, "jwks fetch failed");
            AuthFailure::Unavailable
        })?;
        let verifier =
            TokenVerifier::from_jwks(&jwks, &issuer).map_err(|_| AuthFailure::Unavailable)?;
        let verified = Arc::new(Verified::default());
        *cache = Some(Cached {
            verifier: verifier.clone(),
            fetched: Instant::now(),
            verified: verified.clone(),
        });
        Ok((verifier, verified))
    }

    /// Verifies a client token (identity's one-time code flow): signature,
    /// expiry, issuer and the client audience. Client tokens are short-lived
    /// and bound to one reference; they have no session to revoke.
    pub async fn authenticate_client(&self, token: &str) -> Result<ClientClaims, AuthFailure> {
        self.verifier_for(token)
            .await?
            .verify_client(token)
            .map_err(|_| AuthFailure::Invalid)
    }

    /// Verifies a bearer token: signature and claims, then revocation.
    pub async fn authenticate(&self, token: &str) -> Result<StaffPrincipal, AuthFailure> {
        let (verifier, verified) = self.key_set_for(token).await?;
        let key = Verified::digest(token);
        let now = chrono::Utc::now().timestamp();
        let claims = match verified.get(&key, now) {
            Some(claims) => claims,
            None => {
                let claims = verifier.verify(token).map_err(|_| AuthFailure::Invalid)?;
                verified.put(key, &claims, now);
                claims
            }
        };
        if !self.live.known_live(&claims.sid) {
            let epoch = self.live.epoch();
            let asked_at = Instant::now();
            match self.revocations.ask(revoked_session_key(&claims.sid)).await {
                Some(Ok(false)) => {
                    if let Some(epoch) = epoch {
                        self.live.remember(&claims.sid, epoch, asked_at);
                    }
                }
                Some(Ok(true)) => return Err(AuthFailure::Revoked),
                Some(Err(())) | None => return Err(AuthFailure::Unavailable),
            }
        }
        Ok(StaffPrincipal {
            staff_id: claims.sub,
            session_id: claims.sid,
            roles: claims.roles,
        })
    }
}

/// The tower layer around every service; without a [`StaffAuth`] (no
/// identity service reachable) every bearer token is refused.
#[derive(Debug, Clone)]
pub struct StaffAuthLayer(pub Option<StaffAuth>);

impl<S> tower::Layer<S> for StaffAuthLayer {
    type Service = StaffAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StaffAuthService {
            inner,
            auth: self.0.clone(),
        }
    }
}

/// See [`StaffAuthLayer`].
#[derive(Debug, Clone)]
pub struct StaffAuthService<S> {
    inner: S,
    auth: Option<StaffAuth>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for StaffAuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // Take the service that was polled ready; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let token = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned);
            if let Some(token) = token {
                let outcome = match &auth {
                    Some(auth) => auth.authenticate(&token).await,
                    None => Err(AuthFailure::Unavailable),
                };
                match outcome {
                    Ok(principal) => {
                        req.extensions_mut().insert(principal);
                    }
                    Err(failure) => {
                        let status = match failure {
                            AuthFailure::Unavailable => {
                                tonic::Status::unavailable(failure.to_string())
                            }
                            AuthFailure::Invalid | AuthFailure::Revoked => {
                                crate::error::with_reason(
                                    tonic::Code::Unauthenticated,
                                    if failure == AuthFailure::Revoked {
                                        "session_revoked"
                                    } else {
                                        "invalid_token"
                                    },
                                    failure.to_string(),
                                )
                            }
                        };
                        return Ok(status.into_http());
                    }
                }
            }
            inner.call(req).await
        })
    }
}

/// Who calls: a staff member (a verified token, through some peer) or a
/// service or application acting for itself (its certificate alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A staff member.
    Staff {
        /// Staff id.
        staff_id: String,
        /// Roles in their token.
        roles: Vec<String>,
        /// The peer certificate's identity.
        peer: String,
        /// The session of their token (empty when not known).
        session: String,
    },
    /// A service or application.
    Service {
        /// The peer certificate's identity.
        peer: String,
    },
}

impl Actor {
    /// The caller of a tonic request: the staff member of its token, or its
    /// peer; `None` without a peer identity.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Actor> {
        let peer = crate::peer::PeerIdentity::of(request)?.as_str().to_owned();
        Some(match StaffPrincipal::of(request) {
            Some(staff) => Actor::Staff {
                staff_id: staff.staff_id,
                roles: staff.roles,
                peer,
                session: staff.session_id,
            },
            None => Actor::Service { peer },
        })
    }

    /// The id recorded for it: the staff id, or the peer identity.
    pub fn id(&self) -> &str {
        match self {
            Actor::Staff { staff_id, .. } => staff_id,
            Actor::Service { peer } => peer,
        }
    }

    /// The peer identity it called through.
    pub fn peer(&self) -> &str {
        match self {
            Actor::Staff { peer, .. } | Actor::Service { peer } => peer,
        }
    }

    /// An audit event of `action` by this actor, produced by `service`.
    pub fn event(
        &self,
        service: crate::ServiceName,
        trust_domain: &str,
        action: crate::audit::Action,
    ) -> crate::audit::EventBuilder {
        use confidant_proto::audit::v1::ActorKind;
        let b = crate::audit::EventBuilder::new(service, trust_domain, action);
        match self {
            Actor::Staff {
                staff_id,
                roles,
                peer,
                session,
            } => b
                .actor(ActorKind::Staff, staff_id, peer)
                .roles(roles)
                .session(session),
            Actor::Service { peer } => b.actor(ActorKind::Service, peer, peer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};

    #[derive(Debug)]
    struct Fixed(String);

    #[async_trait::async_trait]
    impl JwksSource for Fixed {
        async fn fetch(&self) -> Result<(String, String), String> {
            Ok((self.0.clone(), "t/identity".into()))
        }
    }

    struct Signer {
        encoding: EncodingKey,
        jwks: String,
    }

    fn signer() -> Signer {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        Signer {
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwks:
                serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1"}]})
                    .to_string(),
        }
    }

    impl Signer {
        fn token(&self, sid: &str, exp_in: i64) -> String {
            let now = chrono::Utc::now().timestamp();
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some("k1".into());
            let claims = Claims {
                iss: "t/identity".into(),
                aud: AUDIENCE.into(),
                sub: "staff-1".into(),
                sid: sid.into(),
                roles: vec!["associate".into()],
                iat: now,
                exp: now + exp_in,
                jti: sid.into(),
            };
            jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
        }
    }

    /// A token checked once is remembered, but only as far as its signature
    /// and claims go: revocation still ends it at once, an expired or
    /// altered token is still refused.
    #[tokio::test]
    async fn remembered_tokens_still_honour_revocation_expiry_and_tampering() {
        let s = signer();
        let coord: SharedCoordinator = Arc::new(crate::coord::InProcess::new());
        let auth = StaffAuth::new(Arc::new(Fixed(s.jwks.clone())), coord.clone());
        let token = s.token("session-1", 600);
        for _ in 0..3 {
            let p = auth.authenticate(&token).await.unwrap();
            assert_eq!(p.staff_id, "staff-1");
            assert_eq!(p.session_id, "session-1");
        }
        mark_revoked(coord.as_ref(), "session-1").await;
        assert_eq!(
            auth.authenticate(&token).await.unwrap_err(),
            AuthFailure::Revoked
        );

        let expired = s.token("session-2", -120);
        for _ in 0..2 {
            assert_eq!(
                auth.authenticate(&expired).await.unwrap_err(),
                AuthFailure::Invalid
            );
        }
        let good = s.token("session-3", 600);
        auth.authenticate(&good).await.unwrap();
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin"}"#);
        assert_eq!(
            auth.authenticate(&parts.join(".")).await.unwrap_err(),
            AuthFailure::Invalid
        );

        // A remembered verification ends with the token's expiry.
        let key = Verified::digest(&good);
        let (_, verified) = auth.key_set_for(&good).await.unwrap();
        let now = chrono::Utc::now().timestamp();
        assert!(verified.get(&key, now).is_some());
        assert!(verified.get(&key, now + 601).is_none());
    }

    /// Auth trusting a session found live for a minute, once it follows
    /// the announcements of `coord`.
    async fn trusting_a_minute(s: &Signer, coord: SharedCoordinator) -> StaffAuth {
        let auth = StaffAuth::with_live_window(
            Arc::new(Fixed(s.jwks.clone())),
            coord,
            Duration::from_secs(60),
        );
        following(&auth).await;
        auth
    }

    /// Marks `session` revoked in `coord` without announcing it (as a
    /// revocation made while no one was subscribed would be).
    async fn mark_revoked(coord: &dyn crate::coord::Coordinator, session: &str) {
        coord
            .put(&revoked_session_key(session), b"1", Duration::from_secs(60))
            .await
            .unwrap();
    }

    /// The in-process coordinator, counting its reads and taking `pause`
    /// over each, so that requests arriving meanwhile find it busy.
    #[derive(Debug)]
    struct Slow {
        inner: crate::coord::InProcess,
        reads: std::sync::atomic::AtomicUsize,
        pause: Duration,
    }

    impl Slow {
        async fn read(&self) {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(self.pause).await;
        }
    }

    #[async_trait::async_trait]
    impl crate::coord::Coordinator for Slow {
        async fn put(
            &self,
            key: &str,
            value: &[u8],
            ttl: Duration,
        ) -> Result<(), crate::coord::Error> {
            self.inner.put(key, value, ttl).await
        }
        async fn put_if_absent(
            &self,
            key: &str,
            value: &[u8],
            ttl: Duration,
        ) -> Result<bool, crate::coord::Error> {
            self.inner.put_if_absent(key, value, ttl).await
        }
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, crate::coord::Error> {
            self.read().await;
            self.inner.get(key).await
        }
        async fn get_many(
            &self,
            keys: &[String],
        ) -> Result<Vec<Option<Vec<u8>>>, crate::coord::Error> {
            self.read().await;
            self.inner.get_many(keys).await
        }
        async fn delete(&self, key: &str) -> Result<bool, crate::coord::Error> {
            self.inner.delete(key).await
        }
        async fn increment(&self, key: &str, window: Duration) -> Result<u64, crate::coord::Error> {
            self.inner.increment(key, window).await
        }
        async fn acquire_lease(
            &self,
            name: &str,
            holder: &str,
            ttl: Duration,
        ) -> Result<Option<crate::coord::Lease>, crate::coord::Error> {
            self.inner.acquire_lease(name, holder, ttl).await
        }
        async fn renew_lease(
            &self,
            lease: &crate::coord::Lease,
            ttl: Duration,
        ) -> Result<bool, crate::coord::Error> {
            self.inner.renew_lease(lease, ttl).await
        }
        async fn release_lease(
            &self,
            lease: &crate::coord::Lease,
        ) -> Result<bool, crate::coord::Error> {
            self.inner.release_lease(lease).await
        }
        async fn holds(&self, lease: &crate::coord::Lease) -> Result<bool, crate::coord::Error> {
            self.inner.holds(lease).await
        }
    }

    /// Requests that arrive while the coordinator is being read share the
    /// next read, and each still gets its own session's answer, read after
    /// it asked: a session revoked while earlier checks were out is
    /// refused, its neighbours in the same read are let through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_revocation_reads_and_each_gets_its_own_answer() {
        let s = signer();
        let coord = Arc::new(Slow {
            inner: crate::coord::InProcess::new(),
            reads: std::sync::atomic::AtomicUsize::new(0),
            pause: Duration::from_secs(1),
        });
        let auth = StaffAuth::new(Arc::new(Fixed(s.jwks.clone())), coord.clone());
        let check = |token: String| {
            let auth = auth.clone();
            tokio::spawn(async move { auth.authenticate(&token).await.map(|p| p.session_id) })
        };
        // Signatures checked and remembered first, so that below only the
        // revocation checks take time.
        for sid in ["busy", "fine", "late"] {
            auth.authenticate(&s.token(sid, 600)).await.unwrap();
        }
        let reads_before = coord.reads.load(std::sync::atomic::Ordering::SeqCst);

        // Two checks take both reads that may be out at once: the second
        // asks only once the first's read has begun (asked together, they
        // would share one read), however slowly the machine runs.
        let mut busy = Vec::new();
        for n in 1..=2 {
            busy.push(check(s.token("busy", 600)));
            let deadline = Instant::now() + Duration::from_secs(30);
            while coord.reads.load(std::sync::atomic::Ordering::SeqCst) < reads_before + n {
                assert!(Instant::now() < deadline, "read {n} never began");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Revoked after those reads began, before the next requests ask.
        mark_revoked(coord.as_ref(), "late").await;
        let queued: Vec<_> = (0..30)
            .map(|i| check(s.token(if i % 2 == 0 { "late" } else { "fine" }, 600)))
            .collect();
        for task in busy {
            assert_eq!(task.await.unwrap().unwrap(), "busy");
        }
        let (mut fine, mut refused) = (0, 0);
        for (i, task) in queued.into_iter().enumerate() {
            match task.await.unwrap() {
                Ok(sid) if i % 2 == 1 => {
                    assert_eq!(sid, "fine");
                    fine += 1;
                }
                Err(AuthFailure::Revoked) if i % 2 == 0 => refused += 1,
                other => panic!("request {i}: {other:?}"),
            }
        }
        assert_eq!((fine, refused), (15, 15));
        let reads = coord.reads.load(std::sync::atomic::Ordering::SeqCst) - reads_before;
        // Two lone reads, then the 30 waiting requests in at most two.
        assert!(
            reads <= 4,
            "32 checks took {reads} reads of the coordinator"
        );
    }

    async fn following(auth: &StaffAuth) {
        for _ in 0..500 {
            if auth.follows_announcements() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("revocation announcements never subscribed");
    }

    /// Polls until `token` is refused as revoked; false if it never is.
    async fn refused_soon(auth: &StaffAuth, token: &str) -> bool {
        for _ in 0..500 {
            match auth.authenticate(token).await {
                Err(AuthFailure::Revoked) => return true,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(other) => panic!("{other:?}"),
            }
        }
        false
    }

    /// A session found live is trusted for the window without asking the
    /// coordinator (a revocation mark written without an announcement is
    /// not seen), and an announced revocation ends that trust at once.
    async fn announced_revocations_end_trusted_sessions(coord: SharedCoordinator) {
        let s = signer();
        let auth = trusting_a_minute(&s, coord.clone()).await;
        let token = s.token("session-1", 600);
        auth.authenticate(&token).await.unwrap();
        // Marked revoked but never announced: still trusted from memory.
        mark_revoked(coord.as_ref(), "session-1").await;
        assert_eq!(
            auth.authenticate(&token).await.unwrap().session_id,
            "session-1"
        );
        // Announced: refused, long before the window ends.
        let other = s.token("session-2", 600);
        auth.authenticate(&other).await.unwrap();
        revoke_session(coord.as_ref(), "session-1", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(refused_soon(&auth, &token).await);
        // Its neighbours are unaffected.
        assert_eq!(
            auth.authenticate(&other).await.unwrap().session_id,
            "session-2"
        );
    }

    #[tokio::test]
    async fn announced_revocations_end_trusted_sessions_in_process() {
        announced_revocations_end_trusted_sessions(Arc::new(crate::coord::InProcess::new())).await;
    }

    async fn redis() -> SharedCoordinator {
        let prefix = format!("{}:", crate::testing::unique_name("auth"));
        Arc::new(
            crate::coord::Redis::connect(&crate::testing::redis_url(), &prefix)
                .await
                .expect("redis reachable"),
        )
    }

    /// A coordinator on Redis that logs in as a user of its own, so that a
    /// test can cut its connections and no other test's.
    async fn redis_as_own_user(
        admin: &mut redis::aio::MultiplexedConnection,
    ) -> (SharedCoordinator, String) {
        let user = crate::testing::unique_name("auth_user");
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg("nopass")
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query_async::<()>(admin)
            .await
            .unwrap();
        let base = redis::Client::open(crate::testing::redis_url())
            .unwrap()
            .get_connection_info()
            .clone();
        let settings = base
            .redis_settings()
            .clone()
            .set_username(&user)
            .set_password("unused");
        let prefix = format!("{}:", crate::testing::unique_name("auth"));
        let coord = crate::coord::Redis::connect_with(base.set_redis_settings(settings), &prefix)
            .await
            .expect("redis reachable");
        (Arc::new(coord), user)
    }

    #[tokio::test]
    async fn announced_revocations_end_trusted_sessions_on_redis() {
        announced_revocations_end_trusted_sessions(redis().await).await;
    }

    /// When the subscription to announcements is lost, everything found
    /// live is forgotten (an announcement may have been missed), and the
    /// service asks again until it has resubscribed.
    #[tokio::test]
    async fn a_lost_subscription_forgets_every_trusted_session() {
        let s = signer();
        let client = redis::Client::open(crate::testing::redis_url()).unwrap();
        let mut admin = client.get_multiplexed_async_connection().await.unwrap();
        let (coord, user) = redis_as_own_user(&mut admin).await;
        let auth = trusting_a_minute(&s, coord.clone()).await;
        let token = s.token("session-3", 600);
        let other = s.token("session-5", 600);
        auth.authenticate(&token).await.unwrap();
        auth.authenticate(&other).await.unwrap();
        // The subscriber's connection (and only it) is cut.
        let cut = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(&user)
            .arg("TYPE")
            .arg("pubsub")
            .query_async::<i64>(&mut admin)
            .await
            .unwrap();
        assert_eq!(cut, 1, "one subscriber connection");
        let mut lost = false;
        for _ in 0..1000 {
            if !auth.follows_announcements() {
                lost = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(lost, "the cut subscription went unnoticed");
        // While it was down, a revocation went unannounced.
        mark_revoked(coord.as_ref(), "session-3").await;
        assert_eq!(
            auth.authenticate(&token).await.unwrap_err(),
            AuthFailure::Revoked
        );
        // Subscribed again, nothing from before is trusted: a session found
        // live before the loss and revoked unannounced is refused.
        following(&auth).await;
        mark_revoked(coord.as_ref(), "session-5").await;
        assert_eq!(
            auth.authenticate(&other).await.unwrap_err(),
            AuthFailure::Revoked
        );
        redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async::<i64>(&mut admin)
            .await
            .unwrap();
    }

    /// With no window (or a coordinator that announces nothing) every
    /// request asks: a mark written without an announcement is seen at once.
    #[tokio::test]
    async fn without_a_window_every_request_asks() {
        let s = signer();
        let coord: SharedCoordinator = Arc::new(crate::coord::InProcess::new());
        let auth = StaffAuth::new(Arc::new(Fixed(s.jwks.clone())), coord.clone());
        let token = s.token("session-4", 600);
        auth.authenticate(&token).await.unwrap();
        assert!(!auth.follows_announcements());
        mark_revoked(coord.as_ref(), "session-4").await;
        assert_eq!(
            auth.authenticate(&token).await.unwrap_err(),
            AuthFailure::Revoked
        );
    }
}
