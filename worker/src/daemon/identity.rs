//! The worker's identity across restarts: the id the coordinator gave it,
//! kept in a file of the state folder (`--state-dir`) and sent again at
//! `Register`, so that a restarted worker takes its own row over instead of
//! adding one (and the jobs the dead process held go back to the queue at
//! once, not at lease expiry).
//!
//! Why a locked file rather than an id derived from name and host: two live
//! workers must never share an id, or one's registration would take the
//! other's row and requeue its running job. Workers on one machine often
//! share a name (one per GPU, all named after the host), and state folders
//! are often shared (a home folder on NFS). So each worker holds an exclusive
//! lock on its id file while it runs; the kernel drops the lock when the
//! process dies, however it dies, so a file that can be locked belonged to a
//! worker that is gone. A second worker with the same name and folder finds
//! the file locked and takes the next slot (`NAME.2.worker-id`, ...).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// How many workers of one name may share one state folder.
const MAX_SLOTS: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("state folder {path}: {source}")]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("{dir}: all {MAX_SLOTS} id files of worker '{name}' are held by running workers")]
    AllTaken { dir: PathBuf, name: String },
}

/// An id file this process holds (locked until it exits), and the id in it.
#[derive(Debug)]
pub struct Identity {
    file: File,
    path: PathBuf,
    id: Option<String>,
}

impl Identity {
    /// Takes the first id file of worker `name` in `dir` that no running worker holds.
    pub fn take(dir: &Path, name: &str) -> Result<Identity, IdentityError> {
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Folder { path: dir.to_path_buf(), source })?;
        let stem = file_stem(name);
        for slot in 1..=MAX_SLOTS {
            let path = dir.join(if slot == 1 { format!("{stem}.worker-id") } else { format!("{stem}.{slot}.worker-id") });
            let io = |source| IdentityError::File { path: path.clone(), source };
            let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
            let mut text = String::new();
            file.read_to_string(&mut text).map_err(io)?;
            let id = Some(text.trim().to_string()).filter(|t| looks_like_uuid(t));
            if id.is_none() && !text.trim().is_empty() {
                tracing::warn!(file = %path.display(), "not a worker id; registering as a new worker");
            }
            return Ok(Identity { file, path, id });
        }
        Err(IdentityError::AllTaken { dir: dir.to_path_buf(), name: name.to_string() })
    }

    /// The id an earlier run kept, if any.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps `id` for the next run (written through the locked file, then synced).
    pub fn keep(&mut self, id: &str) -> Result<(), IdentityError> {
        if self.id.as_deref() == Some(id) {
            return Ok(());
        }
        let io = |source| IdentityError::File { path: self.path.clone(), source };
        self.file.set_len(0).map_err(io)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file.write_all(format!("{id}\n").as_bytes()).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        self.id = Some(id.to_string());
        Ok(())
    }
}

/// The worker's name as a file name: letters, digits, `.`, `-` and `_` kept, anything else `_`.
fn file_stem(name: &str) -> String {
    let stem: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).take(100).collect();
    if stem.is_empty() || stem.starts_with('.') {
        format!("worker{stem}")
    } else {
        stem
    }
}

/// 8-4-4-4-12 hex digits, as the coordinator hands ids out.
fn looks_like_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b6f5a52-8d7c-4a57-9a4f-3e2f8c1d2e3f";

    #[test]
    fn an_id_kept_is_read_by_the_next_holder_and_a_held_file_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Identity::take(dir.path(), "gpu box/1").unwrap();
        assert_eq!(first.id(), None);
        assert_eq!(first.path().file_name().unwrap(), "gpu_box_1.worker-id");
        first.keep(ID).unwrap();

        // A second worker of the same name while the first runs: the next slot.
        let second = Identity::take(dir.path(), "gpu box/1").unwrap();
        assert_eq!(second.path().file_name().unwrap(), "gpu_box_1.2.worker-id");
        assert_eq!(second.id(), None);
        // Another name has files of its own.
        assert_eq!(Identity::take(dir.path(), "laptop").unwrap().path().file_name().unwrap(), "laptop.worker-id");

        // The first exits (its lock goes with it): the next worker gets its id.
        drop(first);
        let again = Identity::take(dir.path(), "gpu box/1").unwrap();
        assert_eq!(again.id(), Some(ID));
        assert_eq!(again.path().file_name().unwrap(), "gpu_box_1.worker-id");
    }

    #[test]
    fn a_file_that_holds_no_id_is_a_new_worker() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.worker-id"), "not an id\n").unwrap();
        let mut identity = Identity::take(dir.path(), "w").unwrap();
        assert_eq!(identity.id(), None);
        identity.keep(ID).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("w.worker-id")).unwrap(), format!("{ID}\n"));
        assert!(looks_like_uuid(ID) && !looks_like_uuid("0b6f5a52-8d7c-4a57-9a4f-3e2f8c1d2e3") && !looks_like_uuid(""));
        assert_eq!(file_stem(".hidden"), "worker.hidden");
    }
}
