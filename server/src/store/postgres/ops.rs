//! The operator's view: a ping for gRPC health and the queue's gauges for
//! `/metrics`, one query each. The counts use the partial indexes on
//! `state` (queued, running), so they stay cheap with a deep queue.

use super::*;

#[async_trait]
impl OpsStore for PgStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn queue_depth(&self, live_within: Duration) -> StoreResult<QueueDepth> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT 'queued', device, dataset, count(*) FROM jobs WHERE state = 'queued' GROUP BY device, dataset \
             UNION ALL SELECT 'running', '', '', count(*) FROM jobs WHERE state = 'running' \
             UNION ALL SELECT 'live', '', '', count(*) FROM workers WHERE last_heartbeat > now() - make_interval(secs => $1)",
        )
        .bind(lease_secs(live_within))
        .fetch_all(&self.pool)
        .await?;
        Ok(QueueDepth::from_rows(rows))
    }
}
