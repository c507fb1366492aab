//! The collective of data-parallel training (`csrc/collective.cpp`): c10d's
//! `TCPStore` rendezvous and a Gloo process group, as libtorch ships them.
//! camp writes no collective of its own; this module only owns the handles.
//!
//! Rank 0 opens the store on a free loopback port ([`Rendezvous::host`]), tells
//! the other ranks the port, and every rank then [`Rendezvous::join`]s: the join
//! returns once all `world` ranks are in. A rank that dies makes the others'
//! next collective fail (its sockets close) instead of hanging; a rank that
//! hangs fails them after the group's timeout.

use std::ffi::{c_char, c_void, CString};
use std::net::TcpListener;
use std::os::fd::{IntoRawFd, RawFd};
use std::time::Duration;

use tch::Tensor;

use crate::csrc::take_text;
use crate::error::{EngineError, Result};

extern "C" {
    fn camp_store_new(
        host: *const c_char,
        port: u16,
        is_server: bool,
        listen_fd: i32,
        world: i64,
        timeout_ms: i64,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn camp_store_port(store: *const c_void) -> u16;
    fn camp_store_free(store: *mut c_void);
    fn camp_group_new(
        store: *const c_void,
        host: *const c_char,
        rank: i64,
        world: i64,
        timeout_ms: i64,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn camp_group_all_reduce_sum(group: *mut c_void, tensor: *const c_void, error: *mut *mut c_char) -> bool;
    fn camp_group_broadcast(group: *mut c_void, tensor: *const c_void, root: i64, error: *mut *mut c_char) -> bool;
    fn camp_group_free(group: *mut c_void);
}

/// The error of a failed collective call `what`, its message freed: a
/// [`EngineError::Parallel`], since it means another rank is gone or late.
///
/// # Safety
/// `error` is null or a message from csrc/, not used afterwards.
unsafe fn collective_error(error: *mut c_char, what: &str) -> EngineError {
    let text = take_text(error);
    EngineError::Parallel(format!("{what}: {}", if text.is_empty() { "out of memory" } else { &text }))
}

/// The ranks' meeting point: ranks run on one machine and meet on loopback.
const HOST: &str = "127.0.0.1";

/// Where one rank stands: its index and the number of ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankOf {
    pub rank: i64,
    pub world: i64,
}

impl RankOf {
    pub const SOLE: RankOf = RankOf { rank: 0, world: 1 };

    /// This rank's part `[offset, offset + len)` of a batch of `len` images:
    /// consecutive shards, the first `len % world` one image longer.
    pub fn shard(&self, len: i64) -> (i64, i64) {
        let (base, extra) = (len / self.world, len % self.world);
        let offset = self.rank * base + self.rank.min(extra);
        (offset, base + i64::from(self.rank < extra))
    }
}

/// A rendezvous store (c10d's `TCPStore`).
pub struct Rendezvous {
    raw: *mut c_void,
    world: i64,
    timeout: Duration,
}

// SAFETY: the store is c10d's TCPStore, whose methods lock internally; the
// handle is only moved between threads, never shared.
unsafe impl Send for Rendezvous {}

impl Rendezvous {
    /// Rank 0's store, on a free loopback port ([`Rendezvous::port`]): the
    /// socket is bound here, to loopback only, and handed to the store.
    pub fn host(world: i64, timeout: Duration) -> Result<Self> {
        let listener =
            TcpListener::bind((HOST, 0)).map_err(|e| EngineError::Parallel(format!("opening the rendezvous store on {HOST}: {e}")))?;
        let port = listener.local_addr().map_err(|e| EngineError::Parallel(format!("the rendezvous port: {e}")))?.port();
        let fd = listener.into_raw_fd();
        let store = Self::open(port, Some(fd), world, timeout);
        if store.is_err() {
            // SAFETY: the store was not made, so the socket is still ours alone.
            unsafe { libc::close(fd) };
        }
        store
    }

    /// Another rank's connection to rank 0's store on `port`.
    pub fn connect(port: u16, world: i64, timeout: Duration) -> Result<Self> {
        Self::open(port, None, world, timeout)
    }

    fn open(port: u16, listen_fd: Option<RawFd>, world: i64, timeout: Duration) -> Result<Self> {
        if world < 1 {
            return Err(EngineError::Model(format!("a process group of {world} ranks")));
        }
        let host = CString::new(HOST).expect("no NUL in the host");
        let mut error: *mut c_char = std::ptr::null_mut();
        // SAFETY: `host` outlives the call; a non-null result is a store this value owns.
        let raw = unsafe {
            camp_store_new(host.as_ptr(), port, listen_fd.is_some(), listen_fd.unwrap_or(-1), world, timeout.as_millis() as i64, &mut error)
        };
        if raw.is_null() {
            // SAFETY: `error` is null or a message from csrc/.
            return Err(unsafe { collective_error(error, "opening the rendezvous store") });
        }
        Ok(Rendezvous { raw, world, timeout })
    }

    /// The loopback port the store listens on.
    pub fn port(&self) -> u16 {
        // SAFETY: `raw` is a live store.
        unsafe { camp_store_port(self.raw) }
    }

    /// Joins the process group as `rank`: returns once every rank has joined.
    pub fn join(self, rank: i64) -> Result<ProcessGroup> {
        let host = CString::new(HOST).expect("no NUL in the host");
        let mut error: *mut c_char = std::ptr::null_mut();
        // SAFETY: the store and `host` outlive the call; the group keeps its own reference to the store.
        let raw = unsafe { camp_group_new(self.raw, host.as_ptr(), rank, self.world, self.timeout.as_millis() as i64, &mut error) };
        if raw.is_null() {
            // SAFETY: `error` is null or a message from csrc/.
            return Err(unsafe { collective_error(error, "joining the process group") });
        }
        Ok(ProcessGroup { raw, of: RankOf { rank, world: self.world }, _store: self })
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        // SAFETY: `raw` came from camp_store_new and is freed once.
        unsafe { camp_store_free(self.raw) }
    }
}

/// A Gloo process group this rank has joined.
pub struct ProcessGroup {
    raw: *mut c_void,
    of: RankOf,
    _store: Rendezvous,
}

// SAFETY: as Rendezvous; the group is used by one thread at a time.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    pub fn rank_of(&self) -> RankOf {
        self.of
    }

    /// Sums `tensor` over every rank, in place.
    pub fn all_reduce_sum(&mut self, tensor: &Tensor) -> Result<()> {
        let mut error: *mut c_char = std::ptr::null_mut();
        // SAFETY: the group and `tensor` outlive the call.
        if unsafe { camp_group_all_reduce_sum(self.raw, tensor.as_ptr().cast(), &mut error) } {
            Ok(())
        } else {
            // SAFETY: `error` is null or a message from csrc/.
            Err(unsafe { collective_error(error, "all-reduce") })
        }
    }

    /// Copies rank `root`'s `tensor` into every rank's, in place.
    pub fn broadcast(&mut self, tensor: &Tensor, root: i64) -> Result<()> {
        let mut error: *mut c_char = std::ptr::null_mut();
        // SAFETY: the group and `tensor` outlive the call.
        if unsafe { camp_group_broadcast(self.raw, tensor.as_ptr().cast(), root, &mut error) } {
            Ok(())
        } else {
            // SAFETY: `error` is null or a message from csrc/.
            Err(unsafe { collective_error(error, "broadcast") })
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from camp_group_new and is freed once, before its store.
        unsafe { camp_group_free(self.raw) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_a_batch_in_order_the_first_ones_one_longer() {
        let shards: Vec<_> = (0..3).map(|rank| RankOf { rank, world: 3 }.shard(10)).collect();
        assert_eq!(shards, vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(RankOf::SOLE.shard(7), (0, 7));
        assert_eq!(RankOf { rank: 1, world: 2 }.shard(1), (1, 0), "a batch shorter than the ranks leaves one empty");
    }

    #[test]
    fn two_ranks_sum_a_tensor_and_share_rank_zeros_copy() {
        let host = Rendezvous::host(2, Duration::from_secs(30)).unwrap();
        let port = host.port();
        assert_ne!(port, 0);
        // Listening sockets on the port: 127.0.0.1 over IPv4, nothing over IPv6 (`::` would be every interface).
        let listening = |table: &str| -> Vec<String> {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            let local = format!(":{port:04X} ");
            text.lines().filter(|l| l.contains(&local) && l.split_whitespace().nth(3) == Some("0A")).map(String::from).collect()
        };
        let (v4, v6) = (listening("/proc/net/tcp"), listening("/proc/net/tcp6"));
        assert!(v4.len() == 1 && v4[0].contains(&format!("0100007F:{port:04X}")) && v6.is_empty(), "loopback only: {v4:?} {v6:?}");
        let other = std::thread::spawn(move || {
            let mut group = Rendezvous::connect(port, 2, Duration::from_secs(30)).unwrap().join(1).unwrap();
            let t = Tensor::from_slice(&[10f32, 20., 30.]);
            group.all_reduce_sum(&t).unwrap();
            let b = Tensor::from_slice(&[0f32, 0.]);
            group.broadcast(&b, 0).unwrap();
            (Vec::<f32>::try_from(&t).unwrap(), Vec::<f32>::try_from(&b).unwrap())
        });
        let mut group = host.join(0).unwrap();
        assert_eq!(group.rank_of(), RankOf { rank: 0, world: 2 });
        let t = Tensor::from_slice(&[1f32, 2., 3.]);
        group.all_reduce_sum(&t).unwrap();
        group.broadcast(&Tensor::from_slice(&[7f32, 8.]), 0).unwrap();
        let (theirs, broadcast) = other.join().unwrap();
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![11., 22., 33.]);
        assert_eq!(theirs, vec![11., 22., 33.]);
        assert_eq!(broadcast, vec![7., 8.]);
    }

    #[test]
    fn a_rank_that_leaves_fails_the_others_collective_instead_of_hanging() {
        let host = Rendezvous::host(2, Duration::from_secs(30)).unwrap();
        let port = host.port();
        let other = std::thread::spawn(move || {
            let group = Rendezvous::connect(port, 2, Duration::from_secs(30)).unwrap().join(1).unwrap();
            drop(group);
        });
        let mut group = host.join(0).unwrap();
        other.join().unwrap();
        let started = std::time::Instant::now();
        let error = group.all_reduce_sum(&Tensor::from_slice(&[1f32])).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(25), "failed by the closed connection, not the timeout: {error}");
    }
}
