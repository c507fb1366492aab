//! Figures from outside the coordinator: call latencies kept by the bench,
//! PostgreSQL's own counters (when `--database-url` names the coordinator's
//! database) and the coordinator's Prometheus counters (`--metrics-url`).

use std::time::Duration;

use sqlx::postgres::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use camp_server::ops::metrics::CLAIM_QUERIES;

#[derive(Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn merge(all: Vec<Latencies>) -> Latencies {
        Latencies(all.into_iter().flat_map(|l| l.0).collect())
    }

    /// The `q` quantile, in milliseconds as text ("n/a" when empty).
    pub fn p(&self, q: f64) -> String {
        let mut v = self.0.clone();
        v.sort();
        match v.get(((v.len() as f64 - 1.0) * q).round() as usize) {
            Some(d) => format!("{:.2} ms", d.as_secs_f64() * 1e3),
            None => "n/a".into(),
        }
    }
}

/// Optional views on the coordinator's database and metrics.
pub struct Database {
    pool: Option<PgPool>,
    metrics_url: Option<String>,
}

impl Database {
    pub async fn connect(url: Option<&str>, metrics_url: Option<String>) -> anyhow::Result<Self> {
        let pool = match url {
            Some(u) => Some(PgPool::connect(u).await?),
            None => None,
        };
        Ok(Database { pool, metrics_url })
    }

    /// Transactions committed in the coordinator's database so far (PostgreSQL's count, read after a pause).
    pub async fn transactions(&self) -> anyhow::Result<Option<i64>> {
        let Some(pool) = &self.pool else { return Ok(None) };
        // An idle backend publishes its counts within 10 s (PostgreSQL 15's
        // shared statistics, PGSTAT_IDLE_INTERVAL): wait until every count so far is in.
        tokio::time::sleep(std::time::Duration::from_secs(11)).await;
        let (n,): (i64,) =
            sqlx::query_as("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetch_one(pool).await?;
        Ok(Some(n))
    }

    /// Brings the planner's statistics up to date (the "fresh statistics" variant of the claims row).
    pub async fn analyze(&self) -> anyhow::Result<()> {
        if let Some(pool) = &self.pool {
            sqlx::query("ANALYZE").execute(pool).await?;
        }
        Ok(())
    }

    /// The coordinator's count of store claim queries, scraped from its /metrics.
    pub async fn claim_queries(&self) -> anyhow::Result<Option<i64>> {
        let Some(url) = &self.metrics_url else { return Ok(None) };
        let text = http_get(url).await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(CLAIM_QUERIES))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as i64)
            .reduce(|a, b| a + b))
    }
}

/// A plain HTTP/1.0 GET of a loopback URL (`http://HOST:PORT/PATH`) with
/// `headers`: the status and the body (the connection's end ends the body).
pub async fn http_get_with(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("{url}: must start with http://"))?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    s.write_all(format!("{request}\r\n").as_bytes()).await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, body.to_string()))
}

async fn http_get(url: &str) -> anyhow::Result<String> {
    Ok(http_get_with(url, &[]).await?.1)
}
