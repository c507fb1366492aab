//! `camp submit <stage>`.

use camp_proto::v1::SubmitJobRequest;

use crate::client;
use crate::global_opts::GlobalOpts;
use crate::output::print_json;
use crate::spec_flags::SubmitStage;
use camp_proto::wire;

/// Validates the spec locally (exit 2 naming the flag), then submits it under
/// its request id (`--request-id`, else a fresh UUID), retried while the
/// coordinator is unavailable.
pub async fn run(opts: &GlobalOpts, stage: &SubmitStage) -> anyhow::Result<()> {
    let spec = stage.to_spec()?;
    let args = stage.common();
    let request = SubmitJobRequest {
        spec: Some(spec.to_proto()),
        name: args.name.clone(),
        priority: args.priority,
        max_attempts: args.max_attempts.unwrap_or(0),
        request_id: args.request_id.get_or_new(),
    };
    let job = client::with_retries("submitting", || {
        let request = request.clone();
        async move {
            let job = client::connect(opts).await?.submit_job(request).await?.into_inner();
            Ok(job)
        }
    })
    .await?;
    if opts.json {
        return print_json(&wire::job(&job));
    }
    let from = if spec.init_from > 0 { format!(", from job {}", spec.init_from) } else { String::new() };
    println!("submitted job {} ({} {} on {}{from})", job.id, spec.stage.as_str(), spec.arch, spec.dataset);
    Ok(())
}
