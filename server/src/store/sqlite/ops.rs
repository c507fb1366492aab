//! The operator's view on the embedded store: a ping for gRPC health and the
//! queue's gauges for `/metrics`, one query each on the readers (they never
//! wait for the writer).

use super::*;

#[async_trait]
impl OpsStore for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn queue_depth(&self, live_within: Duration) -> StoreResult<QueueDepth> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT 'queued', device, dataset, count(*) FROM jobs WHERE state = 'queued' GROUP BY device, dataset \
             UNION ALL SELECT 'running', '', '', count(*) FROM jobs WHERE state = 'running' \
             UNION ALL SELECT 'live', '', '', count(*) FROM workers WHERE last_heartbeat > ?1",
        )
        .bind(now_us() - lease_us(live_within))
        .fetch_all(&self.reader)
        .await?;
        Ok(QueueDepth::from_rows(rows))
    }
}
