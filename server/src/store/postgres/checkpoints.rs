//! Checkpoints: uploads in chunks (fenced at begin and at commit, invisible
//! until committed), retention, and reads by slice.

use super::rows::*;
use super::*;
use crate::store::policy;

#[async_trait]
impl CheckpointStore for PgStore {
    async fn begin_checkpoint(&self, c: NewCheckpoint) -> StoreResult<i64> {
        let mut tx = self.pool.begin().await?;
        // Not locked: the upload may take a while, and heartbeats must go on meanwhile.
        fence(&mut tx, c.at, false).await?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO checkpoints (job_id, attempt, epoch, step, sha256, size, top1, metadata, complete) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, false) RETURNING id",
        )
        .bind(c.at.job_id)
        .bind(c.at.attempt as i32)
        .bind(c.epoch as i32)
        .bind(c.step)
        .bind(&c.sha256)
        .bind(c.size as i64)
        .bind(c.top1)
        .bind(&c.metadata)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn put_checkpoint_chunk(&self, upload: i64, idx: u32, data: &[u8]) -> StoreResult<()> {
        sqlx::query("INSERT INTO checkpoint_chunks (checkpoint_id, idx, data) VALUES ($1, $2, $3)")
            .bind(upload)
            .bind(idx as i32)
            .bind(data)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn commit_checkpoint(&self, at: LeaseRef, upload: i64, retention: Retention) -> StoreResult<Checkpoint> {
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, at, true).await?;
        let done = sqlx::query(
            "UPDATE checkpoints SET complete = true, created_at = now() \
             WHERE id = $1 AND job_id = $2 AND attempt = $3 AND NOT complete",
        )
        .bind(upload)
        .bind(at.job_id)
        .bind(at.attempt as i32)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::NotFound(format!("upload {upload}")));
        }
        let kept: Vec<(i64, Option<f64>)> = sqlx::query_as("SELECT id, top1 FROM checkpoints WHERE job_id = $1 AND complete ORDER BY id")
            .bind(at.job_id)
            .fetch_all(&mut *tx)
            .await?;
        let victims = policy::retention_victims(&kept, retention);
        sqlx::query("DELETE FROM checkpoints WHERE id = ANY($1)").bind(&victims).execute(&mut *tx).await?;
        notify(&mut tx, Change::Job(at.job_id)).await?;
        let rec: CheckpointRecord = sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.id = $1")).bind(upload).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(rec.into())
    }

    async fn abort_checkpoint(&self, upload: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM checkpoints WHERE id = $1 AND NOT complete").bind(upload).execute(&self.pool).await?;
        Ok(())
    }

    async fn checkpoints(&self, job_id: i64) -> StoreResult<Vec<Checkpoint>> {
        let recs: Vec<CheckpointRecord> =
            sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.job_id = $1 ORDER BY c.id")).bind(job_id).fetch_all(&self.pool).await?;
        Ok(recs.into_iter().map(Into::into).collect())
    }

    async fn checkpoint(&self, id: i64) -> StoreResult<Checkpoint> {
        let rec: Option<CheckpointRecord> =
            sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.id = $1")).bind(id).fetch_optional(&self.pool).await?;
        rec.map(Into::into).ok_or_else(|| StoreError::NotFound(format!("checkpoint {id}")))
    }

    async fn checkpoint_chunk_sizes(&self, id: i64) -> StoreResult<Vec<u32>> {
        let rows: Vec<(i32,)> = sqlx::query_as("SELECT length(data) FROM checkpoint_chunks WHERE checkpoint_id = $1 ORDER BY idx")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|(n,)| n as u32).collect())
    }

    async fn checkpoint_slice(&self, id: i64, idx: u32, offset: u32, len: u32) -> StoreResult<Vec<u8>> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT substring(data FROM $3 FOR $4) FROM checkpoint_chunks c \
             WHERE c.checkpoint_id = $1 AND c.idx = $2",
        )
        .bind(id)
        .bind(idx as i32)
        .bind(offset as i32 + 1)
        .bind(len as i32)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(d,)| d).ok_or_else(|| StoreError::NotFound(format!("checkpoint {id} (deleted by retention?)")))
    }
}
