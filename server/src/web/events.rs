//! Live pages: server-sent events from the store's change feed (the same
//! notifications every coordinator sharing the database sees). An event says
//! only that something changed — of one job (`?job=ID`, which the caller must
//! be allowed to read), or of anything — and the page re-reads what it shows;
//! so no job id reaches a caller who may not see the job. Events are coalesced
//! to one a second per page, a stream ends after a few minutes (the browser's
//! EventSource reconnects by itself), and at most `MAX_EVENT_STREAMS` are open.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use camp_proto::v1;
use camp_proto::v1::job_service_server::JobService;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;

use super::api::as_user;
use super::error::{WebError, WebResult};
use super::session::Caller;
use super::Dashboard;
use crate::store::Change;

/// At most one event a second reaches a page.
const COALESCE: Duration = Duration::from_secs(1);
/// A stream ends after this; the browser opens a new one.
const STREAM_LIFETIME: Duration = Duration::from_secs(300);
/// A comment every so often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn routes() -> Router<Arc<Dashboard>> {
    Router::new().route("/api/events", get(events))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    job: Option<i64>,
}

async fn events(
    State(dashboard): State<Arc<Dashboard>>,
    Caller(user): Caller,
    Query(q): Query<EventsQuery>,
) -> WebResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    if let Some(id) = q.job {
        dashboard.jobs.get_job(as_user(&user, v1::GetJobRequest { id })).await?;
    }
    let permit =
        dashboard.streams.clone().try_acquire_owned().map_err(|_| WebError::Busy("too many live pages are open; try again later"))?;
    let mut changes = dashboard.store.subscribe();
    let job = q.job;
    let stream = async_stream::stream! {
        let _permit = permit;
        let end = Instant::now() + STREAM_LIFETIME;
        yield Ok(Event::default().event("ready").data("{}"));
        loop {
            let relevant = match tokio::time::timeout_at(end, changes.recv()).await {
                Err(_) | Ok(Err(RecvError::Closed)) => break,
                Ok(Ok(Change::Job(id))) => job.is_none_or(|j| j == id),
                Ok(Ok(Change::Queue)) => job.is_none(),
                Ok(Err(RecvError::Lagged(_))) => true,
            };
            if !relevant {
                continue;
            }
            yield Ok(Event::default().event("change").data("{}"));
            // What arrives in the next second is told by the next event.
            tokio::time::sleep(COALESCE).await;
            let mut pending = false;
            loop {
                match changes.try_recv() {
                    Ok(Change::Job(id)) => pending |= job.is_none_or(|j| j == id),
                    Ok(Change::Queue) => pending |= job.is_none(),
                    Err(TryRecvError::Lagged(_)) => pending = true,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            if pending {
                yield Ok(Event::default().event("change").data("{}"));
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
