//! Claims, dispatched: one waiter queue per worker class (device kind, data
//! sets, labels) in each coordinator, served by one task that claims for many
//! waiting workers with one store query (`claim_batch`).
//!
//! Why: a claim used to be one query per worker call, and a new job woke every
//! long-polling worker to run its own; a lab's fleet of a thousand idle
//! workers then spent a thousand queries per submission, and fifty busy
//! workers competed for the same rows. Here a claim joins its class's queue;
//! when the queue may have work for that class (a worker arrived, or the
//! store announced a claimable job), the dispatcher takes up to `BATCH`
//! waiters, claims for them at once, and hands each its job. A class whose
//! last query found nothing is not asked again until something changes: a
//! new job wakes one query, which claims one job for the first waiter in line.
//!
//! Across coordinators the store's change feed (PostgreSQL NOTIFY) tells each
//! dispatcher that the queue changed; rows are taken with `SKIP LOCKED`, so
//! two dispatchers never hand out one job. `RECHECK` bounds what a lost
//! notification can delay.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use uuid::Uuid;

use crate::ops::metrics as names;
use crate::store::{Change, ClaimPolicy, Claimed, LeaseRef, Outcome, Store, StoreResult, WorkerClass};

/// Claims for at most this many waiting workers in one query.
const BATCH: usize = 128;
/// Queries one class may have in flight at once: while one is being written,
/// the next batch of waiters is already asked for (rows taken by the first
/// are skipped by the second, not waited for).
const MAX_IN_FLIGHT: usize = 2;
/// A safety net only: every class with waiters is asked again this often,
/// even if a notification was lost (for example while the listener reconnected).
const RECHECK: Duration = Duration::from_secs(5);
/// How long a worker's class is remembered before it is read again.
const CLASS_TTL: Duration = Duration::from_secs(60);
/// Classes remembered at most (a bound against many registrations).
const MAX_KNOWN_WORKERS: usize = 100_000;

type Reply = oneshot::Sender<StoreResult<Option<Claimed>>>;

struct Waiter {
    id: u64,
    worker: Uuid,
    /// A claim that does not wait: answered after the first query that included it.
    once: bool,
    reply: Reply,
}

#[derive(Default)]
struct ClassQueue {
    waiters: VecDeque<Waiter>,
    /// The queue may hold work for this class: the next round asks the store.
    fresh: bool,
    /// Queries for this class running now, and started so far.
    in_flight: usize,
    started: u64,
    /// The last query found a job for every waiter it asked for: a second
    /// may run beside the next (there is likely more work than waiters).
    last_full: bool,
}

#[derive(Default)]
struct State {
    classes: HashMap<WorkerClass, ClassQueue>,
    known: HashMap<Uuid, (WorkerClass, Instant)>,
    next_id: u64,
}

/// The coordinator's claim dispatcher (one per process, shared by every call).
pub struct Dispatcher {
    store: Arc<dyn Store>,
    lease: Duration,
    policy: ClaimPolicy,
    state: Mutex<State>,
    kick: Notify,
}

