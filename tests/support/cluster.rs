//! A throwaway Redis Cluster: `redis-server --cluster-enabled yes` nodes on free ports (client and cluster-bus
//! ports both reserved), joined by `redis-cli --cluster create`, with a fast node timeout so that a killed
//! primary's replica takes over within seconds.

use crate::ports::{reserved_port, PortReservation};
use crate::redis::{RedisServer, Resp};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `cluster-node-timeout` of every node: how long a primary may be silent before its replica is promoted.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1000;

/// A Redis Cluster of `primaries` primaries with `replicas` replicas each, killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    _bus_ports: Vec<PortReservation>,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node reports `cluster_state:ok`.
    pub fn start(primaries: usize, replicas: usize) -> anyhow::Result<RedisCluster> {
        let count = primaries * (1 + replicas);
        let mut nodes = Vec::with_capacity(count);
        let mut bus_ports = Vec::with_capacity(count);
        for _ in 0..count {
            let (bus, reservation) = reserved_port();
            let timeout = CLUSTER_NODE_TIMEOUT_MS.to_string();
            let bus = bus.to_string();
            nodes.push(RedisServer::start_with_args(&[
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &timeout,
            ])?);
            bus_ports.push(reservation);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run redis-cli ({e}); install redis-tools"))?;
        anyhow::ensure!(
            out.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster {
            nodes,
            _bus_ports: bus_ports,
        };
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// `127.0.0.1:<port>` of every node, comma-separated (the form of `REDIS_CLUSTER_NODES`).
    pub fn seed_list(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `redis://127.0.0.1:<port>` of every node (what ioredis' `Cluster` is given).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node on `port`.
    pub fn node(&self, port: u16) -> Option<&RedisServer> {
        self.nodes.iter().find(|n| n.port() == port)
    }

    fn live_nodes(&mut self) -> impl Iterator<Item = &RedisServer> {
        let alive: Vec<bool> = self.nodes.iter_mut().map(|n| n.is_running()).collect();
        self.nodes
            .iter()
            .zip(alive)
            .filter_map(|(n, up)| up.then_some(n))
    }

    /// Runs a command on a live node, following one `MOVED`/`ASK` redirect to the node that owns the key.
    pub fn cmd(&mut self, args: &[&str]) -> anyhow::Result<Resp> {
        let first = self
            .live_nodes()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no node of the cluster runs"))?
            .port();
        let reply = self.node(first).expect("live node").cmd(args)?;
        let Resp::Error(e) = &reply else {
            return Ok(reply);
        };
        let mut words = e.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("MOVED"), _, Some(addr)) => {
                let port: u16 = addr.rsplit(':').next().unwrap_or_default().parse()?;
                self.node(port)
                    .ok_or_else(|| anyhow::anyhow!("MOVED to unknown node {addr}"))?
                    .cmd(args)
            }
            _ => Ok(reply),
        }
    }

    /// The port of the primary that serves `key`'s slot, and of its replicas, as a live node sees it.
    pub fn owner_of(&mut self, key: &str) -> anyhow::Result<(u16, Vec<u16>)> {
        let slot = self
            .cmd(&["CLUSTER", "KEYSLOT", key])?
            .as_int()
            .ok_or_else(|| anyhow::anyhow!("CLUSTER KEYSLOT gave no number"))?;
        let slots = self.cmd(&["CLUSTER", "SLOTS"])?;
        for range in slots.as_array().unwrap_or(&[]) {
            let fields = range.as_array().unwrap_or(&[]);
            let (Some(start), Some(end)) = (
                fields.first().and_then(Resp::as_int),
                fields.get(1).and_then(Resp::as_int),
            ) else {
                continue;
            };
            if (start..=end).contains(&slot) {
                let port = |node: &Resp| {
                    node.as_array()
                        .and_then(|n| n.get(1))
                        .and_then(Resp::as_int)
                        .and_then(|p| u16::try_from(p).ok())
                };
                let primary = fields.get(2).and_then(port).ok_or_else(|| {
                    anyhow::anyhow!("CLUSTER SLOTS range {start}-{end} without a primary")
                })?;
                let replicas = fields.iter().skip(3).filter_map(port).collect();
                return Ok((primary, replicas));
            }
        }
        anyhow::bail!("no node serves slot {slot}")
    }

    /// Waits until `replica` has applied everything its primary `primary` has written so far (the
    /// replication offsets meet), so that killing the primary loses no write made before this call.
    pub fn wait_replicated(
        &self,
        primary: u16,
        replica: u16,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let offset = |port: u16, field: &str| -> anyhow::Result<i64> {
            let info = self
                .node(port)
                .ok_or_else(|| anyhow::anyhow!("no node on port {port}"))?
                .cmd(&["INFO", "replication"])?;
            let text = info.as_str().unwrap_or_default().to_owned();
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| anyhow::anyhow!("INFO replication of {port} has no {field}"))
        };
        let target = offset(primary, "master_repl_offset")?;
        let deadline = Instant::now() + timeout;
        while offset(replica, "slave_repl_offset")? < target {
            anyhow::ensure!(
                Instant::now() < deadline,
                "replica {replica} did not catch up with {primary} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the node on `port` at once (SIGKILL), as a crashed machine would stop.
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port() == port) {
            n.kill();
        }
    }

    /// Waits until a node other than `old_primary` serves `key` and every live node reports
    /// `cluster_state:ok`; returns the new primary's port.
    pub fn wait_failover(
        &mut self,
        key: &str,
        old_primary: u16,
        timeout: Duration,
    ) -> anyhow::Result<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((primary, _)) = self.owner_of(key) {
                if primary != old_primary && self.wait_healthy(Duration::ZERO).is_ok() {
                    return Ok(primary);
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no replica took over from {old_primary} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every live node reports `cluster_state:ok` (one look with a zero timeout).
    pub fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut bad = None;
            for node in &self.nodes {
                let Ok(info) = node.cmd(&["CLUSTER", "INFO"]) else {
                    continue; // a killed node
                };
                if !info
                    .as_str()
                    .is_some_and(|t| t.contains("cluster_state:ok"))
                {
                    bad = Some(node.port());
                }
            }
            match bad {
                None => return Ok(()),
                Some(port) if Instant::now() >= deadline => {
                    anyhow::bail!("cluster node {port} is not in cluster_state:ok")
                }
                Some(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}
