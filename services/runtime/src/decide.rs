//! Asking the identity service whether a staff member may act, from any
//! service: one client of `Authorize`, with a short cache of allowed
//! decisions so that a burst of calls by one person on one matter asks once.
//! Calls that find no decision while the same question is already out to
//! identity wait for its answer instead of asking again, so concurrent
//! requests (and every request when a cached decision lapses under load)
//! cost identity one decision, and the audit log one decision event, not
//! one each. Denials are never cached (a denial is shared only by the calls
//! that were waiting for it); the cache's window bounds how long a revoked
//! grant keeps working on a replica (identity's own facts cache has the same
//! bound).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
use confidant_proto::identity::v1::{AuthorizeRequest, DenialReason};
use uuid::Uuid;

use crate::client::PeerChannel;

/// Why an action is not allowed.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// Identity denied it; `reason` is its machine-readable reason
    /// (`behind_wall`, `not_assigned`, ...).
    Denied {
        /// The reason code.
        reason: String,
        /// For people.
        message: String,
    },
    /// Identity could not be asked.
    Unavailable(tonic::Status),
}

/// (staff, permission, client, matter).
type Key = (String, String, Option<Uuid>, Option<Uuid>);

/// The answer to one question to identity, shared by the calls waiting
/// for it.
type Asked = Arc<tokio::sync::OnceCell<Result<(), Refusal>>>;

/// The decisions of one service.
#[derive(Debug)]
pub struct Decider {
    identity: Option<PeerChannel>,
    ttl: Duration,
    allowed: Mutex<HashMap<Key, Instant>>,
    /// Questions out to identity now.
    asking: Mutex<HashMap<Key, Asked>>,
}

/// Most allowed decisions held.
const CAPACITY: usize = 10_000;

/// The reason code of a denial, e.g. `not_assigned`.
pub fn denial_reason(code: i32) -> String {
    DenialReason::try_from(code)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("DENIAL_REASON_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "denied".to_owned())
}

impl Decider {
    /// Asks identity over `identity`; allowed decisions are reused for `ttl`
    /// (zero: never).
    pub fn new(identity: Option<PeerChannel>, ttl: Duration) -> Self {
        Self {
            identity,
            ttl,
            allowed: Mutex::default(),
            asking: Mutex::default(),
        }
    }

    fn cached(&self, key: &Key) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        self.allowed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    fn remember(&self, key: Key) {
        if self.ttl.is_zero() {
            return;
        }
        let mut allowed = self
            .allowed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if allowed.len() >= CAPACITY {
            let ttl = self.ttl;
            allowed.retain(|_, at| at.elapsed() < ttl);
            if allowed.len() >= CAPACITY {
                allowed.clear();
            }
        }
        allowed.insert(key, Instant::now());
    }

    /// Whether `staff_id` may use `permission` on the client or matter.
    pub async fn decide(
        &self,
        staff_id: &str,
        permission: &str,
        client_id: Option<Uuid>,
        matter_id: Option<Uuid>,
    ) -> Result<(), Refusal> {
        let key = (
            staff_id.to_owned(),
            permission.to_owned(),
            client_id,
            matter_id,
        );
        if self.cached(&key) {
            return Ok(());
        }
        let asked: Asked = self
            .asking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        // One of the waiting calls asks; if it is dropped half-way, another
        // takes over.
        let answer = asked.get_or_init(|| self.ask(&key)).await.clone();
        let mut asking = self
            .asking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if asking.get(&key).is_some_and(|a| Arc::ptr_eq(a, &asked)) {
            asking.remove(&key);
        }
        answer
    }

    /// Asks identity (and remembers an allowed decision).
    async fn ask(&self, key: &Key) -> Result<(), Refusal> {
        let (staff_id, permission, client_id, matter_id) = key;
        let channel = self.identity.clone().ok_or_else(|| {
            Refusal::Unavailable(tonic::Status::unavailable(
                "the identity service is not configured",
            ))
        })?;
        let decision = IdentityServiceClient::new(channel)
            .authorize(AuthorizeRequest {
                staff_id: staff_id.to_owned(),
                permission: permission.to_owned(),
                client_id: client_id.map(|c| c.to_string()).unwrap_or_default(),
                matter_id: matter_id.map(|m| m.to_string()).unwrap_or_default(),
            })
            .await
            .map_err(Refusal::Unavailable)?
            .into_inner();
        if decision.allowed {
            self.remember(key.clone());
            Ok(())
        } else {
            Err(Refusal::Denied {
                reason: denial_reason(decision.reason),
                message: format!("{permission} denied by the authorization decision"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_the_enum_names_in_lowercase() {
        assert_eq!(
            denial_reason(DenialReason::BehindWall as i32),
            "behind_wall"
        );
        assert_eq!(denial_reason(9999), "denied");
    }

    #[tokio::test]
    async fn without_identity_nothing_is_allowed() {
        let decider = Decider::new(None, Duration::from_secs(1));
        assert!(matches!(
            decider.decide("s", "client_data.read", None, None).await,
            Err(Refusal::Unavailable(_))
        ));
    }
}
