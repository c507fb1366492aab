//! `camp-worker --slots N`: N jobs at once on one device. A small network
//! leaves a large GPU mostly idle (a ResNet-20 step is bound by the host's
//! launches, not by the GPU), so several jobs side by side train more images
//! per second in all than one.
//!
//! Each slot is a worker process of its own (this process is slot 0; slots
//! 1..N-1 are its children, started with the same arguments and `--slot K`),
//! so each job keeps its own libtorch state: its own generator (a run stays a
//! pure function of its spec), its own CUDA context and allocator. Each
//! registers as a worker (same name; its id file is `NAME.K.worker-id`, as for
//! any two workers of one name sharing a state folder), so `camp workers`
//! lists one row per slot. Slot 0 passes the stop signals on to the others
//! and waits for them; a child whose parent dies gets SIGTERM (it finishes
//! its step, checkpoints and hands its job back).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::error::{EngineError, Result};

/// Slots 1..N-1, as child processes.
pub struct Slots {
    children: Vec<(u32, Child)>,
}

impl Slots {
    /// Starts slots 1..`slots` as this executable with `args` and `--slot K`;
    /// `stdout` piped when the caller reads what they print.
    pub fn spawn(slots: u32, args: &[OsString], piped_stdout: bool) -> Result<Slots> {
        let exe = std::env::current_exe().map_err(|source| EngineError::Io { path: "/proc/self/exe".into(), source })?;
        let mut started = Slots { children: Vec::new() };
        for slot in 1..slots {
            let mut command = Command::new(&exe);
            command.args(args).arg("--slot").arg(slot.to_string()).stdin(Stdio::null());
            if piped_stdout {
                command.stdout(Stdio::piped());
            }
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    // The thread that spawns the slots is the main thread, which lives as long as slot 0.
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = command.spawn().map_err(|source| EngineError::Io { path: exe.clone(), source })?;
            started.children.push((slot, child));
        }
        Ok(started)
    }

    /// The children's process ids, to pass signals on to.
    pub fn pids(&self) -> Vec<i32> {
        self.children.iter().map(|(_, c)| c.id() as i32).collect()
    }

    /// Takes the children, to read their output and wait for them.
    pub fn into_children(mut self) -> Vec<(u32, Child)> {
        std::mem::take(&mut self.children)
    }

    /// Waits for every slot; their exit statuses by slot.
    pub fn wait(self) -> Vec<(u32, std::io::Result<ExitStatus>)> {
        self.into_children().into_iter().map(|(slot, mut child)| (slot, child.wait())).collect()
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // Slots not waited for (slot 0 failed to start): stopped as a signal would stop them.
        for (_, child) in &mut self.children {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// Sends `signal` to each of `pids` (slots that are gone are skipped).
pub fn pass_on(pids: &[i32], signal: i32) {
    for pid in pids {
        // SAFETY: kill(2) with a pid of our own children.
        unsafe { libc::kill(*pid, signal) };
    }
}
