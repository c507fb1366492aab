//! Metrics and log lines: report batches stored once per sequence number
//! (fenced), and the pages clients read.

use super::*;

#[async_trait]
impl TelemetryStore for PgStore {
    async fn report(&self, batch: ReportBatch) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, batch.at, true).await?;
        let fresh: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO report_batches (job_id, attempt, sequence) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING RETURNING job_id",
        )
        .bind(batch.at.job_id)
        .bind(batch.at.attempt as i32)
        .bind(batch.sequence as i64)
        .fetch_optional(&mut *tx)
        .await?;
        if fresh.is_none() {
            tx.commit().await?;
            return Ok(false);
        }
        if !batch.metrics.is_empty() {
            let steps: Vec<i64> = batch.metrics.iter().map(|m| m.step).collect();
            let epochs: Vec<i32> = batch.metrics.iter().map(|m| m.epoch as i32).collect();
            let names: Vec<&str> = batch.metrics.iter().map(|m| m.name.as_str()).collect();
            let values: Vec<f64> = batch.metrics.iter().map(|m| m.value).collect();
            sqlx::query(
                "INSERT INTO metrics (job_id, attempt, step, epoch, name, value) \
                 SELECT $1, $2, * FROM unnest($3::bigint[], $4::int[], $5::text[], $6::float8[])",
            )
            .bind(batch.at.job_id)
            .bind(batch.at.attempt as i32)
            .bind(&steps)
            .bind(&epochs)
            .bind(&names)
            .bind(&values)
            .execute(&mut *tx)
            .await?;
        }
        if !batch.log_lines.is_empty() {
            sqlx::query("INSERT INTO job_logs (job_id, attempt, line) SELECT $1, $2, * FROM unnest($3::text[])")
                .bind(batch.at.job_id)
                .bind(batch.at.attempt as i32)
                .bind(&batch.log_lines)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE jobs SET epoch = GREATEST(epoch, $2) WHERE id = $1")
            .bind(batch.at.job_id)
            .bind(batch.epoch as i32)
            .execute(&mut *tx)
            .await?;
        notify(&mut tx, Change::Job(batch.at.job_id)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn metrics(
        &self,
        job_id: i64,
        name: Option<&str>,
        attempt: Option<u32>,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredMetric>> {
        let rows: Vec<(i64, i32, i64, i32, String, f64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, attempt, step, epoch, name, value, at FROM metrics WHERE job_id = $1 \
             AND ($2::text IS NULL OR name = $2) AND ($3::int IS NULL OR attempt = $3) AND id > $4 ORDER BY id LIMIT $5",
        )
        .bind(job_id)
        .bind(name)
        .bind(attempt.map(|a| a as i32))
        .bind(after_id)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, attempt, step, epoch, name, value, at)| StoredMetric {
                id,
                attempt: attempt as u32,
                point: MetricPoint { name, value, step, epoch: epoch as u32 },
                at,
            })
            .collect())
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
}
