//! `sluice cancel ID`: cancels a job (`job_…`) or a native batch (`batch_…`) over the HTTP API.

use serde_json::Value;

use super::ApiArgs;
use super::client::{Api, print_summary};

/// Cancels `id`, a job or a batch, and says what happened.
pub async fn cancel(args: &ApiArgs, id: &str) -> anyhow::Result<()> {
    let api = Api::new(args)?;
    let key = crate::ids::new_id("cancel");
    if id.starts_with("batch_") {
        let v = api
            .post_json(&format!("/v1/batches/{id}/cancel"), &Value::Null, &key)
            .await?;
        println!(
            "{id}: {} job(s) cancelled, {} running job(s) asked to stop",
            v["cancelled"], v["cancel_requested"]
        );
        print_summary(&v);
        return Ok(());
    }
    let v = api
        .post_json(&format!("/v1/jobs/{id}/cancel"), &Value::Null, &key)
        .await?;
    let status = v["status"].as_str().unwrap_or_default();
    match status {
        "cancelled" => println!("{id}: cancelled"),
        "running" => println!(
            "{id}: running; cancel requested: its worker aborts the provider call within a second"
        ),
        "in_provider_batch" => println!(
            "{id}: in a provider batch; cancel requested: it is cancelled when its batch is next polled"
        ),
        other => println!("{id}: {other}"),
    }
    Ok(())
}
