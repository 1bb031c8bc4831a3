//! Work shared among callers waiting at the same moment.
//!
//! Group commits of audit events, grouped record look-ups and grouped
//! writes have the same shape: callers hand in a request and wait; whoever
//! waits is served as one group, with one round trip to the database. A
//! caller that finds a slot free and nobody waiting serves itself on its
//! own task (no hand-over to another task and back, which at low load costs
//! more than the statement); while `in_flight` groups are out, the next
//! callers queue, and the first group to finish takes the queue (up to a
//! bound) as the next group, so the groups grow with the load.
//!
//! Before it serves itself, such a caller lets the tasks that are ready to
//! run go first (one yield to the scheduler), and whoever asks meanwhile
//! joins its group. Callers that were woken together (the readers of one
//! grouped look-up, going on to commit their audit events; requests that
//! arrived in the same poll of the network) so go out as one group instead
//! of the first alone and the rest after it. Alone on the machine, the
//! yield costs a turn of the scheduler and nothing waits on a timer.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

/// How a gatherer's groups are bounded.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The most a group carries, in the units `weight` counts.
    pub max_weight: usize,
    /// Groups out at once.
    pub in_flight: usize,
}

type Serve<T> = dyn Fn(Vec<T>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

/// Serves the questions handed to [`Gather::ask`] in groups.
pub struct Gather<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Gather<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Gather<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gather")
            .field("bounds", &self.inner.bounds)
            .finish_non_exhaustive()
    }
}

struct Inner<T> {
    bounds: Bounds,
    weight: fn(&T) -> usize,
    serve: Box<Serve<T>>,
    state: Mutex<State<T>>,
    /// Where the queue's groups are served (a slot released on a caller's
    /// task, maybe one being dropped, hands the queue to a task of its own).
    runtime: tokio::runtime::Handle,
}

struct State<T> {
    queue: VecDeque<T>,
    in_flight: usize,
    /// A caller holds a slot and is letting others join its group: who
    /// asks meanwhile queues for it rather than taking another slot.
    forming: bool,
}

impl<T: Send + 'static> Gather<T> {
    /// A gatherer calling `serve` on each group, up to `bounds.in_flight`
    /// groups at once; groups other than a lone caller's are served on the
    /// current runtime. A request is a question and the sender of its answer
    /// ([`Gather::ask`]): `serve` answers each through its sender.
    pub fn new<F, Fut>(bounds: Bounds, weight: fn(&T) -> usize, serve: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            inner: Arc::new(Inner {
                bounds: Bounds {
                    max_weight: bounds.max_weight,
                    in_flight: bounds.in_flight.max(1),
                },
                weight,
                serve: Box::new(move |group| Box::pin(serve(group))),
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    in_flight: 0,
                    forming: false,
                }),
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// Hands `request` in. If a slot is free (and so nobody waits), takes
    /// it, lets the tasks ready to run go first, and serves the request
    /// with whoever asked meanwhile as one group before returning;
    /// otherwise queues it for the next group and returns at once. Either
    /// way `serve` answers it.
    async fn submit(&self, request: T) {
        let leads = {
            let mut state = self.inner.lock();
            let leads = !state.forming
                && state.in_flight < self.inner.bounds.in_flight
                && state.queue.is_empty();
            if leads {
                state.in_flight += 1;
                state.forming = true;
            }
            state.queue.push_back(request);
            leads
        };
        if !leads {
            return;
        }
        // Released even if this caller is dropped half-way: the queue
        // (this caller's request with it) then goes on without it.
        let slot = Slot(self.inner.clone());
        let forming = Forming(Some(self.inner.clone()));
        tokio::task::yield_now().await;
        if let Some(group) = forming.close() {
            (self.inner.serve)(group).await;
        }
        drop(slot);
    }
}

impl<Q: Send + 'static, A: Send + 'static> Gather<(Q, tokio::sync::oneshot::Sender<A>)> {
    /// Hands `question` in with a way back for its answer and waits for
    /// it: `None` if the group serving it ended without answering.
    pub async fn ask(&self, question: Q) -> Option<A> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit((question, reply)).await;
        answer.await.ok()
    }
}

impl<T> Inner<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next group from the queue, up to the bound (at least one).
    fn next_group(&self, state: &mut State<T>) -> Option<Vec<T>> {
        let first = state.queue.pop_front()?;
        let mut carried = (self.weight)(&first);
        let mut group = vec![first];
        while carried < self.bounds.max_weight {
            let Some(next) = state.queue.pop_front() else {
                break;
            };
            carried += (self.weight)(&next);
            group.push(next);
        }
        Some(group)
    }
}

/// A group being formed: if its caller is dropped before it is served, the
/// gatherer stops waiting for it (its slot, dropped too, serves the queue).
struct Forming<T>(Option<Arc<Inner<T>>>);

impl<T> Forming<T> {
    /// Ends the forming: the group (this caller's request first, unless a
    /// group that finished meanwhile took the queue along).
    fn close(mut self) -> Option<Vec<T>> {
        let inner = self.0.take()?;
        let mut state = inner.lock();
        state.forming = false;
        inner.next_group(&mut state)
    }
}

