//! Metrics and log lines: report batches stored once per sequence number
//! (fenced), and the pages clients read.

use super::*;

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

    async fn metrics(
        &self,
        job_id: i64,
        name: Option<&str>,
        attempt: Option<u32>,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredMetric>> {
        let rows: Vec<(i64, i64, i64, i64, String, f64, i64)> = sqlx::query_as(
            "SELECT id, attempt, step, epoch, name, value, at FROM metrics WHERE job_id = ?1 \
             AND (?2 IS NULL OR name = ?2) AND (?3 IS NULL OR attempt = ?3) AND id > ?4 ORDER BY id LIMIT ?5",
        )
        .bind(job_id)
        .bind(name)
        .bind(attempt.map(i64::from))
        .bind(after_id)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, attempt, step, epoch, name, value, at)| StoredMetric {
                id,
                attempt: attempt as u32,
                point: MetricPoint { name, value, step, epoch: epoch as u32 },
                at: time(at),
            })
            .collect())
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
}
