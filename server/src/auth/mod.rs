//! Who is calling and what they may do. `layer` decides who, once per call,
//! before any handler runs: it reads the bearer token (user, admin or worker
//! credential), the worker session and the client certificate, refuses what
//! does not fit the service called, and leaves a `User` or a `WorkerCaller` in
//! the request's extensions. Handlers take that identity and apply `Access`,
//! the rules about whose jobs a user may read or change.

pub mod layer;
mod sessions;
pub mod tokens;

use tonic::Request;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

pub use sessions::SessionCache;
pub use tokens::{new_session, new_token, parse_expiry, token_sha256};

pub use camp_proto::metadata::{SESSION as SESSION_HEADER, USER as USER_HEADER};
/// The name of a caller that names nobody (coordinators without --require-auth).
pub const ANONYMOUS: &str = "anonymous";

/// A caller of `JobService`: a user, perhaps an admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub admin: bool,
}

/// A caller of `WorkerService`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerCaller {
    /// The worker credential it called with (None without --require-auth).
    pub credential_id: Option<i64>,
    /// The registered worker its session names (None only on `Register`).
    pub worker: Option<Uuid>,
}

impl User {
    pub fn of<T>(req: &Request<T>) -> ApiResult<User> {
        req.extensions().get::<User>().cloned().ok_or_else(|| ApiError::Unauthenticated("no user identity on this call".into()))
    }
}

impl WorkerCaller {
    pub fn of<T>(req: &Request<T>) -> ApiResult<WorkerCaller> {
        req.extensions().get::<WorkerCaller>().copied().ok_or_else(|| ApiError::Unauthenticated("no worker identity on this call".into()))
    }

    /// The registered worker making this call.
    pub fn worker(&self) -> ApiResult<Uuid> {
        self.worker.ok_or_else(|| ApiError::Unauthenticated(format!("this call needs the worker session (metadata {SESSION_HEADER})")))
    }

    /// The worker, after checking that a `worker_id` the request names (if any) is this one.
    pub fn named(&self, worker_id: &str) -> ApiResult<Uuid> {
        let worker = self.worker()?;
        if !worker_id.is_empty() && worker_id != worker.to_string() {
            return Err(ApiError::PermissionDenied(format!(
                "worker_id: '{}' is not the worker this session belongs to",
                camp_proto::limits::excerpt(worker_id)
            )));
        }
        Ok(worker)
    }
}

/// The coordinator's rules for users. By default: reads open to every user,
/// priorities above 0 for admins.
#[derive(Debug, Clone, Copy, Default)]
pub struct Access {
    /// Reads of a job (show, metrics, logs, checkpoints, results, watch) only by its owner and admins.
    pub private_jobs: bool,
    /// The highest priority a user who is not an admin may give a job.
    pub max_user_priority: i32,
}

impl Access {
    /// Whether `user` may read what `owner` owns (`what`: "job 3", "experiment 2").
    pub fn check_read(&self, user: &User, owner: &str, what: &str) -> ApiResult<()> {
        if !self.private_jobs || user.admin || user.name == owner {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(format!("{what} belongs to {owner}; this coordinator keeps jobs private to their owners")))
        }
    }

    /// Whether `user` may change what `owner` owns (cancel, priority).
    pub fn check_write(&self, user: &User, owner: &str, what: &str) -> ApiResult<()> {
        if user.admin || user.name == owner {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(format!("{what} belongs to {owner}, not {}", user.name)))
        }
    }

    /// Whether `user` may give a job this priority.
    pub fn check_priority(&self, user: &User, priority: i32, field: &str) -> ApiResult<()> {
        if user.admin || priority <= self.max_user_priority {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(format!(
                "{field}: {priority} is above {}, the highest a user may set on this coordinator (an admin may)",
                self.max_user_priority
            )))
        }
    }

    /// The owner a listing is restricted to: with private jobs, a user who is
    /// not an admin lists their own (asking for another's is refused).
    pub fn list_owner(&self, user: &User, requested: Option<String>) -> ApiResult<Option<String>> {
        if !self.private_jobs || user.admin {
            return Ok(requested);
        }
        match requested {
            Some(owner) if owner != user.name => Err(ApiError::PermissionDenied(format!(
                "owner: this coordinator keeps jobs private; {} may list only their own",
                user.name
            ))),
            _ => Ok(Some(user.name.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, admin: bool) -> User {
        User { name: name.into(), admin }
    }

    #[test]
    fn owners_and_admins_write_others_do_not() {
        let access = Access::default();
        assert!(access.check_write(&user("ada", false), "ada", "job 1").is_ok());
        assert!(access.check_write(&user("root", true), "ada", "job 1").is_ok());
        assert!(matches!(access.check_write(&user("bob", false), "ada", "job 1"), Err(ApiError::PermissionDenied(_))));
    }

    #[test]
    fn reads_are_open_unless_jobs_are_private() {
        let open = Access::default();
        let private = Access { private_jobs: true, ..open };
        assert!(open.check_read(&user("bob", false), "ada", "job 1").is_ok());
        assert!(private.check_read(&user("bob", false), "ada", "job 1").is_err());
        assert!(private.check_read(&user("root", true), "ada", "job 1").is_ok());
        assert_eq!(private.list_owner(&user("bob", false), None).unwrap(), Some("bob".into()));
        assert!(private.list_owner(&user("bob", false), Some("ada".into())).is_err());
        assert_eq!(open.list_owner(&user("bob", false), None).unwrap(), None);
    }

    #[test]
    fn priorities_above_the_ceiling_need_an_admin() {
        let access = Access { max_user_priority: 5, ..Access::default() };
        assert!(access.check_priority(&user("ada", false), 5, "priority").is_ok());
        assert!(access.check_priority(&user("ada", false), -100, "priority").is_ok());
        assert!(access.check_priority(&user("ada", false), 6, "priority").is_err());
        assert!(access.check_priority(&user("root", true), i32::MAX, "priority").is_ok());
    }
}
