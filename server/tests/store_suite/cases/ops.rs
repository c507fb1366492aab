//! What an operator's gauges and health checks read: the ping, and the queue's
//! depth by device and data set with the running jobs and live workers.

use std::sync::Arc;
use std::time::Duration;

use camp_proto::spec::DeviceRequest;
use camp_server::store::*;

use crate::fixtures::*;

fn queued(device: &str, dataset: &str, jobs: u64) -> QueuedCount {
    QueuedCount { device: device.into(), dataset: dataset.into(), jobs }
}

pub async fn queue_depth_counts_queued_jobs_by_device_and_data_set_the_running_jobs_and_the_live_workers(store: Arc<dyn Store>) {
    let s = store.as_ref();
    s.ping().await.unwrap();
    assert_eq!(s.queue_depth(LONG).await.unwrap(), QueueDepth::default(), "an empty store");

    let first = submit_on(s, DeviceRequest::Any, "cifar10", 0).await;
    submit_on(s, DeviceRequest::Any, "cifar10", 0).await;
    submit_on(s, DeviceRequest::Cuda, "cifar10", 0).await;
    submit_on(s, DeviceRequest::Cuda, "fashion-mnist", 0).await;
    let cancelled = submit_on(s, DeviceRequest::Cpu, "cifar100", 0).await;
    s.cancel_job(cancelled, "ada").await.unwrap();
    let w = cpu_worker(s, "w").await;
    let depth = s.queue_depth(LONG).await.unwrap();
    assert_eq!(
        depth,
        QueueDepth {
            queued: vec![queued("any", "cifar10", 2), queued("cuda", "cifar10", 1), queued("cuda", "fashion-mnist", 1)],
            running: 0,
            live_workers: 1,
        },
        "a cancelled job is not queued"
    );

    let c = claim(s, w).await.expect("the cpu worker takes an any-device job");
    assert_eq!(c.job.id, first);
    let depth = s.queue_depth(LONG).await.unwrap();
    assert_eq!((depth.queued[0].clone(), depth.running), (queued("any", "cifar10", 1), 1));

    s.finish(lease_of(&c, w), Outcome::Succeeded, "", Some(&result(0.5))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let depth = s.queue_depth(Duration::from_millis(10)).await.unwrap();
    assert_eq!(depth.running, 0, "a finished job is not running");
    assert_eq!(depth.live_workers, 0, "a worker silent for longer than `live_within` is not live");
    assert_eq!(depth.queued.iter().map(|q| q.jobs).sum::<u64>(), 3);
}
