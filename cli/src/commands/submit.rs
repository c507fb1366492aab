//! `camp submit <stage>`.

use camp_proto::v1::SubmitJobRequest;

use crate::args::{BaselineArgs, GlobalOpts};
use crate::client;
use crate::output::print_json;
use crate::wire;

/// Validates the spec locally (exit 2 naming the flag), then submits it.
pub async fn baseline(opts: &GlobalOpts, args: &BaselineArgs) -> anyhow::Result<()> {
    let spec = args.to_spec()?;
    let request = SubmitJobRequest {
        spec: Some(spec.to_proto()),
        name: args.name.clone(),
        priority: args.priority,
        max_attempts: args.max_attempts.unwrap_or(0),
    };
    let job = client::connect(opts)
        .await?
        .submit_job(request)
        .await?
        .into_inner();
    if opts.json {
        return print_json(&wire::job(&job));
    }
    println!(
        "submitted job {} ({} {} on {})",
        job.id,
        spec.stage.as_str(),
        spec.arch,
        spec.dataset
    );
    Ok(())
}
