//! Checkpoints: uploads in chunks (fenced at begin and at commit, invisible
//! until committed), retention, and reads by slice. Chunks are blobs in the
//! database file (see the migration for why).

use super::rows::*;
use super::*;
use crate::store::policy;

#[async_trait]
impl CheckpointStore for SqliteStore {
    async fn begin_checkpoint(&self, c: NewCheckpoint) -> StoreResult<i64> {
        let mut tx = self.begin().await?;
        fence(tx.conn(), c.at).await?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO checkpoints (job_id, attempt, epoch, step, sha256, size, top1, metadata, complete, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9) RETURNING id",
        )
        .bind(c.at.job_id)
        .bind(c.at.attempt as i64)
        .bind(c.epoch as i64)
        .bind(c.step)
        .bind(&c.sha256)
        .bind(c.size as i64)
        .bind(c.top1)
        .bind(Json(&c.metadata))
        .bind(now_us())
        .fetch_one(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn put_checkpoint_chunk(&self, upload: i64, idx: u32, data: &[u8]) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO checkpoint_chunks (checkpoint_id, idx, data) VALUES (?1, ?2, ?3)")
            .bind(upload)
            .bind(idx as i64)
            .bind(data)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn commit_checkpoint(&self, at: LeaseRef, upload: i64, retention: Retention) -> StoreResult<Checkpoint> {
        let mut tx = self.begin().await?;
        fence(tx.conn(), at).await?;
        let done = sqlx::query(
            "UPDATE checkpoints SET complete = 1, created_at = ?4 WHERE id = ?1 AND job_id = ?2 AND attempt = ?3 AND NOT complete",
        )
        .bind(upload)
        .bind(at.job_id)
        .bind(at.attempt as i64)
        .bind(now_us())
        .execute(tx.conn())
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::NotFound(format!("upload {upload}")));
        }
        let kept: Vec<(i64, Option<f64>)> = sqlx::query_as("SELECT id, top1 FROM checkpoints WHERE job_id = ?1 AND complete ORDER BY id")
            .bind(at.job_id)
            .fetch_all(tx.conn())
            .await?;
        for victim in policy::retention_victims(&kept, retention) {
            sqlx::query("DELETE FROM checkpoints WHERE id = ?1").bind(victim).execute(tx.conn()).await?;
        }
        tx.notify(Change::Job(at.job_id));
        let rec: CheckpointRecord = sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.id = ?1")).bind(upload).fetch_one(tx.conn()).await?;
        tx.commit().await?;
        Ok(rec.into())
    }

    async fn abort_checkpoint(&self, upload: i64) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM checkpoints WHERE id = ?1 AND NOT complete").bind(upload).execute(tx.conn()).await?;
        tx.commit().await
    }

    async fn checkpoints(&self, job_id: i64) -> StoreResult<Vec<Checkpoint>> {
        let recs: Vec<CheckpointRecord> =
            sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.job_id = ?1 ORDER BY c.id")).bind(job_id).fetch_all(&self.reader).await?;
        Ok(recs.into_iter().map(Into::into).collect())
    }

    async fn checkpoint(&self, id: i64) -> StoreResult<Checkpoint> {
        let rec: Option<CheckpointRecord> =
            sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.id = ?1")).bind(id).fetch_optional(&self.reader).await?;
        rec.map(Into::into).ok_or_else(|| StoreError::NotFound(format!("checkpoint {id}")))
    }

    async fn checkpoint_chunk_sizes(&self, id: i64) -> StoreResult<Vec<u32>> {
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT length(data) FROM checkpoint_chunks WHERE checkpoint_id = ?1 ORDER BY idx")
            .bind(id)
            .fetch_all(&self.reader)
            .await?;
        Ok(rows.into_iter().map(|(n,)| n as u32).collect())
    }

    async fn checkpoint_slice(&self, id: i64, idx: u32, offset: u32, len: u32) -> StoreResult<Vec<u8>> {
        // substr of a blob counts bytes, from 1.
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT substr(data, ?3, ?4) FROM checkpoint_chunks WHERE checkpoint_id = ?1 AND idx = ?2")
                .bind(id)
                .bind(idx as i64)
                .bind(offset as i64 + 1)
                .bind(len as i64)
                .fetch_optional(&self.reader)
                .await?;
        row.map(|(d,)| d).ok_or_else(|| StoreError::NotFound(format!("checkpoint {id} (deleted by retention?)")))
    }
}
