//! Metrics and log lines: report batches stored once per sequence number
//! (fenced), and the pages clients read.

use super::*;

type MetricRow = (i64, i64, i64, i64, String, f64, i64);

fn stored_metric((id, attempt, step, epoch, name, value, at): MetricRow) -> StoredMetric {
    StoredMetric { id, attempt: attempt as u32, point: MetricPoint { name, value, step, epoch: epoch as u32 }, at: time(at) }
}

/// `policy::downsample_keeps` as a DELETE: in each of the series (?2, a JSON
/// array) of job ?1 longer than ?3 points, ranked by step then id, the points
/// whose rank does not start a new bucket of `rank * (?3 - 1) / (n - 1)`.
const DOWNSAMPLE_VICTIMS: &str = "DELETE FROM metrics WHERE id IN ( \
       SELECT id FROM ( \
         SELECT id, row_number() OVER (PARTITION BY name ORDER BY step, id) - 1 AS r, count(*) OVER (PARTITION BY name) AS n \
         FROM metrics WHERE job_id = ?1 AND name IN (SELECT value FROM json_each(?2))) \
       WHERE n > ?3 AND r > 0 AND (r * (?3 - 1)) / (n - 1) = ((r - 1) * (?3 - 1)) / (n - 1))";

#[async_trait]
impl TelemetryStore for SqliteStore {
    async fn report(&self, batch: ReportBatch) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        fence(tx.conn(), batch.at).await?;
        let fresh = sqlx::query("INSERT INTO report_batches (job_id, attempt, sequence) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")
            .bind(batch.at.job_id)
            .bind(batch.at.attempt as i64)
            .bind(batch.sequence as i64)
            .execute(tx.conn())
            .await?;
        if fresh.rows_affected() == 0 {
            tx.commit().await?;
            return Ok(false);
        }
        let now = now_us();
        if !batch.metrics.is_empty() {
            // One statement per batch: the points travel as one JSON array.
            let points: Vec<(i64, u32, &str, f64)> = batch.metrics.iter().map(|m| (m.step, m.epoch, m.name.as_str(), m.value)).collect();
            sqlx::query(
                "INSERT INTO metrics (job_id, attempt, step, epoch, name, value, at) \
                 SELECT ?1, ?2, json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), \
                        json_extract(value, '$[3]'), ?4 FROM json_each(?3)",
            )
            .bind(batch.at.job_id)
            .bind(batch.at.attempt as i64)
            .bind(Json(&points))
            .bind(now)
            .execute(tx.conn())
            .await?;
            let mut names: Vec<&str> = points.iter().map(|p| p.2).collect();
            names.sort_unstable();
            names.dedup();
            sqlx::query("INSERT OR IGNORE INTO metric_series (job_id, name) SELECT ?1, value FROM json_each(?2)")
                .bind(batch.at.job_id)
                .bind(Json(&names))
                .execute(tx.conn())
                .await?;
        }
        if !batch.log_lines.is_empty() {
            sqlx::query("INSERT INTO job_logs (job_id, attempt, line, at) SELECT ?1, ?2, value, ?4 FROM json_each(?3)")
                .bind(batch.at.job_id)
                .bind(batch.at.attempt as i64)
                .bind(Json(&batch.log_lines))
                .bind(now)
                .execute(tx.conn())
                .await?;
        }
        sqlx::query("UPDATE jobs SET epoch = max(epoch, ?2) WHERE id = ?1")
            .bind(batch.at.job_id)
            .bind(batch.epoch as i64)
            .execute(tx.conn())
            .await?;
        tx.notify(Change::Job(batch.at.job_id));
        tx.commit().await?;
        Ok(true)
    }

    async fn metric_page(&self, filter: &MetricFilter, after_id: i64, limit: u32) -> StoreResult<Vec<StoredMetric>> {
        let rows: Vec<MetricRow> = sqlx::query_as(
            "SELECT id, attempt, step, epoch, name, value, at FROM metrics WHERE job_id = ?1 \
             AND (?2 IS NULL OR name = ?2) AND (?3 IS NULL OR attempt = ?3) AND (?4 IS NULL OR step >= ?4) \
             AND id > ?5 ORDER BY id LIMIT ?6",
        )
        .bind(filter.job_id)
        .bind(filter.name.as_deref())
        .bind(filter.attempt.map(i64::from))
        .bind(filter.since_step)
        .bind(after_id)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(stored_metric).collect())
    }

    async fn metric_series(&self, job_id: i64) -> StoreResult<Vec<String>> {
        let names: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM metric_series WHERE job_id = ?1 ORDER BY name").bind(job_id).fetch_all(&self.reader).await?;
        Ok(names.into_iter().map(|(name,)| name).collect())
    }

    async fn series_tail_start(&self, filter: &MetricFilter, last: u32) -> StoreResult<Option<i64>> {
        let name =
            filter.name.as_deref().ok_or_else(|| StoreError::Invalid { field: "name".into(), reason: "a series is needed".into() })?;
        let start: (Option<i64>,) = sqlx::query_as(
            "SELECT min(id) FROM (SELECT id FROM metrics WHERE job_id = ?1 AND name = ?2 \
               AND (?3 IS NULL OR attempt = ?3) AND (?4 IS NULL OR step >= ?4) ORDER BY id DESC LIMIT ?5)",
        )
        .bind(filter.job_id)
        .bind(name)
        .bind(filter.attempt.map(i64::from))
        .bind(filter.since_step)
        .bind(i64::from(last.max(1)))
        .fetch_one(&self.reader)
        .await?;
        Ok(start.0)
    }

    async fn jobs_to_downsample(&self, series: &[String], limit: u32) -> StoreResult<Vec<i64>> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE jobs SET metrics_retained = 1 WHERE id IN ( \
               SELECT id FROM jobs WHERE metrics_retained = 0 AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY id LIMIT 1000) \
             AND NOT EXISTS (SELECT 1 FROM metric_series s WHERE s.job_id = jobs.id AND s.name IN (SELECT value FROM json_each(?1)))",
        )
        .bind(Json(series))
        .execute(tx.conn())
        .await?;
        let ids: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM jobs WHERE metrics_retained = 0 AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY id LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    async fn downsample_metrics(&self, job_id: i64, series: &[String], points: u32) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        let state: Option<(String,)> =
            sqlx::query_as("SELECT state FROM jobs WHERE id = ?1").bind(job_id).fetch_optional(tx.conn()).await?;
        let state = state.ok_or_else(|| StoreError::NotFound(format!("job {job_id}")))?.0;
        if !JobState::parse(&state).is_some_and(JobState::is_terminal) {
            return Err(StoreError::FailedPrecondition(format!("job {job_id} is {state}: a job keeps every point until it ends")));
        }
        let removed = sqlx::query(DOWNSAMPLE_VICTIMS)
            .bind(job_id)
            .bind(Json(series))
            .bind(i64::from(points.max(2)))
            .execute(tx.conn())
            .await?
            .rows_affected();
        sqlx::query("UPDATE jobs SET metrics_retained = 1 WHERE id = ?1").bind(job_id).execute(tx.conn()).await?;
        tx.commit().await?;
        Ok(removed)
    }

    async fn sample_metrics(&self, job_id: i64, name: &str, attempt: Option<u32>, points: u32) -> StoreResult<Vec<StoredMetric>> {
        // As PostgreSQL's: whole when short, else one probe of
        // metrics_by_series at each of `points` evenly spaced steps.
        let points = i64::from(points.max(2));
        let attempt = attempt.map(i64::from);
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM (SELECT 1 FROM metrics WHERE job_id = ?1 AND name = ?2 AND (?3 IS NULL OR attempt = ?3) LIMIT ?4 + 1)",
        )
        .bind(job_id)
        .bind(name)
        .bind(attempt)
        .bind(points)
        .fetch_one(&self.reader)
        .await?;
        let sql = if n <= points {
            "SELECT id, attempt, step, epoch, name, value, at FROM metrics \
             WHERE job_id = ?1 AND name = ?2 AND (?3 IS NULL OR attempt = ?3) AND ?4 > 0 ORDER BY step, id"
        } else {
            "WITH RECURSIVE k(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM k WHERE k + 1 < ?4), \
             bounds AS (SELECT min(step) AS lo, max(step) AS hi FROM metrics \
                        WHERE job_id = ?1 AND name = ?2 AND (?3 IS NULL OR attempt = ?3)), \
             picked AS (SELECT DISTINCT (SELECT id FROM metrics WHERE job_id = ?1 AND name = ?2 AND (?3 IS NULL OR attempt = ?3) \
                                           AND step >= bounds.lo + ((bounds.hi - bounds.lo) * k.k + ?4 - 2) / (?4 - 1) \
                                         ORDER BY step, id LIMIT 1) AS id FROM k, bounds) \
             SELECT m.id, m.attempt, m.step, m.epoch, m.name, m.value, m.at FROM metrics m JOIN picked ON m.id = picked.id \
             ORDER BY m.step, m.id"
        };
        let rows: Vec<MetricRow> = sqlx::query_as(sql).bind(job_id).bind(name).bind(attempt).bind(points).fetch_all(&self.reader).await?;
        Ok(rows.into_iter().map(stored_metric).collect())
    }

    async fn last_row_ids(&self, job_id: i64) -> StoreResult<(i64, i64)> {
        let row: (i64, i64) = sqlx::query_as(
            "SELECT COALESCE((SELECT max(id) FROM metrics WHERE job_id = ?1), 0), \
                    COALESCE((SELECT max(id) FROM job_logs WHERE job_id = ?1), 0)",
        )
        .bind(job_id)
        .fetch_one(&self.reader)
        .await?;
        Ok(row)
    }

    async fn logs(&self, job_id: i64, after_id: i64, limit: u32) -> StoreResult<Vec<LogLine>> {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as("SELECT id, attempt, at, line FROM job_logs WHERE job_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3")
                .bind(job_id)
                .bind(after_id)
                .bind(limit as i64)
                .fetch_all(&self.reader)
                .await?;
        Ok(rows.into_iter().map(|(id, attempt, at, line)| LogLine { id, attempt: attempt as u32, at: time(at), line }).collect())
    }

    async fn log_tail(&self, job_id: i64, last: u32) -> StoreResult<Vec<LogLine>> {
        let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(
            "SELECT id, attempt, at, line FROM (SELECT * FROM job_logs WHERE job_id = ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )
        .bind(job_id)
        .bind(last as i64)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(|(id, attempt, at, line)| LogLine { id, attempt: attempt as u32, at: time(at), line }).collect())
    }
}
