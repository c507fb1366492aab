//! Worker sessions remembered for a few seconds: every call a worker makes
//! (a heartbeat a second, a claim, each report) names its session, and
//! reading it from the store each time was most of what a quiet fleet cost
//! the database. Only sessions the store knew are remembered, for `TTL`; a
//! session replaced by a new registration of the same worker stops working
//! at once on the coordinator that registered it (`forget_worker`), and on
//! the others at most `TTL` later.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::store::WorkerSession;

const TTL: Duration = Duration::from_secs(10);
/// Sessions remembered at most (a bound against many registrations).
const CAPACITY: usize = 100_000;

#[derive(Default)]
pub struct SessionCache {
    known: Mutex<HashMap<String, (WorkerSession, Instant)>>,
}

impl SessionCache {
    /// The session behind `session_sha256`, if the store named it less than `TTL` ago.
    pub fn get(&self, session_sha256: &str) -> Option<WorkerSession> {
        let known = self.known.lock().expect("session cache");
        known.get(session_sha256).filter(|(_, at)| at.elapsed() < TTL).map(|(s, _)| *s)
    }

    pub fn put(&self, session_sha256: String, session: WorkerSession) {
        let mut known = self.known.lock().expect("session cache");
        if known.len() >= CAPACITY {
            known.retain(|_, (_, at)| at.elapsed() < TTL);
            if known.len() >= CAPACITY {
                known.clear();
            }
        }
        known.insert(session_sha256, (session, Instant::now()));
    }
}

impl SessionCache {
    /// Forgets every session of `worker` (it registered again: its old session is void).
    pub fn forget_worker(&self, worker: Uuid) {
        self.known.lock().expect("session cache").retain(|_, (s, _)| s.worker != worker);
    }
}
