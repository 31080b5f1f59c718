//! `finalizing` / `cancelling` → final: once every job of a batch has finished, its output file
//! (succeeded requests) and error file (the rest) are written in OpenAI's output line format, in
//! job order, and the batch moves to `completed`, `expired` or `cancelled` — all in one
//! transaction holding the batch's row, so the files are made once, by whichever process gets
//! there first; a process that dies midway leaves nothing and another one redoes it.

use serde_json::json;
use sqlx::{Postgres, Transaction};

use super::lines::{Target, output_line};
use crate::app::Ctx;
use crate::db::files::ChunkWriter;
use crate::db::jobs::JobFilter;
use crate::db::openai_batches::{self as db, ToFinish};
use crate::domain::openai_batch::final_status;

/// Jobs read per page while writing the files.
const PAGE: i64 = 1000;

/// Finishes one batch, if one is ready. Returns whether there was one.
pub async fn finalize_one(ctx: &Ctx) -> Result<bool, sqlx::Error> {
    let mut tx = ctx.pool.begin().await?;
    let Some(batch) = db::lock_finishable(&mut tx).await? else {
        return Ok(false);
    };
    let to = final_status(&batch.status, batch.any_expired);
    match write_files(ctx, &mut tx, &batch).await {
        Ok((output, error)) => {
            db::finish(
                &mut tx,
                &batch.id,
                &batch.status,
                to,
                output.as_deref(),
                error.as_deref(),
            )
            .await?;
            tx.commit().await?;
            tracing::info!(batch_id = %batch.id, status = to, "batch finished; output files written");
        }
        Err(e) if !super::is_transient(&e) => {
            drop(tx);
            tracing::warn!(batch_id = %batch.id, error = %e, "batch output could not be written; failing the batch");
            let errors = json!({"object": "list", "data": [{"code": "output_failed",
                "message": format!("the batch's output files could not be written: {e}"), "param": null, "line": null}]});
            db::mark_failed(&ctx.pool, &batch.id, &errors).await?;
        }
        Err(e) => return Err(e),
    }
    Ok(true)
}

/// One of the two files, begun when its first line comes.
struct OutFile {
    id: String,
    name: String,
    writer: Option<ChunkWriter>,
}

impl OutFile {
    fn new(name: String) -> Self {
        Self {
            id: crate::ids::new_file_id(),
            name,
            writer: None,
        }
    }

    async fn line(
        &mut self,
        tx: &mut Transaction<'_, Postgres>,
        tenant: &str,
        line: &[u8],
    ) -> Result<(), sqlx::Error> {
        if self.writer.is_none() {
            crate::db::files::begin(tx, &self.id, tenant, &self.name, "batch_output").await?;
            self.writer = Some(ChunkWriter::new(&self.id));
        }
        if let Some(w) = self.writer.as_mut() {
            w.write(tx, line).await?;
        }
        Ok(())
    }

    async fn close(
        self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<Option<String>, sqlx::Error> {
        match self.writer {
            Some(w) => {
                w.finish(tx, "batch_output").await?;
                Ok(Some(self.id))
            }
            None => Ok(None),
        }
    }
}

/// Writes the output and error files; returns their ids (none for a file with no line).
async fn write_files(
    ctx: &Ctx,
    tx: &mut Transaction<'_, Postgres>,
    batch: &ToFinish,
) -> Result<(Option<String>, Option<String>), sqlx::Error> {
    let mut output = OutFile::new(format!("{}_output.jsonl", batch.id));
    let mut error = OutFile::new(format!("{}_error.jsonl", batch.id));
    let mut after: Option<String> = None;
    loop {
        let filter = JobFilter {
            batch_id: Some(batch.id.clone()),
            status: None,
            after: after.clone(),
            finished: true,
            limit: PAGE,
        };
        let rows = crate::db::jobs::list(&ctx.pool, &batch.tenant, &filter).await?;
        for r in &rows {
            let (target, value) = output_line(r);
            let mut bytes =
                serde_json::to_vec(&value).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            bytes.push(b'\n');
            match target {
                Target::Output => output.line(tx, &batch.tenant, &bytes).await?,
                Target::Error => error.line(tx, &batch.tenant, &bytes).await?,
            }
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
        after = rows.last().map(|r| r.id.clone());
    }
    Ok((output.close(tx).await?, error.close(tx).await?))
}
