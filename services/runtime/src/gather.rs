//! Work shared among callers waiting at the same moment.
//!
//! Group commits of audit events and grouped record look-ups have the same
//! shape: callers queue a request and wait; a worker takes whoever is
//! waiting, up to a bound, and serves them all with one round trip to the
//! database. A lone caller is served at once (nothing lingers); while
//! `in_flight` groups are out, the next callers gather into the following
//! group, so the groups grow with the load.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

/// How a gatherer's groups are bounded.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The most a group carries, in the units `weight` counts.
    pub max_weight: usize,
    /// Groups out at once.
    pub in_flight: usize,
}

/// Starts a worker on the current runtime that serves the requests sent to
/// the returned sender in groups, calling `serve` on each group (up to
/// `bounds.in_flight` at once). It stops when every sender is dropped.
pub fn start<T, F, Fut>(bounds: Bounds, weight: fn(&T) -> usize, serve: F) -> mpsc::Sender<T>
where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<T>(4096);
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(bounds.in_flight.max(1)));
        while let Some(first) = rx.recv().await {
            // Requests that arrive while every slot is busy join this group.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let mut carried = weight(&first);
            let mut group = vec![first];
            while carried < bounds.max_weight {
                match rx.try_recv() {
                    Ok(next) => {
                        carried += weight(&next);
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            let serve = serve.clone();
            tokio::spawn(async move {
                serve(group).await;
                drop(slot);
            });
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::oneshot;

    type Request = (u32, oneshot::Sender<u32>);

    /// Callers waiting together are served together, each gets its own
    /// answer, no group exceeds its bound and no more groups are out at once
    /// than allowed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_callers_share_bounded_groups() {
        let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
        let out = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most_out = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, o, m) = (sizes.clone(), out.clone(), most_out.clone());
        let tx = start(
            Bounds {
                max_weight: 10,
                in_flight: 2,
            },
            |_: &Request| 1,
            move |group: Vec<Request>| {
                let (s, o, m) = (s.clone(), o.clone(), m.clone());
                async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = o.fetch_add(1, SeqCst) + 1;
                    m.fetch_max(now, SeqCst);
                    s.lock().unwrap().push(group.len());
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    for (n, reply) in group {
                        let _ = reply.send(n * 2);
                    }
                    o.fetch_sub(1, SeqCst);
                }
            },
        );
        let calls = (0..100u32).map(|n| {
            let tx = tx.clone();
            async move {
                let (reply, answer) = oneshot::channel();
                tx.send((n, reply)).await.expect("worker running");
                (n, answer.await.expect("answered"))
            }
        });
        for (n, answer) in futures::future::join_all(calls).await {
            assert_eq!(answer, n * 2);
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert!(sizes.iter().all(|s| *s <= 10), "{sizes:?}");
        assert!(sizes.len() < 100, "callers were served one by one");
        assert!(most_out.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    }
}
