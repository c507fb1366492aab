//! Listings the coordinator hands out a page at a time (camp_proto::limits
//! bounds each page): the newest jobs up to a limit (or all of them), and
//! every one of a job's metrics and log lines, kept or handed on page by page
//! (a job may have millions of points: `camp metrics` prints them as they come).

use std::future::Future;

use anyhow::bail;
use camp_proto::limits::{MAX_JOBS_PAGE, MAX_LOGS_PAGE, MAX_METRICS_PAGE};
use camp_proto::v1::{self, GetLogsRequest, ListExperimentsRequest, ListJobsRequest, QueryMetricsRequest};

use crate::client::JobClient;

/// Follows a listing's cursor from 0 (the start) until a page says there is
/// no more (a next cursor of 0), keeping at most `limit` items.
/// `fetch(cursor, room)` asks for the page at `cursor` with at most `room`
/// items and returns it with the next cursor.
pub async fn collect<T, F, Fut>(limit: usize, fetch: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(i64, usize) -> Fut,
    Fut: Future<Output = anyhow::Result<(Vec<T>, i64)>>,
{
    collect_from(0, limit, fetch).await
}

/// As `collect`, from cursor `start` (0: the listing's start).
pub async fn collect_from<T, F, Fut>(start: i64, limit: usize, mut fetch: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(i64, usize) -> Fut,
    Fut: Future<Output = anyhow::Result<(Vec<T>, i64)>>,
{
    let mut items = Vec::new();
    let mut cursor = start;
    while items.len() < limit {
        let (page, next) = fetch(cursor, limit - items.len()).await?;
        let empty = page.is_empty();
        items.extend(page);
        if next == 0 || empty {
            break;
        }
        if next == cursor {
            bail!("the coordinator sent the same page twice (cursor {next})");
        }
        cursor = next;
    }
    items.truncate(limit);
    Ok(items)
}

/// Follows a listing's cursor from `start` until a page says there is no
/// more, handing each page to `sink` as it comes (nothing is kept: memory
/// stays at one page however long the listing). Returns how many items came.
pub async fn each_page<T, F, Fut>(start: i64, mut fetch: F, mut sink: impl FnMut(Vec<T>) -> anyhow::Result<()>) -> anyhow::Result<u64>
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = anyhow::Result<(Vec<T>, i64)>>,
{
    let mut count = 0;
    let mut cursor = start;
    loop {
        let (page, next) = fetch(cursor).await?;
        let empty = page.is_empty();
        count += page.len() as u64;
        sink(page)?;
        if next == 0 || empty {
            return Ok(count);
        }
        if next == cursor {
            bail!("the coordinator sent the same page twice (cursor {next})");
        }
        cursor = next;
    }
}

fn page_size(room: usize, max: u32) -> u32 {
    u32::try_from(room).map_or(max, |room| room.min(max))
}

/// The newest `limit` jobs that `filter` selects, newest first, from its
/// `before_id` on (0: from the newest; `limit` is set here).
pub async fn jobs(client: &JobClient, filter: &ListJobsRequest, limit: usize) -> anyhow::Result<Vec<v1::Job>> {
    collect_from(filter.before_id, limit, |before_id, room| {
        let request = ListJobsRequest { limit: page_size(room, MAX_JOBS_PAGE), before_id, ..filter.clone() };
        let mut client = client.clone();
        async move {
            let page = client.list_jobs(request).await?.into_inner();
            Ok((page.jobs, page.next_before_id))
        }
    })
    .await
}

/// The newest `limit` experiments, newest first.
pub async fn experiments(client: &JobClient, limit: usize) -> anyhow::Result<Vec<v1::Experiment>> {
    collect(limit, |before_id, room| {
        let request = ListExperimentsRequest { limit: page_size(room, MAX_JOBS_PAGE), before_id };
        let mut client = client.clone();
        async move {
            let page = client.list_experiments(request).await?.into_inner();
            Ok((page.experiments, page.next_before_id))
        }
    })
    .await
}

/// Every metric that `filter` selects, a page at a time to `sink` (its
/// `after_id` and `limit` are set here), in stored order; returns how many.
pub async fn each_metric_page(
    client: &JobClient,
    filter: &QueryMetricsRequest,
    sink: impl FnMut(Vec<v1::Metric>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let fetch = |after_id| {
        let request = QueryMetricsRequest { after_id, limit: MAX_METRICS_PAGE, ..filter.clone() };
        let mut client = client.clone();
        async move {
            let page = client.query_metrics(request).await?.into_inner();
            Ok((page.metrics, page.next_after_id))
        }
    };
    each_page(0, fetch, sink).await
}

/// Every log line of a job, in stored order.
pub async fn logs(client: &JobClient, job_id: i64) -> anyhow::Result<Vec<v1::LogLine>> {
    collect(usize::MAX, |after_id, room| {
        let request = GetLogsRequest { job_id, after_id, limit: page_size(room, MAX_LOGS_PAGE), last: 0 };
        let mut client = client.clone();
        async move {
            let page = client.get_logs(request).await?.into_inner();
            Ok((page.lines, page.next_after_id))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// The coordinator's rule: ids after the cursor, at most `room`, the last
    /// id as the next cursor when the page is full.
    fn ascending_page(ids: &[i64], after: i64, room: usize, max: usize) -> (Vec<i64>, i64) {
        let size = room.min(max);
        let page: Vec<i64> = ids.iter().copied().filter(|&id| id > after).take(size).collect();
        let next = if page.len() == size { *page.last().unwrap_or(&0) } else { 0 };
        (page, next)
    }

    #[tokio::test]
    async fn every_page_is_fetched_until_the_cursor_is_zero() {
        let ids: Vec<i64> = (1..=1_005).collect();
        let cursors = RefCell::new(Vec::new());
        let all = collect(usize::MAX, |after, room| {
            cursors.borrow_mut().push(after);
            let page = ascending_page(&ids, after, room, 400);
            async move { Ok(page) }
        })
        .await
        .unwrap();
        assert_eq!(all, ids);
        assert_eq!(*cursors.borrow(), [0, 400, 800]);

        // A last page that is exactly full costs one empty page more.
        let ids: Vec<i64> = (1..=800).collect();
        let all = collect(usize::MAX, |after, room| {
            let page = ascending_page(&ids, after, room, 400);
            async move { Ok(page) }
        })
        .await
        .unwrap();
        assert_eq!(all.len(), 800);
    }

    #[tokio::test]
    async fn a_limit_stops_paging_and_asks_only_for_what_is_left() {
        // Newest first, before_id pages, as ListJobs.
        let ids: Vec<i64> = (1..=2_500).rev().collect();
        let rooms = RefCell::new(Vec::new());
        let newest = collect(1_500, |before, room| {
            rooms.borrow_mut().push(room);
            let size = room.min(MAX_JOBS_PAGE as usize);
            let page: Vec<i64> = ids.iter().copied().filter(|&id| before == 0 || id < before).take(size).collect();
            let next = if page.len() == size { *page.last().unwrap() } else { 0 };
            async move { Ok((page, next)) }
        })
        .await
        .unwrap();
        assert_eq!(newest.len(), 1_500);
        assert_eq!((newest[0], newest[1_499]), (2_500, 1_001));
        assert_eq!(*rooms.borrow(), [1_500, 500]);
        assert_eq!(page_size(1_500, MAX_JOBS_PAGE), 1_000);
        assert_eq!(page_size(usize::MAX, MAX_LOGS_PAGE), 400);
    }

    #[tokio::test]
    async fn pages_are_handed_on_as_they_come_and_none_is_kept() {
        let ids: Vec<i64> = (1..=1_005).collect();
        let sizes = RefCell::new(Vec::new());
        let count = each_page(
            0,
            |after| {
                let page = ascending_page(&ids, after, usize::MAX, 400);
                async move { Ok(page) }
            },
            |page| {
                sizes.borrow_mut().push(page.len());
                Ok(())
            },
        )
        .await
        .unwrap();
        assert_eq!((count, sizes.borrow().clone()), (1_005, vec![400, 400, 205]));
        let failed = each_page(0, |_| async { Ok((vec![1], 7)) }, |_| Ok(())).await.unwrap_err();
        assert!(failed.to_string().contains("same page twice"), "{failed}");
        let stopped = each_page(0, |_| async { Ok((vec![1], 0)) }, |_| anyhow::bail!("stdout closed")).await.unwrap_err();
        assert!(stopped.to_string().contains("stdout closed"));
    }

    #[tokio::test]
    async fn a_cursor_that_does_not_move_is_an_error_not_a_loop() {
        let err = collect(usize::MAX, |_, _| async { Ok((vec![1], 7)) }).await.unwrap_err();
        assert!(err.to_string().contains("same page twice"), "{err}");
        let failed: anyhow::Result<Vec<i64>> =
            collect(10, |_, _| async { Err(anyhow::Error::new(tonic::Status::unavailable("gone"))) }).await;
        assert_eq!(crate::exit::code_for_error(&failed.unwrap_err()), crate::exit::UNREACHABLE);
    }
}
