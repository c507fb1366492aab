//! Metrics and log lines: report batches stored once per sequence number
//! (fenced), and the pages clients read.

use super::*;

type MetricRow = (i64, i32, i64, i32, String, f64, DateTime<Utc>);

fn stored_metric((id, attempt, step, epoch, name, value, at): MetricRow) -> StoredMetric {
    StoredMetric { id, attempt: attempt as u32, point: MetricPoint { name, value, step, epoch: epoch as u32 }, at }
}

/// `policy::downsample_keeps` as a DELETE: in each of the series ($2) of job
/// $1 longer than $3 points, ranked by step then id, the points whose rank
/// does not start a new bucket of `rank * ($3 - 1) / (n - 1)`.
const DOWNSAMPLE_VICTIMS: &str = "DELETE FROM metrics WHERE id IN ( \
       SELECT id FROM ( \
         SELECT id, row_number() OVER (PARTITION BY name ORDER BY step, id) - 1 AS r, count(*) OVER (PARTITION BY name) AS n \
         FROM metrics WHERE job_id = $1 AND name = ANY($2)) ranked \
       WHERE n > $3 AND r > 0 AND (r * ($3 - 1)) / (n - 1) = ((r - 1) * ($3 - 1)) / (n - 1))";

#[async_trait]
impl TelemetryStore for PgStore {
    async fn report(&self, batch: ReportBatch) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, batch.at, true).await?;
        // One statement stores the whole batch unless its sequence is stored
        // already: the sequence, the points (one INSERT from arrays), the
        // series' names, the log lines, the job's epoch, and the NOTIFY
        // (four round trips a batch with BEGIN, the fence and COMMIT).
        let steps: Vec<i64> = batch.metrics.iter().map(|m| m.step).collect();
        let epochs: Vec<i32> = batch.metrics.iter().map(|m| m.epoch as i32).collect();
        let names: Vec<&str> = batch.metrics.iter().map(|m| m.name.as_str()).collect();
        let values: Vec<f64> = batch.metrics.iter().map(|m| m.value).collect();
        let (fresh, _notified): (bool, i64) = sqlx::query_as(
            "WITH fresh AS ( \
               INSERT INTO report_batches (job_id, attempt, sequence) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING job_id), \
             points AS ( \
               SELECT * FROM unnest($4::bigint[], $5::int[], $6::text[], $7::float8[]) AS p(step, epoch, name, value) \
               WHERE EXISTS (SELECT 1 FROM fresh)), \
             stored AS ( \
               INSERT INTO metrics (job_id, attempt, step, epoch, name, value) SELECT $1, $2, step, epoch, name, value FROM points), \
             named AS ( \
               INSERT INTO metric_series (job_id, name) SELECT DISTINCT $1, name FROM points ON CONFLICT DO NOTHING), \
             logged AS ( \
               INSERT INTO job_logs (job_id, attempt, line) SELECT $1, $2, line FROM unnest($8::text[]) AS l(line) \
               WHERE EXISTS (SELECT 1 FROM fresh)), \
             progressed AS ( \
               UPDATE jobs SET epoch = GREATEST(epoch, $9) WHERE id = $1 AND EXISTS (SELECT 1 FROM fresh)), \
             notified AS (SELECT pg_notify($10, $1::text) FROM fresh) \
             SELECT EXISTS (SELECT 1 FROM fresh), (SELECT count(*) FROM notified)",
        )
        .bind(batch.at.job_id)
        .bind(batch.at.attempt as i32)
        .bind(batch.sequence as i64)
        .bind(&steps)
        .bind(&epochs)
        .bind(&names)
        .bind(&values)
        .bind(&batch.log_lines)
        .bind(batch.epoch as i32)
        .bind(CHANNEL)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(fresh)
    }

    async fn metric_page(&self, filter: &MetricFilter, after_id: i64, limit: u32) -> StoreResult<Vec<StoredMetric>> {
        // A page walks metrics_by_job from the cursor and stops after `limit`
        // rows. Statistics taken before a job's burst of points (or none: this
        // table grows faster than autovacuum looks) make the planner expect a
        // few rows and gather all of the job's points to sort them instead
        // (1.4 s a page at 2M points); the walk in index order is right at
        // any size, so the page is read with the alternatives priced out.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)")
            .execute(&mut *tx)
            .await?;
        let rows: Vec<MetricRow> = sqlx::query_as(
            "SELECT id, attempt, step, epoch, name, value, at FROM metrics WHERE job_id = $1 \
             AND ($2::text IS NULL OR name = $2) AND ($3::int IS NULL OR attempt = $3) AND ($4::bigint IS NULL OR step >= $4) \
             AND id > $5 ORDER BY id LIMIT $6",
        )
        .bind(filter.job_id)
        .bind(filter.name.as_deref())
        .bind(filter.attempt.map(|a| a as i32))
        .bind(filter.since_step)
        .bind(after_id)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(stored_metric).collect())
    }

    async fn metric_series(&self, job_id: i64) -> StoreResult<Vec<String>> {
        let names: Vec<(String,)> = sqlx::query_as("SELECT name FROM metric_series WHERE job_id = $1 ORDER BY name COLLATE \"C\"")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(names.into_iter().map(|(name,)| name).collect())
    }

    async fn series_tail_start(&self, filter: &MetricFilter, last: u32) -> StoreResult<Option<i64>> {
        let name =
            filter.name.as_deref().ok_or_else(|| StoreError::Invalid { field: "name".into(), reason: "a series is needed".into() })?;
        // Walks metrics_by_job back from the newest point (see `metric_page` for why the alternatives are priced out).
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)")
            .execute(&mut *tx)
            .await?;
        let start: (Option<i64>,) = sqlx::query_as(
            "SELECT min(id) FROM (SELECT id FROM metrics WHERE job_id = $1 AND name = $2 \
               AND ($3::int IS NULL OR attempt = $3) AND ($4::bigint IS NULL OR step >= $4) ORDER BY id DESC LIMIT $5) tail",
        )
        .bind(filter.job_id)
        .bind(name)
        .bind(filter.attempt.map(|a| a as i32))
        .bind(filter.since_step)
        .bind(i64::from(last.max(1)))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(start.0)
    }

    async fn jobs_to_downsample(&self, series: &[String], limit: u32) -> StoreResult<Vec<i64>> {
        let ids: Vec<(i64,)> = sqlx::query_as(
            "WITH ended AS (SELECT id FROM jobs WHERE NOT metrics_retained AND state IN ('succeeded', 'failed', 'cancelled') \
               ORDER BY id LIMIT 1000), \
             empty AS (UPDATE jobs j SET metrics_retained = true FROM ended e WHERE j.id = e.id \
               AND NOT EXISTS (SELECT 1 FROM metric_series s WHERE s.job_id = e.id AND s.name = ANY($1)) RETURNING j.id) \
             SELECT e.id FROM ended e WHERE NOT EXISTS (SELECT 1 FROM empty x WHERE x.id = e.id) ORDER BY e.id LIMIT $2",
        )
        .bind(series)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    async fn downsample_metrics(&self, job_id: i64, series: &[String], points: u32) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        let state: Option<(String,)> = sqlx::query_as("SELECT state FROM jobs WHERE id = $1").bind(job_id).fetch_optional(&mut *tx).await?;
        let state = state.ok_or_else(|| StoreError::NotFound(format!("job {job_id}")))?.0;
        if !JobState::parse(&state).is_some_and(JobState::is_terminal) {
            return Err(StoreError::FailedPrecondition(format!("job {job_id} is {state}: a job keeps every point until it ends")));
        }
        let removed = sqlx::query(DOWNSAMPLE_VICTIMS)
            .bind(job_id)
            .bind(series)
            .bind(i64::from(points.max(2)))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("UPDATE jobs SET metrics_retained = true WHERE id = $1").bind(job_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(removed)
    }

    async fn sample_metrics(&self, job_id: i64, name: &str, attempt: Option<u32>, points: u32) -> StoreResult<Vec<StoredMetric>> {
        // A series no longer than `points` is read whole (counting stops past
        // it); a longer one is probed at `points` evenly spaced steps, each
        // probe one walk down metrics_by_series: a million-point series costs
        // what a thousand-point one does.
        let points = i64::from(points.max(2));
        let attempt = attempt.map(|a| a as i32);
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM (SELECT 1 FROM metrics WHERE job_id = $1 AND name = $2 AND ($3::int IS NULL OR attempt = $3) LIMIT $4 + 1) s",
        )
        .bind(job_id)
        .bind(name)
        .bind(attempt)
        .bind(points)
        .fetch_one(&self.pool)
        .await?;
        let sql = if n <= points {
            "SELECT id, attempt, step, epoch, name, value, at FROM metrics \
             WHERE job_id = $1 AND name = $2 AND ($3::int IS NULL OR attempt = $3) AND $4 > 0 ORDER BY step, id"
        } else {
            "WITH bounds AS (SELECT min(step) AS lo, max(step) AS hi FROM metrics \
                              WHERE job_id = $1 AND name = $2 AND ($3::int IS NULL OR attempt = $3)) \
             SELECT DISTINCT ON (m.step, m.id) m.id, m.attempt, m.step, m.epoch, m.name, m.value, m.at \
             FROM bounds, generate_series(0, $4 - 1) AS k, LATERAL ( \
               SELECT * FROM metrics WHERE job_id = $1 AND name = $2 AND ($3::int IS NULL OR attempt = $3) \
                 AND step >= bounds.lo + ((bounds.hi - bounds.lo) * k + $4 - 2) / ($4 - 1) \
               ORDER BY step, id LIMIT 1) m \
             ORDER BY m.step, m.id"
        };
        let rows: Vec<MetricRow> = sqlx::query_as(sql).bind(job_id).bind(name).bind(attempt).bind(points).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(stored_metric).collect())
    }

    async fn last_row_ids(&self, job_id: i64) -> StoreResult<(i64, i64)> {
        let row: (i64, i64) = sqlx::query_as(
            "SELECT COALESCE((SELECT max(id) FROM metrics WHERE job_id = $1), 0), \
                    COALESCE((SELECT max(id) FROM job_logs WHERE job_id = $1), 0)",
        )
        .bind(job_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row)
    }

    async fn logs(&self, job_id: i64, after_id: i64, limit: u32) -> StoreResult<Vec<LogLine>> {
        let rows: Vec<(i64, i32, DateTime<Utc>, String)> =
            sqlx::query_as("SELECT id, attempt, at, line FROM job_logs WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3")
                .bind(job_id)
                .bind(after_id)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(id, attempt, at, line)| LogLine { id, attempt: attempt as u32, at, line }).collect())
    }

    async fn log_tail(&self, job_id: i64, last: u32) -> StoreResult<Vec<LogLine>> {
        let rows: Vec<(i64, i32, DateTime<Utc>, String)> = sqlx::query_as(
            "SELECT id, attempt, at, line FROM (SELECT * FROM job_logs WHERE job_id = $1 ORDER BY id DESC LIMIT $2) tail ORDER BY id",
        )
        .bind(job_id)
        .bind(last as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id, attempt, at, line)| LogLine { id, attempt: attempt as u32, at, line }).collect())
    }
}
