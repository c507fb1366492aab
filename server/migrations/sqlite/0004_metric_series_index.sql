-- A chart's sample of one long series (QueryMetrics.sample, the dashboard):
-- its bounds and a point at each of N evenly spaced steps, each an index probe,
-- instead of ranking every point of the series.
CREATE INDEX metrics_by_series ON metrics (job_id, name, step, id);