impl<T> Drop for Forming<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            inner.lock().forming = false;
        }
    }
}

/// A group's slot: when the group is done (or its caller gone), the queue's
/// next group takes the slot, or the slot is freed. The queue is never left
/// waiting while a slot is free.
struct Slot<T: Send + 'static>(Arc<Inner<T>>);

impl<T: Send + 'static> Drop for Slot<T> {
    fn drop(&mut self) {
        let inner = &self.0;
        let next = {
            let mut state = inner.lock();
            let next = inner.next_group(&mut state);
            if next.is_none() {
                state.in_flight -= 1;
            }
            next
        };
        if let Some(group) = next {
            let slot = Slot(inner.clone());
            let serving = (inner.serve)(group);
            inner.runtime.spawn(async move {
                serving.await;
                drop(slot);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;
    use tokio::sync::oneshot;

    type Request = (u32, oneshot::Sender<u32>);

    /// A gatherer that doubles numbers, taking `pause` per group, and
    /// records the size of each group and the most groups out at once.
    fn doubler(pause: Duration) -> (Gather<Request>, Arc<Mutex<Vec<usize>>>, Arc<AtomicUsize>) {
        let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
        let out = Arc::new(AtomicUsize::new(0));
        let most_out = Arc::new(AtomicUsize::new(0));
        let (s, o, m) = (sizes.clone(), out.clone(), most_out.clone());
        let gather = Gather::new(
            Bounds {
                max_weight: 10,
                in_flight: 2,
            },
            |_: &Request| 1,
            move |group: Vec<Request>| {
                let (s, o, m) = (s.clone(), o.clone(), m.clone());
                async move {
                    let now = o.fetch_add(1, SeqCst) + 1;
                    m.fetch_max(now, SeqCst);
                    s.lock().unwrap().push(group.len());
                    tokio::time::sleep(pause).await;
                    for (n, reply) in group {
                        let _ = reply.send(n * 2);
                    }
                    o.fetch_sub(1, SeqCst);
                }
            },
        );
        (gather, sizes, most_out)
    }

    /// Asks for every number of `numbers` at once (bounded) and checks that
    /// each caller got its own number doubled.
    async fn ask_all_and_check(gather: &Gather<Request>, numbers: std::ops::Range<u32>) {
        let calls = numbers.map(|n| {
            let gather = gather.clone();
            async move { (n, gather.ask(n).await) }
        });
        let answers =
            tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(calls))
                .await
                .expect("every caller served");
        for (n, answer) in answers {
            assert_eq!(answer, Some(n * 2));
        }
    }

    /// Callers waiting together are served together, each gets its own
    /// answer, no group exceeds its bound and no more groups are out at once
    /// than allowed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_callers_share_bounded_groups() {
        let (gather, sizes, most_out) = doubler(Duration::from_millis(5));
        ask_all_and_check(&gather, 0..100).await;
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert!(sizes.iter().all(|s| *s <= 10), "{sizes:?}");
        assert!(sizes.len() < 100, "callers were served one by one");
        assert!(most_out.load(SeqCst) <= 2);
    }

    /// A caller that gives up while its group is out (a cancelled request)
    /// frees its slot: those queued behind it are still served, and so is
    /// the next caller.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_gives_up_does_not_stall_the_others() {
        let (gather, sizes, _) = doubler(Duration::from_millis(200));
        // Two callers, one after the other, take both slots and give up
        // half-way.
        let mut leaders = Vec::new();
        for n in 0..2u32 {
            let gather = gather.clone();
            leaders.push(tokio::spawn(async move {
                tokio::time::timeout(Duration::from_millis(50), gather.ask(n))
                    .await
                    .is_err()
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Meanwhile three more queue behind them; all are answered.
        ask_all_and_check(&gather, 10..13).await;
        for leader in leaders {
            assert!(leader.await.unwrap(), "the first callers gave up waiting");
        }
        assert_eq!(sizes.lock().unwrap().clone(), [1, 1, 3]);
        assert_eq!(gather.ask(7).await, Some(14));
    }

    /// Callers woken at the same moment (as the readers of one grouped
    /// look-up are) go out as one group, not the first alone and the rest
    /// after it; a lone caller afterwards is still served.
    #[tokio::test]
    async fn callers_woken_together_go_out_together() {
        let (gather, sizes, _) = doubler(Duration::from_millis(5));
        for round in 0..20u32 {
            let go = Arc::new(tokio::sync::Barrier::new(8));
            let callers: Vec<_> = (0..8u32)
                .map(|n| {
                    let (gather, go) = (gather.clone(), go.clone());
                    tokio::spawn(async move {
                        go.wait().await;
                        gather.ask(round * 8 + n).await
                    })
                })
                .collect();
            for (n, caller) in (0..8u32).zip(callers) {
                assert_eq!(caller.await.unwrap(), Some((round * 8 + n) * 2));
            }
        }
        // Without the yield, every round's first caller would go alone and
        // the other seven after it.
        assert_eq!(sizes.lock().unwrap().clone(), [8; 20]);
        assert_eq!(gather.ask(7).await, Some(14));
    }
}