impl Dispatcher {
    /// Starts the dispatcher's task: it runs until the handle is aborted or
    /// the store's change feed closes.
    pub fn start(store: Arc<dyn Store>, lease: Duration, policy: ClaimPolicy) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let dispatcher = Arc::new(Dispatcher { store, lease, policy, state: Mutex::default(), kick: Notify::new() });
        let changes = dispatcher.store.subscribe();
        let task = tokio::spawn(dispatcher.clone().run(changes));
        (dispatcher, task)
    }

    /// Claims the next job for `worker`, waiting up to `wait` for one to appear.
    pub async fn claim(&self, worker: Uuid, wait: Duration) -> StoreResult<Option<Claimed>> {
        let class = self.class_of(worker).await?;
        let (reply, mut answer) = oneshot::channel();
        let once = wait.is_zero();
        let id = {
            let mut state = self.state.lock().expect("dispatcher state");
            let id = state.next_id;
            state.next_id += 1;
            let queue =
                state.classes.entry(class.clone()).or_insert_with(|| ClassQueue { fresh: true, last_full: true, ..ClassQueue::default() });
            if once && !queue.fresh {
                // Nothing changed since this class last found the queue empty.
                return Ok(None);
            }
            queue.waiters.push_back(Waiter { id, worker, once, reply });
            if queue.fresh {
                self.kick.notify_one();
            }
            id
        };
        if once {
            return answer.await.unwrap_or(Ok(None));
        }
        match tokio::time::timeout(wait, &mut answer).await {
            Ok(answered) => answered.unwrap_or(Ok(None)),
            Err(_) => {
                // Leave the line, unless the dispatcher took this waiter already: then its answer is on the way.
                let left = {
                    let mut state = self.state.lock().expect("dispatcher state");
                    state
                        .classes
                        .get_mut(&class)
                        .and_then(|q| q.waiters.iter().position(|w| w.id == id).map(|at| q.waiters.remove(at)))
                        .is_some()
                };
                if left {
                    Ok(None)
                } else {
                    answer.await.unwrap_or(Ok(None))
                }
            }
        }
    }

    /// Something this coordinator did may have made a job claimable that the
    /// store does not announce (a finished job frees a slot under the per-user cap).
    pub fn slot_freed(&self) {
        if self.policy.max_running_per_user.is_some() {
            self.mark_fresh();
            self.kick.notify_one();
        }
    }

    /// Forgets what `worker` offers (it registered again, perhaps with other data sets).
    pub fn forget(&self, worker: Uuid) {
        self.state.lock().expect("dispatcher state").known.remove(&worker);
    }

    async fn class_of(&self, worker: Uuid) -> StoreResult<WorkerClass> {
        {
            let state = self.state.lock().expect("dispatcher state");
            if let Some((class, at)) = state.known.get(&worker) {
                if at.elapsed() < CLASS_TTL {
                    return Ok(class.clone());
                }
            }
        }
        let class = self.store.worker_class(worker).await?;
        let mut state = self.state.lock().expect("dispatcher state");
        if state.known.len() >= MAX_KNOWN_WORKERS {
            state.known.retain(|_, (_, at)| at.elapsed() < CLASS_TTL);
            if state.known.len() >= MAX_KNOWN_WORKERS {
                state.known.clear();
            }
        }
        state.known.insert(worker, (class.clone(), Instant::now()));
        Ok(class)
    }

    fn mark_fresh(&self) {
        let mut state = self.state.lock().expect("dispatcher state");
        for queue in state.classes.values_mut() {
            queue.fresh = true;
        }
    }

    /// Takes the changes announced so far; true if the queue may have new work.
    fn absorb(&self, changes: &mut tokio::sync::broadcast::Receiver<Change>) -> bool {
        let mut queue_changed = false;
        loop {
            match changes.try_recv() {
                Ok(Change::Queue) | Err(TryRecvError::Lagged(_)) => queue_changed = true,
                Ok(Change::Job(_)) => {}
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if queue_changed {
            self.mark_fresh();
        }
        queue_changed
    }

    /// The waiters the next round serves: up to `BATCH` of each fresh class
    /// that has a query to spare, with the number of its query and whether
    /// another query of the class was running when it started.
    fn take_round(&self) -> Vec<(WorkerClass, Vec<Waiter>, u64, bool)> {
        let mut state = self.state.lock().expect("dispatcher state");
        // Classes nobody waits for are forgotten (their emptiness with them).
        state.classes.retain(|_, q| {
            q.waiters.retain(|w| !w.reply.is_closed());
            !q.waiters.is_empty() || q.in_flight > 0
        });
        let mut round = Vec::new();
        for (class, queue) in state.classes.iter_mut() {
            let room = queue.in_flight == 0 || (queue.last_full && queue.in_flight < MAX_IN_FLIGHT);
            if queue.fresh && !queue.waiters.is_empty() && room {
                let n = queue.waiters.len().min(BATCH);
                let beside_another = queue.in_flight > 0;
                queue.in_flight += 1;
                queue.started += 1;
                round.push((class.clone(), queue.waiters.drain(..n).collect(), queue.started, beside_another));
            }
        }
        round
    }

    async fn run(self: Arc<Self>, mut changes: tokio::sync::broadcast::Receiver<Change>) {
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.absorb(&mut changes);
            for (class, waiters, query, beside_another) in self.take_round() {
                tokio::spawn(self.clone().serve(class, waiters, query, beside_another));
            }
            tokio::select! {
                _ = self.kick.notified() => {}
                change = changes.recv() => match change {
                    Ok(Change::Queue) | Err(RecvError::Lagged(_)) => self.mark_fresh(),
                    Ok(Change::Job(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                _ = recheck.tick() => self.mark_fresh(),
            }
        }
    }

    /// One query for `waiters` (all of `class`; the class's query number
    /// `query`, started `beside_another` or not): each gets a job, in line
    /// order, until the queue has none left for them.
    async fn serve(self: Arc<Self>, class: WorkerClass, waiters: Vec<Waiter>, query: u64, beside_another: bool) {
        let workers: Vec<Uuid> = waiters.iter().map(|w| w.worker).collect();
        metrics::counter!(names::CLAIM_QUERIES).increment(1);
        let claimed = self.store.claim_batch(&class, &workers, self.lease, self.policy).await;
        let (claimed, failed) = match claimed {
            Ok(claimed) => (claimed, None),
            Err(e) => {
                tracing::warn!("claim: {e}");
                (Vec::new(), Some(e))
            }
        };
        let short = claimed.len() < workers.len();
        let mut jobs: HashMap<Uuid, VecDeque<Claimed>> = HashMap::new();
        for (worker, c) in claimed {
            jobs.entry(worker).or_default().push_back(c);
        }
        // Did another query for this class run beside this one? Then a short
        // answer may only mean that the other took the rows: that one's
        // answer says whether the queue is empty for the class.
        let mut gone = Vec::new();
        {
            let mut state = self.state.lock().expect("dispatcher state");
            let queue = state.classes.entry(class).or_default();
            let alone = !beside_another && queue.started == query;
            queue.in_flight = queue.in_flight.saturating_sub(1);
            if failed.is_none() {
                queue.last_full = !short;
                if short && alone {
                    // Nothing more for this class until something changes.
                    queue.fresh = false;
                }
            }
            let mut unserved = Vec::new();
            for w in waiters {
                match (jobs.get_mut(&w.worker).and_then(VecDeque::pop_front), &failed) {
                    (Some(c), _) => {
                        if let Err(Ok(Some(c))) = w.reply.send(Ok(Some(c))) {
                            // The caller went away meanwhile: the job goes back to the queue.
                            gone.push((w.worker, c));
                        }
                    }
                    (None, Some(e)) => {
                        let _ = w.reply.send(Err(e.clone()));
                    }
                    // A claim that does not wait is answered once the class has no work left.
                    (None, None) if w.once && !queue.fresh => {
                        let _ = w.reply.send(Ok(None));
                    }
                    (None, None) => unserved.push(w),
                }
            }
            for w in unserved.into_iter().rev() {
                queue.waiters.push_front(w);
            }
            if !queue.fresh {
                // Claims that do not wait and came while this query ran: the class has no work.
                let (done, waiting): (VecDeque<Waiter>, VecDeque<Waiter>) = queue.waiters.drain(..).partition(|w| w.once);
                queue.waiters = waiting;
                for w in done {
                    let _ = w.reply.send(Ok(None));
                }
            }
        }
        for (worker, c) in gone {
            self.give_back(worker, &c).await;
        }
        self.kick.notify_one();
    }

    async fn give_back(&self, worker: Uuid, c: &Claimed) {
        let at = LeaseRef { worker, job_id: c.job.id, attempt: c.job.attempt };
        if let Err(e) = self.store.finish(at, Outcome::Released, "its claim's caller went away", None).await {
            tracing::warn!(job = c.job.id, "giving back an unclaimed job: {e} (its lease will expire)");
        }
    }
}
